// QEMU's command line from a VmSpec (src/drivers/qemu/args.ts): machine and accelerator per arch, kernel
// and EFI boot, user/bridge/none networking, virtiofs shares, the agent channel, and refusals.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { VmSpec } from '../../../src/drivers/hypervisor.ts';
import { ArgsError, macFromId, qemuArgs, virtiofsdArgs, vmPaths, type QemuHost } from '../../../src/drivers/qemu/args.ts';
import { aarch64ProbeRom, probeArgs, x86ProbeRom, X86_PROBE_EXIT } from '../../../src/drivers/qemu/host.ts';

const paths = vmPaths('/vms/a');
const host: QemuHost = {
  arch: 'x86_64',
  accelerator: 'kvm',
  binaries: { x86_64: 'qemu-system-x86_64', aarch64: 'qemu-system-aarch64' },
  firmware: { qboot: '/fw/qboot.rom', ovmfCode: '/fw/OVMF_CODE_4M.fd', ovmfVars: '/fw/OVMF_VARS_4M.fd', aavmfCode: '/fw/AAVMF_CODE.fd' },
  bridgeHelper: '/usr/lib/qemu/qemu-bridge-helper',
};

function spec(over: Partial<VmSpec> = {}): VmSpec {
  return {
    id: 'pod-1', name: 'default/web', os: 'linux', arch: 'x86_64', cpus: 2, memoryMiB: 1024,
    disk: { path: '/vms/a/disk.qcow2', format: 'qcow2' },
    boot: { kind: 'kernel', kernel: '/img/vmlinux', initrd: '/img/initrd', cmdline: 'console=ttyS0 quiet' },
    network: { mode: 'none' }, shares: [], ...over,
  };
}

/** The value after each occurrence of flag. */
function values(args: string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag ? [args[i + 1]!] : []));
}

test('x86_64 with KVM: q35 without unused devices, host CPU, qboot, kernel boot, QMP, console appended, agent port', () => {
  const args = qemuArgs(spec(), host, paths);
  assert.deepEqual(values(args, '-machine'), ['q35,accel=kvm,smm=off,i8042=off,sata=off,smbus=off,vmport=off']);
  assert.deepEqual(values(args, '-cpu'), ['host']);
  assert.deepEqual(values(args, '-smp'), ['2']);
  assert.deepEqual(values(args, '-m'), ['1024M']);
  assert.deepEqual(values(args, '-bios'), ['/fw/qboot.rom']);
  assert.deepEqual(values(args, '-kernel'), ['/img/vmlinux']);
  assert.deepEqual(values(args, '-initrd'), ['/img/initrd']);
  assert.deepEqual(values(args, '-append'), ['console=ttyS0 quiet']);
  for (const flag of ['-nodefaults', '-no-user-config', '-no-reboot']) assert.ok(args.includes(flag), flag);
  assert.deepEqual(values(args, '-qmp'), ['unix:/vms/a/qmp.sock,server=on,wait=off']);
  assert.ok(values(args, '-chardev').includes('file,id=console,path=/vms/a/console.log,append=on'));
  assert.deepEqual(values(args, '-serial'), ['chardev:console']);
  assert.ok(values(args, '-chardev').includes('socket,id=agent,path=/vms/a/agent.sock,server=on,wait=off'));
  assert.ok(values(args, '-device').includes('virtserialport,bus=vser0.0,chardev=agent,name=org.vmlet.agent.0'));
  assert.deepEqual(values(args, '-drive'), ['if=none,id=disk0,file=/vms/a/disk.qcow2,format=qcow2,discard=unmap']);
  assert.ok(values(args, '-device').includes('virtio-blk-pci,drive=disk0'));
  assert.ok(!args.includes('-incoming') && !args.includes('-nic') && !args.includes('-netdev'));
  assert.ok(!args.includes('-object'), 'no shared memory backend without shares');
});

test('TCG gets -cpu max; a guest of another architecture runs under TCG even on a KVM host', () => {
  const tcg = qemuArgs(spec(), { ...host, accelerator: 'tcg' }, paths);
  assert.deepEqual(values(tcg, '-cpu'), ['max']);
  assert.match(values(tcg, '-machine')[0]!, /accel=tcg/);
  const arm = qemuArgs(spec({ arch: 'aarch64' }), host, paths);
  assert.deepEqual(values(arm, '-machine'), ['virt,accel=tcg,gic-version=max']);
  assert.deepEqual(values(arm, '-cpu'), ['max']);
  assert.deepEqual(values(arm, '-bios'), [], 'qboot is x86 firmware');
});

test('aarch64 on an aarch64 KVM host: virt with the host CPU; HVF on a Mac', () => {
  const armHost: QemuHost = { ...host, arch: 'aarch64' };
  const args = qemuArgs(spec({ arch: 'aarch64' }), armHost, paths);
  assert.deepEqual(values(args, '-machine'), ['virt,accel=kvm,gic-version=max']);
  assert.deepEqual(values(args, '-cpu'), ['host']);
  const mac = qemuArgs(spec({ arch: 'aarch64' }), { ...armHost, accelerator: 'hvf' }, paths);
  assert.deepEqual(values(mac, '-machine'), ['virt,accel=hvf,gic-version=max']);
});

test('EFI boot: OVMF code read-only and the VM\'s own variable store as pflash; the disk gets bootindex', () => {
  const args = qemuArgs(spec({ boot: { kind: 'efi' } }), host, paths);
  assert.deepEqual(values(args, '-drive').filter((d) => d.startsWith('if=pflash')), [
    'if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF_CODE_4M.fd',
    'if=pflash,format=raw,unit=1,file=/vms/a/efi-vars.fd',
  ]);
  assert.ok(!args.includes('-kernel') && !args.includes('-bios'));
  assert.ok(values(args, '-device').includes('virtio-blk-pci,drive=disk0,bootindex=0'));
  const own = qemuArgs(spec({ boot: { kind: 'efi', nvram: '/elsewhere/vars.fd' } }), host, paths);
  assert.ok(values(own, '-drive').includes('if=pflash,format=raw,unit=1,file=/elsewhere/vars.fd'));
  const arm = qemuArgs(spec({ arch: 'aarch64', boot: { kind: 'efi' } }), host, paths);
  assert.ok(values(arm, '-drive').includes('if=pflash,format=raw,unit=0,readonly=on,file=/fw/AAVMF_CODE.fd'));
  assert.throws(() => qemuArgs(spec({ boot: { kind: 'efi' } }), { ...host, firmware: {} }, paths), /apt-get install ovmf/);
});

test('user networking: a virtio NIC with each forward on loopback unless an address is given', () => {
  const args = qemuArgs(spec({
    macAddress: '52:54:00:aa:bb:cc',
    network: { mode: 'user', forwards: [
      { protocol: 'tcp', hostPort: 8080, guestPort: 80 },
      { protocol: 'udp', hostAddress: '0.0.0.0', hostPort: 5353, guestPort: 53 },
    ] },
  }), host, paths);
  assert.deepEqual(values(args, '-nic'), [
    'user,model=virtio-net-pci,mac=52:54:00:aa:bb:cc,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:0.0.0.0:5353-:53',
  ]);
  assert.throws(() => qemuArgs(spec({ network: { mode: 'user', forwards: [{ protocol: 'tcp', hostPort: 0, guestPort: 80 }] } }), host, paths), ArgsError);
});

test('bridge networking: qemu-bridge-helper on the bridge, or a tap made beforehand; a stable MAC from the id', () => {
  const helper = qemuArgs(spec({ network: { mode: 'bridge', bridge: 'vmbr0' } }), host, paths);
  assert.deepEqual(values(helper, '-netdev'), ['bridge,id=net0,br=vmbr0,helper=/usr/lib/qemu/qemu-bridge-helper']);
  assert.deepEqual(values(helper, '-device').filter((d) => d.startsWith('virtio-net')), [`virtio-net-pci,netdev=net0,mac=${macFromId('pod-1')}`]);
  const tap = qemuArgs(spec({ network: { mode: 'bridge', bridge: 'vmbr0', tap: 'tap-pod1' } }), host, paths);
  assert.deepEqual(values(tap, '-netdev'), ['tap,id=net0,ifname=tap-pod1,script=no,downscript=no']);
  assert.throws(() => qemuArgs(spec({ network: { mode: 'bridge', bridge: 'br0,helper=/bin/sh' } }), host, paths), /not a valid interface name/);
  assert.match(macFromId('pod-1'), /^52:54:00(:[0-9a-f]{2}){3}$/);
  assert.equal(macFromId('pod-1'), macFromId('pod-1'));
  assert.notEqual(macFromId('pod-1'), macFromId('pod-2'));
});

test('shares: shared memory backend, one vhost-user-fs device per share, virtiofsd per share', () => {
  const args = qemuArgs(spec({ shares: [
    { tag: 'data', hostPath: '/srv/data', readOnly: false },
    { tag: 'config', hostPath: '/srv/cfg', readOnly: true },
  ] }), host, paths);
  assert.deepEqual(values(args, '-object'), ['memory-backend-memfd,id=mem,size=1024M,share=on']);
  assert.deepEqual(values(args, '-numa'), ['node,memdev=mem']);
  assert.ok(values(args, '-chardev').includes('socket,id=fs0,path=/vms/a/fs-data.sock'));
  assert.ok(values(args, '-chardev').includes('socket,id=fs1,path=/vms/a/fs-config.sock'));
  assert.ok(values(args, '-device').includes('vhost-user-fs-pci,id=fs0dev,chardev=fs0,tag=data'));
  assert.ok(values(args, '-device').includes('vhost-user-fs-pci,id=fs1dev,chardev=fs1,tag=config'));
  assert.deepEqual(virtiofsdArgs({ tag: 'data', hostPath: '/srv/data', readOnly: false }, '/vms/a/fs-data.sock'), [
    '--socket-path=/vms/a/fs-data.sock', '-o', 'source=/srv/data', '-o', 'cache=auto', '-o', 'sandbox=chroot', '-o', 'log_level=warn', '-f',
  ]);
  const twice = [{ tag: 'x', hostPath: '/a', readOnly: false }, { tag: 'x', hostPath: '/b', readOnly: false }];
  assert.throws(() => qemuArgs(spec({ shares: twice }), host, paths), /used twice/);
  assert.throws(() => qemuArgs(spec({ shares: [{ tag: 'a,b', hostPath: '/a', readOnly: false }] }), host, paths), /share tag/);
});

test('restore waits for migrate-incoming; commas in paths and names are escaped; refusals are one line', () => {
  assert.deepEqual(values(qemuArgs(spec(), host, paths, { incoming: true }), '-incoming'), ['defer']);
  const args = qemuArgs(spec({ name: 'ns/a,b', disk: { path: '/d/x,y.raw', format: 'raw' } }), host, paths);
  assert.deepEqual(values(args, '-name'), ['ns/a,,b,process=vmlet-vm']);
  assert.ok(values(args, '-drive')[0]!.includes('file=/d/x,,y.raw,format=raw'));
  assert.throws(() => qemuArgs(spec({ os: 'darwin' }), host, paths), /Linux guests only/);
  assert.throws(() => qemuArgs(spec({ cpus: 0 }), host, paths), /cpus must be a positive integer/);
  assert.throws(() => qemuArgs(spec({ memoryMiB: 16 }), host, paths), /memoryMiB/);
  assert.throws(() => qemuArgs(spec({ boot: { kind: 'macos', nvram: 'n', hardwareModel: 'h', ecid: 'e' } }), host, paths), /Virtualization.framework/);
});

test('the accelerator check: a reset-vector ROM that exits through isa-debug-exit, with the driver\'s CPU model', () => {
  const rom = x86ProbeRom();
  assert.equal(rom.length, 65536);
  assert.deepEqual([...rom.subarray(0xfff0, 0xfff5)], [0xb0, 0x2a, 0xe6, 0xf4, 0xf4]);
  assert.equal(X86_PROBE_EXIT, 85);
  const args = probeArgs('x86_64', 'kvm', '/tmp/p.rom');
  assert.deepEqual(values(args, '-cpu'), ['host']);
  assert.deepEqual(values(args, '-bios'), ['/tmp/p.rom']);
  assert.ok(values(args, '-device').includes('isa-debug-exit,iobase=0xf4,iosize=0x04'));
  assert.equal(aarch64ProbeRom().readUInt32LE(8), 0xd4000002, 'hvc #0');
});
