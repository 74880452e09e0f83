// The QEMU driver against real QEMU and the test guest (test/guest/): boot with the console captured,
// pause/resume, save and restore, ACPI stop, escalation to kill, exit classification (kill -9 as our
// child and after a re-attach, a guest that cannot boot, a kernel that does not exist), re-attaching to a
// VM started by another process that has exited, and a virtiofs share. Guest readiness is the init's
// console line, not the agent protocol (being rewritten). Every VM is killed by pid in after() if a test
// did not get to destroy it, and each test checks that its processes and VM dir are gone.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { VmError, type Vm, type VmSpec } from '../../src/drivers/hypervisor.ts';
import { QemuDriver } from '../../src/drivers/qemu/index.ts';
import type { QemuVm } from '../../src/drivers/qemu/vm.ts';
import { ensureTestGuest, type TestGuest } from '../guest/build.ts';
import { runChecked, runCommand } from '../harness/exec.ts';
import { createFixtureDir, freePort, removeFixtureDir } from '../harness/processes.ts';

const READY = 'vmlet-init: starting the agent';
const CHILD = join(import.meta.dirname, 'fixtures', 'qemu-start-vm.ts');

let guest: TestGuest;
let driver: QemuDriver;
const dirs: string[] = [];
const boots: { cold?: number; restore?: number } = {};

before(async () => {
  guest = await ensureTestGuest((msg) => console.log(`test guest: ${msg}`));
  driver = await QemuDriver.open();
  console.log(`driver: ${driver.describe()}`);
});

after(async () => {
  // Safety net: whatever a failed test left running is killed by its recorded pid (only if the pid is
  // still that process), then the dirs go.
  for (const dir of dirs) {
    for (const p of recordedProcesses(dir)) if (sameProcess(p)) process.kill(p.pid, 'SIGKILL');
    await removeFixtureDir(dir);
  }
  if (boots.cold !== undefined) {
    console.log(`boot to console-ready with ${driver.host.accelerator}: cold ${(boots.cold / 1000).toFixed(2)} s, ` +
      `restore ${boots.restore === undefined ? '-' : `${(boots.restore / 1000).toFixed(2)} s`}`);
  }
});

test('cold boot, console, agent channel, usage, pause/resume, save and restore, ACPI stop', { timeout: 300_000 }, async (t) => {
  const dir = await vmDir();
  const port = await freePort();
  const vm = (await driver.create(await specFor(dir, { network: { mode: 'user', forwards: [{ protocol: 'tcp', hostPort: port, guestPort: 22 }] } }), dir)) as QemuVm;
  assert.equal(vm.state(), 'created');
  const started = performance.now();
  await vm.start();
  assert.equal(vm.state(), 'running');
  const pid1 = vm.pid()!;
  await waitForConsole(vm, READY, 1, 180_000);
  boots.cold = performance.now() - started;
  t.diagnostic(`cold boot to "${READY}": ${(boots.cold / 1000).toFixed(2)} s (${driver.describe()})`);

  // The agent channel is a unix socket QEMU serves; the host forward listens on loopback only.
  const agent = await vm.connectAgent(10_000);
  agent.destroy();
  const usage = await vm.usage();
  assert.ok(usage.cpuSeconds > 0 && usage.rssBytes > 50 * 1024 * 1024 && usage.diskBytes > 0, JSON.stringify(usage));

  await vm.pause();
  assert.equal(vm.state(), 'paused');
  assert.equal((await vm.monitor<{ status: string }>('query-status')).status, 'paused');
  await vm.resume();
  assert.equal((await vm.monitor<{ status: string }>('query-status')).status, 'running');

  // Save, kill, restore from the file on the same disk: the guest continues, it does not boot again.
  const saved = join(dir, 'saved.state');
  await vm.save(saved);
  assert.equal(vm.state(), 'paused');
  assert.ok(readFileSync(saved).length > 1024 * 1024, 'the state file holds guest memory');
  assert.equal((await vm.kill()).reason, 'Killed');
  const restoring = performance.now();
  await vm.start({ restoreFrom: saved });
  boots.restore = performance.now() - restoring;
  t.diagnostic(`restore to running: ${(boots.restore / 1000).toFixed(2)} s`);
  assert.equal(vm.state(), 'running');
  assert.notEqual(vm.pid(), pid1);
  (await vm.connectAgent(10_000)).destroy();

  // The restored guest is alive: it answers the power button, and its console got no second boot.
  const exit = await vm.stop({ timeoutMs: 120_000 });
  assert.equal(exit.reason, 'Stopped', exit.message);
  assert.match(exit.message, /ACPI/);
  const console = await readFile(vm.consoleLog, 'utf8');
  assert.equal(count(console, READY), 1, 'restored, not booted again');
  assert.match(console, /power button pressed; powering off/);
  await destroyAndCheck(vm);
});

test('kill -9 of our child QEMU is Crashed; a restart appends to the console; a frozen QEMU is killed at the deadline', { timeout: 180_000 }, async () => {
  const dir = await vmDir();
  const vm = await driver.create(await specFor(dir), dir);
  await vm.start();
  process.kill(vm.pid()!, 'SIGKILL');
  const crashed = await within(vm.exited, 30_000, 'the exit of a killed QEMU');
  assert.equal(crashed.reason, 'Crashed');
  assert.equal(crashed.signal, 'SIGKILL');
  assert.match(crashed.message, /killed by SIGKILL/);
  assert.equal(vm.state(), 'exited');

  await writeFile(vm.consoleLog, 'a line from the first boot\n', { flag: 'a' });
  await vm.start();
  // SIGSTOP: neither the (accepting) agent nor the power button can have any effect.
  process.kill(vm.pid()!, 'SIGSTOP');
  let asked = 0;
  const exit = await vm.stop({ timeoutMs: 4000, askGuest: async () => void asked++ });
  assert.equal(asked, 1);
  assert.equal(exit.reason, 'Killed');
  assert.match(exit.message, /did not shut down within 4\.0 s/);
  assert.match(await readFile(vm.consoleLog, 'utf8'), /a line from the first boot/, 'the console log is appended to, not truncated');
  await destroyAndCheck(vm);
});

test('re-attach after vmlet restarts: a VM started by another process is found running and stopped', { timeout: 240_000 }, async () => {
  const dir = await vmDir();
  const pid = await startInChild(dir);
  const vm = await driver.attach(dir);
  assert.ok(vm, 'attach finds the VM');
  assert.equal(vm.state(), 'running');
  assert.equal(vm.pid(), pid);
  await waitForConsole(vm, READY, 1, 180_000);
  // The agent does not answer (rejects): ACPI power-down, and the exit is seen without being the parent.
  const exit = await vm.stop({ timeoutMs: 120_000, askGuest: () => Promise.reject(new Error('no agent in this test')) });
  assert.equal(exit.reason, 'Stopped', exit.message);
  assert.match(exit.message, /ACPI/);
  await destroyAndCheck(vm);
});

test('after a re-attach, kill -9 is Crashed (QMP end-of-file, no SHUTDOWN); a VM gone before attach is Lost', { timeout: 120_000 }, async () => {
  const dir = await vmDir();
  const pid = await startInChild(dir);
  const vm = await driver.attach(dir);
  assert.equal(vm?.state(), 'running');
  process.kill(pid, 'SIGKILL');
  const exit = await within(vm.exited, 30_000, 'the exit of a re-attached QEMU');
  assert.equal(exit.reason, 'Crashed');
  assert.equal(exit.message, 'QEMU exited unexpectedly (killed?)');
  await destroyAndCheck(vm);

  const dir2 = await vmDir();
  const pid2 = await startInChild(dir2);
  process.kill(pid2, 'SIGKILL');
  await waitGone(pid2);
  const lost = await driver.attach(dir2);
  assert.equal(lost?.state(), 'exited');
  assert.equal((await lost.exited).reason, 'Lost');
  await destroyAndCheck(lost);
});

test('a random root disk ends in an exit; a missing kernel rejects start() with QEMU\'s message', { timeout: 180_000 }, async () => {
  const dir = await vmDir();
  const disk = join(dir, 'random.img');
  await writeFile(disk, randomBytes(16 * 1024 * 1024));
  const vm = await driver.create({ ...(await specFor(dir)), disk: { path: disk, format: 'raw' } }, dir);
  await vm.start();
  const exit = await within(vm.exited, 150_000, 'a guest with a random root disk to give up');
  assert.equal(exit.reason, 'GuestShutdown', exit.message);
  assert.match(await readFile(vm.consoleLog, 'utf8'), /cannot mount \/dev\/vda as ext4/);
  await destroyAndCheck(vm);

  const dir2 = await vmDir();
  const spec2 = await specFor(dir2);
  const vm2 = await driver.create({ ...spec2, boot: { kind: 'kernel', kernel: join(dir2, 'no-such-vmlinux'), cmdline: 'console=ttyS0' } }, dir2);
  const err = await vm2.start().then(() => assert.fail('start() must reject'), (e: unknown) => e);
  assert.ok(err instanceof VmError, String(err));
  assert.equal(err.reason, 'BootFailed');
  assert.match(err.message, /^qemu(-system-x86_64)?: .*no-such-vmlinux/);
  assert.equal(vm2.state(), 'exited');
  assert.equal((await vm2.exited).reason, 'BootFailed');
  await destroyAndCheck(vm2);
});

test('a virtiofs share: virtiofsd runs beside QEMU, the device is on the PCI bus, both go with the VM', { timeout: 120_000 }, async () => {
  const dir = await vmDir();
  const shared = await createFixtureDir('vmlet-share-');
  try {
    await writeFile(join(shared, 'hello.txt'), 'hello\n');
    const vm = (await driver.create({ ...(await specFor(dir)), shares: [{ tag: 'data', hostPath: shared, readOnly: false }] }, dir)) as QemuVm;
    await vm.start();
    const fsd = recordedProcesses(dir).filter((p) => p.argv[0]?.endsWith('virtiofsd'));
    assert.equal(fsd.length, 1);
    assert.ok(sameProcess(fsd[0]!), 'virtiofsd runs');
    const buses = await vm.monitor<{ devices: { qdev_id: string; id: { device: number; vendor: number } }[] }[]>('query-pci');
    const dev = buses.flatMap((b) => b.devices).find((d) => d.qdev_id === 'fs0dev');
    assert.ok(dev, 'vhost-user-fs-pci is on the bus');
    assert.equal(dev.id.vendor, 0x1af4);
    assert.equal((await vm.kill()).reason, 'Killed');
    await destroyAndCheck(vm, fsd.map((p) => p.pid));
  } finally {
    await removeFixtureDir(shared);
  }
});

// ---- helpers ----

async function vmDir(): Promise<string> {
  const dir = await createFixtureDir('vmlet-qemu-');
  dirs.push(dir);
  return dir;
}

/** A spec for the test guest with its own qcow2 overlay in dir. */
async function specFor(dir: string, over: Partial<VmSpec> = {}): Promise<VmSpec> {
  const disk = join(dir, 'root.qcow2');
  if (!existsSync(disk)) await runChecked('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', guest.rootDiskFormat, '-b', guest.rootDisk, disk]);
  const id = `test-${randomBytes(4).toString('hex')}`;
  return {
    id,
    name: `e2e/${id}`,
    os: 'linux',
    arch: 'x86_64',
    cpus: 1,
    memoryMiB: 512,
    disk: { path: disk, format: 'qcow2' },
    boot: { kind: 'kernel', kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline },
    network: { mode: 'none' },
    shares: [],
    ...over,
  };
}

/** Runs a separate Node process that creates and starts a VM in dir, then exits; returns QEMU's pid. */
async function startInChild(dir: string): Promise<number> {
  await mkdir(dir, { recursive: true });
  const spec = await specFor(dir);
  const result = await runCommand(process.execPath, ['--import', 'tsx', CHILD, dir, JSON.stringify(spec)], { timeoutMs: 120_000 });
  if (result.code !== 0) throw new Error(`the child vmlet failed (${result.code}): ${result.stderr}`);
  const { pid } = JSON.parse(result.stdout.trim().split('\n').at(-1)!) as { pid: number };
  assert.ok(sameProcess(recordedProcesses(dir)[0]!), 'QEMU outlived the process that started it');
  return pid;
}

async function waitForConsole(vm: Vm, text: string, times: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const console = await readFile(vm.consoleLog, 'utf8').catch(() => '');
    if (count(console, text) >= times) return;
    if (vm.state() === 'exited' || Date.now() > deadline) {
      const why = vm.state() === 'exited' ? `the VM exited (${(await vm.exited).message})` : `timed out after ${timeoutMs} ms`;
      throw new Error(`console never showed "${text}": ${why}\n--- console ---\n${console.split('\n').slice(-20).join('\n')}`);
    }
    await sleep(100);
  }
}

async function destroyAndCheck(vm: Vm, extraPids: number[] = []): Promise<void> {
  const pids = [...recordedProcesses(vm.dir).map((p) => p.pid), ...extraPids];
  await vm.destroy();
  assert.equal(existsSync(vm.dir), false, 'destroy() removes the VM dir');
  for (const pid of pids) assert.ok(isGone(pid), `process ${pid} is gone`);
}

interface Recorded { pid: number; startTime: string; argv: string[] }

function recordedProcesses(dir: string): Recorded[] {
  try {
    const rec = JSON.parse(readFileSync(join(dir, 'vm.json'), 'utf8')) as { qemu?: Recorded; virtiofsd: Recorded[] };
    return [...(rec.qemu ? [rec.qemu] : []), ...rec.virtiofsd];
  } catch {
    return [];
  }
}

/** Field 22 (start time) and 3 (state) of /proc/<pid>/stat; undefined when there is no such process. */
function procStat(pid: number): { state: string; startTime: string } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { state: f[0]!, startTime: f[19]! };
  } catch {
    return undefined;
  }
}

function sameProcess(p: Recorded): boolean {
  const s = procStat(p.pid);
  return s !== undefined && s.startTime === p.startTime && s.state !== 'Z';
}

/** Gone, or a zombie its (non-vmlet) parent has not reaped yet. */
function isGone(pid: number): boolean {
  const s = procStat(pid);
  return s === undefined || s.state === 'Z';
}

async function waitGone(pid: number): Promise<void> {
  for (let i = 0; i < 200 && !isGone(pid); i++) await sleep(50);
  assert.ok(isGone(pid), `process ${pid} did not go away`);
}

function count(text: string, needle: string): number {
  return text.split(needle).length - 1;
}

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

