import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VmError } from '../../../src/drivers/hypervisor.ts';
import type { VmImageLayout } from '../../../src/images/formats/layout.ts';
import { vmSpecFromImage, type VmRequest } from '../../../src/runtime/vm-spec.ts';

const MiB = 1024 * 1024;
const d = { mediaType: 'x', digest: `sha256:${'a'.repeat(64)}`, size: 1 };
const linuxLayout: VmImageLayout = { format: 'tart', config: d, chunks: [], diskSize: 1, kernel: d, initrd: d };
const linux = { os: 'linux', arch: 'amd64', cpuCount: 2, cpuCountMin: 1, memorySize: 512 * MiB, memorySizeMin: 256 * MiB, kernelCommandLine: 'console=ttyS0 quiet' };
const req: VmRequest = { id: 'vm1', name: 'default/web', disk: { path: '/vms/vm1/disk.qcow2', format: 'qcow2' }, network: { mode: 'none' } };
const host = { cpus: 8, maxMemoryMiB: 16384 };

test('a Linux image with a kernel layer boots its kernel with the image command line plus the extra one', () => {
  const spec = vmSpecFromImage('/img', linuxLayout, linux, { ...req, extraCmdline: 'vmlet.hostname=web' }, host);
  assert.deepEqual(spec.boot, { kind: 'kernel', kernel: '/img/kernel', initrd: '/img/initrd', cmdline: 'console=ttyS0 quiet vmlet.hostname=web' });
  assert.equal(spec.os, 'linux');
  assert.equal(spec.arch, 'x86_64');
  assert.equal(spec.cpus, 2);
  assert.equal(spec.memoryMiB, 512);
});

test('a request may ask for more CPUs and memory than the image, and is refused below its minimums or above the host', () => {
  const more = vmSpecFromImage('/img', linuxLayout, linux, { ...req, cpus: 4, memoryMiB: 2048 }, host);
  assert.equal(more.cpus, 4);
  assert.equal(more.memoryMiB, 2048);
  const reason = (r: Partial<VmRequest>, h = host) => {
    try {
      vmSpecFromImage('/img', linuxLayout, linux, { ...req, ...r }, h);
      return 'accepted';
    } catch (err) {
      assert.ok(err instanceof VmError);
      return `${err.reason}: ${err.message}`;
    }
  };
  assert.match(reason({ memoryMiB: 128 }), /^InvalidVmSize: the image needs at least 256 MiB/);
  assert.match(reason({ cpus: 16 }), /^InvalidVmSize: 16 CPUs requested; this host has 8/);
  assert.match(reason({ memoryMiB: 32768 }), /^InvalidVmSize: 32768 MiB .* at most 16384/);
  assert.match(reason({ cpus: 1.5 }), /^InvalidVmSize: a VM needs a whole number of CPUs/);
});

test('an image without a kernel boots through EFI with its NVRAM copy; macOS needs NVRAM and its identity', () => {
  const efi = vmSpecFromImage('/img', { ...linuxLayout, kernel: undefined, initrd: undefined }, linux, { ...req, nvram: '/vms/vm1/nvram.bin' }, host);
  assert.deepEqual(efi.boot, { kind: 'efi', nvram: '/vms/vm1/nvram.bin' });
  const mac = { os: 'darwin', arch: 'arm64', cpuCount: 4, memorySize: 8192 * MiB, hardwareModel: 'hw', ecid: 'id' };
  const spec = vmSpecFromImage('/img', { ...linuxLayout, kernel: undefined }, mac, { ...req, nvram: '/vms/vm1/nvram.bin' }, host);
  assert.deepEqual(spec.boot, { kind: 'macos', nvram: '/vms/vm1/nvram.bin', hardwareModel: 'hw', ecid: 'id' });
  assert.equal(spec.arch, 'aarch64');
  assert.throws(() => vmSpecFromImage('/img', linuxLayout, mac, req, host), /needs an NVRAM layer/);
  assert.throws(() => vmSpecFromImage('/img', linuxLayout, { ...linux, os: 'windows' }, req, host), /os "windows"/);
  assert.throws(() => vmSpecFromImage('/img', linuxLayout, { ...linux, arch: 'riscv64' }, req, host), /arch "riscv64"/);
});
