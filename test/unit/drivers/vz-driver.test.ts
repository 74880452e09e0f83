// The vz helper conformance suite: the vz driver's whole behaviour against a helper binary that speaks
// docs/VZ-HELPER-PROTOCOL.md. Two modes, one set of assertions:
//
// - fake (default, any host): test/fakes/fake-vz-helper.ts, a stand-in that runs no VM and simulates the
//   states, the errors and the two-macOS-VM limit (FAKE_VZ_HOST_DIR); IP discovery runs through the
//   driver inside a private mount namespace whose /var/db/dhcpd_leases and `arp` play the Mac's.
// - real (`npm run test:macos` on Apple Silicon): VMLET_VZ_HELPER names the built vmlet-vz, which boots
//   the arm64 Linux guest of $VMLET_VZ_TEST_GUEST (a dir: kernel = uncompressed Image, disk.img = raw,
//   optional initrd and cmdline); $VMLET_VZ_TEST_MACOS_VM (a Tart VM dir) adds the two-VM-limit case.
//   What the real helper cannot simulate is done by real means: a crash is a SIGKILL to the helper, or to
//   the newest com.apple.Virtualization.VirtualMachine process (the VM itself, so Virtualization.framework
//   reports didStopWithError); the limit is a third macOS VM.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { constants, copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { VmError, type VmSpec } from '../../../src/drivers/hypervisor.ts';
import { VzControl } from '../../../src/drivers/vz/control.ts';
import { VzDriver, type VzDriverOptions } from '../../../src/drivers/vz/driver.ts';
import { arpIpFor, parseArp } from '../../../src/drivers/vz/ip.ts';
import type { VzVm } from '../../../src/drivers/vz/vm.ts';
import { runCommand } from '../../harness/exec.ts';

const fake = fileURLToPath(new URL('../../fakes/fake-vz-helper.ts', import.meta.url));
const probe = fileURLToPath(new URL('../../fakes/vz-ip-probe.ts', import.meta.url));
const realHelper = process.env.VMLET_VZ_HELPER;
const real = realHelper !== undefined && realHelper !== '';
const guestDir = process.env.VMLET_VZ_TEST_GUEST;
const macosVmDir = process.env.VMLET_VZ_TEST_MACOS_VM;
/** Real guests boot; the fake answers at once. */
const slow = real ? 10 : 1;
const root = mkdtempSync(path.join(os.tmpdir(), 'vmlet-vz-'));
const hostDir = path.join(root, 'host');
const started: VzVm[] = [];
after(async () => {
  for (const vm of started) if (vm.state() !== 'exited') await vm.kill().catch(() => {});
  if (!real) rmSync(root, { recursive: true, force: true });
});

if (real) {
  assert.ok(guestDir && existsSync(path.join(guestDir, 'kernel')) && existsSync(path.join(guestDir, 'disk.img')),
    'VMLET_VZ_HELPER is set, so this suite runs against the real helper: set VMLET_VZ_TEST_GUEST to a directory with kernel (uncompressed arm64 Image) and disk.img (raw), optionally initrd and cmdline');
}

function driver(env: Record<string, string> = {}, more: Partial<VzDriverOptions> = {}): Promise<VzDriver> {
  const opts: VzDriverOptions = {
    ...more,
    helper: real ? [realHelper] : [process.execPath, '--import', 'tsx', fake],
    startTimeoutMs: 20_000 * slow,
    pollMs: 100,
    env: { ...process.env, FAKE_VZ_HOST_DIR: hostDir, ...env },
  };
  return VzDriver.open(opts);
}

let n = 0;
function vmDir(): string {
  return mkdtempSync(path.join(root, `vm${++n}-`));
}

/** A copy-on-write clone where the file system has them (APFS), else a copy. */
function cloneFile(from: string, to: string): string {
  copyFileSync(from, to, constants.COPYFILE_FICLONE);
  return to;
}

/** A small arm64 Linux guest: the real one of $VMLET_VZ_TEST_GUEST, or empty files the fake never reads. */
function linuxSpec(id: string): VmSpec {
  const disk = path.join(root, `${id}.img`);
  const kernel = path.join(root, 'kernel');
  let initrd: string | undefined;
  let cmdline = 'console=hvc0';
  if (real && guestDir) {
    cloneFile(path.join(guestDir, 'disk.img'), disk);
    cloneFile(path.join(guestDir, 'kernel'), kernel);
    if (existsSync(path.join(guestDir, 'initrd'))) initrd = path.join(guestDir, 'initrd');
    cmdline = existsSync(path.join(guestDir, 'cmdline')) ? readFileSync(path.join(guestDir, 'cmdline'), 'utf8').trim() : 'console=hvc0 root=/dev/vda1 rw';
  } else {
    writeFileSync(disk, '');
    writeFileSync(kernel, '');
  }
  return {
    id, name: `default/${id}`, os: 'linux', arch: 'aarch64', cpus: 2, memoryMiB: 1024,
    disk: { path: disk, format: 'raw' },
    boot: { kind: 'kernel', kernel, ...(initrd ? { initrd } : {}), cmdline },
    network: { mode: 'user', forwards: [] },
    shares: [{ tag: 'config', hostPath: root, readOnly: true }],
  };
}

/** A macOS guest: a clone of the Tart VM $VMLET_VZ_TEST_MACOS_VM, or empty files for the fake. */
function macSpec(id: string): VmSpec {
  const disk = path.join(root, `${id}-disk.img`);
  const nvram = path.join(root, `${id}-nvram.bin`);
  let hardwareModel = 'aGFyZHdhcmU=';
  let ecid = 'ZWNpZA==';
  if (real && macosVmDir) {
    cloneFile(path.join(macosVmDir, 'disk.img'), disk);
    cloneFile(path.join(macosVmDir, 'nvram.bin'), nvram);
    const config = JSON.parse(readFileSync(path.join(macosVmDir, 'config.json'), 'utf8')) as { hardwareModel: string; ecid: string };
    ({ hardwareModel, ecid } = config);
  } else {
    writeFileSync(disk, '');
    writeFileSync(nvram, '');
  }
  return {
    id, name: `default/${id}`, os: 'darwin', arch: 'aarch64', cpus: 2, memoryMiB: 4096,
    disk: { path: disk, format: 'raw' },
    boot: { kind: 'macos', nvram, hardwareModel, ecid },
    network: { mode: 'user', forwards: [] },
    shares: [{ tag: 'config', hostPath: root, readOnly: true }],
  };
}

async function start(d: VzDriver, spec: VmSpec): Promise<VzVm> {
  const vm = (await d.create(spec, vmDir())) as VzVm;
  started.push(vm);
  await vm.start();
  return vm;
}

async function eventually<T>(what: string, timeoutMs: number, f: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) assert.fail(`${what} within ${timeoutMs} ms`);
    await sleep(200);
  }
}

/** A crash of the VM while it runs. The fake: its test-only `_crash`; a Mac: SIGKILL to the VM process. */
async function crashTheVm(vm: VzVm): Promise<void> {
  if (!real) {
    const c = await VzControl.connect(path.join(vm.dir, 'control.sock'), 2000);
    await c.request({ op: '_crash' } as unknown as Parameters<VzControl['request']>[0]);
    c.close();
    return;
  }
  // Virtualization.framework runs each VM in an XPC service process; the newest is this test's VM.
  const pid = execFileSync('pgrep', ['-n', '-f', 'com.apple.Virtualization.VirtualMachine'], { encoding: 'utf8' }).trim();
  process.kill(Number(pid), 'SIGKILL');
}

describe(`vz helper conformance (${real ? `real helper ${realHelper}` : 'fake helper'})`, () => {
  test('start, console, the agent channel, pause/resume, save, a graceful stop, and a restart from the saved state', async () => {
    const d = await driver();
    const vm = await start(d, linuxSpec('a1'));
    assert.equal(vm.state(), 'running');
    assert.ok(vm.pid());
    assert.match(vm.macAddress, /^[0-9a-f][26ae](:[0-9a-f]{2}){5}$/);
    const rec = JSON.parse(readFileSync(path.join(vm.dir, 'vm.json'), 'utf8')) as { driver: string; state: string; helper: { pid: number } };
    assert.deepEqual([rec.driver, rec.state, rec.helper.pid], ['vz', 'running', vm.pid()]);
    await eventually('the guest console is written', 5000 * slow, async () => (statSync(vm.consoleLog, { throwIfNoEntry: false })?.size ? true : undefined));

    const agent = await vm.connectAgent(5000);
    if (!real) {
      // The fake's "guest agent" echoes; a real guest without vmlet-agent on vsock closes the connection.
      const echoed = new Promise<string>((resolve) => agent.once('data', (b: Buffer) => resolve(b.toString())));
      agent.write('ping');
      assert.equal(await echoed, 'ping');
    }
    agent.destroy();

    if (real) {
      // A NAT guest gets its address from macOS's bootpd; the driver reads it from /var/db/dhcpd_leases.
      const found = await eventually('the guest has a DHCP lease', 120_000, () => vm.ipAddress());
      assert.equal(found.source, 'dhcp');
      await runCommand('ping', ['-c', '1', '-t', '2', found.ip]);
      assert.equal(arpIpFor(parseArp(execFileSync('arp', ['-an'], { encoding: 'utf8' })), vm.macAddress), found.ip);
    }

    await vm.pause();
    assert.equal(vm.state(), 'paused');
    await vm.resume();
    assert.equal(vm.state(), 'running');
    const saved = path.join(vm.dir, 'state.vzvmsave');
    await vm.save(saved);
    assert.equal(vm.state(), 'paused');
    assert.ok(statSync(saved).size > 0);

    const exit = await vm.stop({ timeoutMs: 5000 * slow * 6, askGuest: () => Promise.reject(new Error('no agent')) });
    assert.equal(exit.reason, 'Stopped');
    assert.match(exit.message, /requestStop/);
    assert.equal(vm.state(), 'exited');
    if (!real) assert.match(readFileSync(vm.consoleLog, 'utf8'), /booted linux guest, 2 CPUs, network nat[\s\S]*stopped \(requested\)/);

    await vm.start({ restoreFrom: saved });
    assert.equal(vm.state(), 'running');
    assert.equal((await vm.kill()).reason, 'Killed');
  });

  test('a guest that does not power off after the stop request is stopped by force at the deadline', async () => {
    // The fake ignores the request when told to; a real guest cannot act on it within a second of boot.
    const d = await driver({ FAKE_VZ_IGNORE_STOP: 'all' });
    const vm = await start(d, linuxSpec('stubborn'));
    const t0 = Date.now();
    const exit = await vm.stop({ timeoutMs: 1000 });
    assert.equal(exit.reason, 'Killed');
    assert.match(exit.message, /did not shut down within 1\.0 s of a stop request; stopped by force/);
    assert.ok(Date.now() - t0 < 10_000);
    assert.equal(vm.state(), 'exited');
  });

  test('a stop request the guest misses (still booting) is repeated until it powers off', { skip: real && 'the fake decides which requests the guest misses' }, async () => {
    const d = await driver({ FAKE_VZ_IGNORE_STOP: '2' }, { softStopRepeatMs: 200 });
    const vm = await start(d, linuxSpec('booting'));
    const exit = await vm.stop({ timeoutMs: 20_000 });
    assert.equal(exit.reason, 'Stopped', exit.message);
    assert.match(exit.message, /requestStop/);
  });

  test('a VM that crashes mid-run: exited resolves Crashed with what Virtualization.framework said', async () => {
    const d = await driver();
    const vm = await start(d, linuxSpec('crash'));
    await crashTheVm(vm);
    const exit = await vm.exited;
    assert.equal(exit.reason, 'Crashed');
    assert.match(exit.message, /the VM stopped with an error/);
    assert.equal(exit.exitCode, 1);
    assert.equal(vm.state(), 'exited');
    assert.equal((JSON.parse(readFileSync(path.join(vm.dir, 'helper-exit.json'), 'utf8')) as { cause: string }).cause, 'error');
  });

  test('the helper killed mid-run (kill -9): exited resolves Crashed with the signal', async () => {
    const d = await driver();
    const vm = await start(d, linuxSpec('sigkill'));
    process.kill(vm.pid()!, 'SIGKILL');
    const exit = await vm.exited;
    assert.equal(exit.reason, 'Crashed');
    assert.equal(exit.signal, 'SIGKILL');
    assert.match(exit.message, /the vz helper was killed by SIGKILL unexpectedly/);
    assert.equal((JSON.parse(readFileSync(path.join(vm.dir, 'vm.json'), 'utf8')) as { state: string }).state, 'exited');
  });

  test('restart: detach, attach from the dir (same helper, agent, control), then stop through the re-attached VM', async () => {
    const d = await driver();
    const vm = await start(d, linuxSpec('survivor'));
    const pid = vm.pid();
    await vm.detach();

    const again = (await (await driver()).attach(vm.dir)) as VzVm;
    started.push(again);
    assert.equal(again.state(), 'running');
    assert.equal(again.pid(), pid);
    (await again.connectAgent(2000)).destroy();
    await again.pause();
    assert.equal(again.state(), 'paused');
    await again.resume();
    // A not-our-child helper: seen go through the control socket closing and its pid.
    const exit = await again.stop({ timeoutMs: 1000 });
    assert.ok(['Stopped', 'Killed'].includes(exit.reason), exit.reason);
    assert.equal(again.state(), 'exited');
  });

  test('a VM stopped while no vmlet listened is classified from the helper exit file on attach', async () => {
    const d = await driver();
    const vm = await start(d, linuxSpec('gone'));
    await vm.detach();
    const c = await VzControl.connect(path.join(vm.dir, 'control.sock'), 2000);
    await c.request({ op: 'forceStop' });
    await eventually('the helper closes its control sessions', 10_000, async () => (c.isClosed ? true : undefined));
    await sleep(300);
    const again = (await d.attach(vm.dir)) as VzVm;
    assert.equal(again.state(), 'exited');
    const exit = await again.exited;
    assert.equal(exit.reason, 'Crashed');
    assert.match(exit.message, /stopped \(forced\) through the helper, not by this vmlet/);
    await again.destroy();
    assert.equal(existsSync(vm.dir), false);
  });

  test('the two-macOS-VM limit: a third macOS VM fails to start with its own reason and words', { skip: real && !macosVmDir ? 'set VMLET_VZ_TEST_MACOS_VM to a Tart VM dir for this case' : false }, async () => {
    const d = await driver();
    const two = [await start(d, macSpec('mac1')), await start(d, macSpec('mac2'))];
    const third = (await d.create(macSpec('mac3'), vmDir())) as VzVm;
    started.push(third);
    await assert.rejects(third.start(), (err: unknown) => {
      assert.ok(err instanceof VmError);
      assert.equal(err.reason, 'VirtualMachineLimitExceeded');
      assert.match(err.message, /at most two macOS VMs/);
      return true;
    });
    assert.equal((await third.exited).reason, 'BootFailed');
    assert.equal(third.state(), 'exited');
    // A slot freed, the third starts.
    await two[0]!.kill();
    await third.start();
    assert.equal(third.state(), 'running');
    await Promise.all([two[1]!.kill(), third.kill()]);
  });

  test('the guest powering off on its own is GuestShutdown, seen by a re-attached vmlet', { skip: real ? 'needs a guest that powers itself off; the fake simulates it' : false }, async () => {
    const d = await driver();
    const vm = await start(d, linuxSpec('poweroff'));
    await vm.detach();
    const again = (await (await driver()).attach(vm.dir)) as VzVm;
    started.push(again);
    const other = await VzControl.connect(path.join(vm.dir, 'control.sock'), 2000);
    assert.equal(other.hello.state, 'running');
    await other.request({ op: '_guestPowerOff' } as unknown as Parameters<VzControl['request']>[0]);
    assert.equal((await again.exited).reason, 'GuestShutdown');
    other.close();
  });

  test('IP discovery through the driver: the agent first, then /var/db/dhcpd_leases, then `arp -an`', { skip: real ? 'on a Mac the first case reads the real leases file and ARP cache' : false }, async (t) => {
    const ns = await runCommand('unshare', ['-rm', 'sh', '-c', 'mount -t tmpfs tmpfs /var && exec "$0" --import tsx "$1"', process.execPath, probe], { timeoutMs: 60_000 }).catch((err: Error) => ({ code: -1, stdout: '', stderr: err.message }));
    if (ns.code !== 0 && /unshare|Operation not permitted|mount/.test(ns.stderr) && !ns.stdout) {
      t.skip(`no private mount namespace here (${ns.stderr.trim().split('\n')[0]})`);
      return;
    }
    assert.equal(ns.code, 0, ns.stderr);
    const out = JSON.parse(ns.stdout) as { mac: string; none: unknown; dhcp: unknown; agentFirst: unknown; arp: unknown };
    assert.equal(out.none, null);
    assert.deepEqual(out.dhcp, { ip: '192.168.64.9', source: 'dhcp' });
    assert.deepEqual(out.agentFirst, { ip: '10.0.0.5', source: 'agent' });
    assert.deepEqual(out.arp, { ip: '192.168.64.11', source: 'arp' });
  });

  test('create refuses what vz cannot run, with a reason', async () => {
    const d = await driver();
    const spec = macSpec('x86');
    await assert.rejects(d.create({ ...spec, arch: 'x86_64' }, vmDir()), (e: unknown) => e instanceof VmError && e.reason === 'Unsupported');
    await assert.rejects(d.create({ ...spec, disk: { path: spec.disk.path, format: 'qcow2' } }, vmDir()), /raw disks only/);
    await assert.rejects(d.create({ ...spec, network: { mode: 'user', forwards: [{ protocol: 'tcp', hostPort: 1, guestPort: 2 }] } }, vmDir()), /port forwards/);
    assert.equal(await d.attach(vmDir()), undefined);
  });
});
