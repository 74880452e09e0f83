// vm.json and process identity (src/drivers/qemu/state.ts, persist.ts): the record round-trips through
// the file, a broken file is refused with the field, a reused pid is never taken for the VM, and exits
// are classified from what is known.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { VmSpec } from '../../../src/drivers/hypervisor.ts';
import { vmPaths } from '../../../src/drivers/qemu/args.ts';
import { readRecord, writeRecord } from '../../../src/drivers/qemu/persist.ts';
import { observeProcess } from '../../../src/drivers/qemu/process.ts';
import { parseCmdline, parseProcStat } from '../../../src/drivers/common/proc.ts';
import { StateError } from '../../../src/drivers/common/record.ts';
import { checkIdentity, classifyExit, newRecord, qemuErrorLine, type ObservedProcess, type ProcessRecord } from '../../../src/drivers/qemu/state.ts';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const spec: VmSpec = {
  id: 'pod-1', name: 'default/web', os: 'linux', arch: 'x86_64', cpus: 1, memoryMiB: 512,
  disk: { path: '/vms/a/disk.qcow2', format: 'qcow2' },
  boot: { kind: 'kernel', kernel: '/k', cmdline: 'console=ttyS0' },
  network: { mode: 'user', forwards: [{ protocol: 'tcp', hostPort: 8080, guestPort: 80 }] },
  shares: [{ tag: 'data', hostPath: '/srv', readOnly: true }],
};

test('vm.json round-trips through an atomic write, leaving no temp file', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlet-state-'));
  dirs.push(dir);
  const paths = vmPaths(dir);
  const record = newRecord(spec, paths, new Date('2026-01-02T03:04:05Z'));
  record.state = 'running';
  record.qemu = { pid: 1234, startTime: '884375', bootId: 'b-1', argv: ['qemu-system-x86_64', '-m', '512M'] };
  record.virtiofsd = [{ pid: 1240, startTime: '884380', bootId: 'b-1', argv: ['/usr/lib/qemu/virtiofsd'], tag: 'data', socket: paths.shareSocket('data') }];
  record.intent = { kind: 'stop', message: 'stopped by vmlet' };
  record.lastShutdown = { guest: true, reason: 'guest-shutdown' };
  record.exit = { reason: 'Stopped', message: 'stopped by vmlet', exitCode: 0, signal: null, at: '2026-01-02T03:05:00.000Z' };
  await writeRecord(paths.state, record);
  assert.deepEqual(await readRecord(paths.state), record);
  assert.deepEqual(await readdir(dir), ['vm.json']);
  assert.equal(await readRecord(join(dir, 'none.json')), undefined);
});

test('a vm.json that is not a record is refused naming the field', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlet-state-'));
  dirs.push(dir);
  const file = join(dir, 'vm.json');
  await writeFile(file, '{"version": 1, "dri');
  await assert.rejects(readRecord(file), (e: Error) => e instanceof StateError && /is not JSON/.test(e.message));
  const good = newRecord(spec, vmPaths(dir), new Date());
  await writeFile(file, JSON.stringify({ ...good, spec: { ...good.spec, cpus: 'two' } }));
  await assert.rejects(readRecord(file), /spec\.cpus/);
  await writeFile(file, JSON.stringify({ ...good, driver: 'vz' }));
  await assert.rejects(readRecord(file), /driver/);
  assert.throws(() => newRecord({ ...spec, arch: 'riscv64' as 'x86_64' }, vmPaths(dir), new Date()));
});

test('/proc/<pid>/stat is read after the last parenthesis, so odd process names do not shift fields', () => {
  const line = '4242 (qemu (x) vm) S 1 4242 4242 0 -1 4194560 1 0 0 0 1500 250 0 0 20 0 3 0 884375 3133440 383 18446744073709551615 1 1 0';
  assert.deepEqual(parseProcStat(line), { pid: 4242, comm: 'qemu (x) vm', state: 'S', ppid: 1, utime: 1500, stime: 250, startTime: '884375' });
  assert.throws(() => parseProcStat('garbage'), StateError);
  assert.deepEqual(parseCmdline(Buffer.from(['qemu', '-m', '512M', ''].join('\u0000'))), ['qemu', '-m', '512M']);
});

test('a reused pid is never adopted: other start time, other boot or other command line means gone', () => {
  const rec: ProcessRecord = { pid: 4242, startTime: '884375', bootId: 'boot-1', argv: ['qemu-system-x86_64', '-name', 'a'] };
  const seen = (over: Partial<ObservedProcess['stat']> = {}, argv = rec.argv, bootId = 'boot-1'): ObservedProcess => ({
    stat: { pid: 4242, comm: 'vmlet-vm', state: 'S', ppid: 1, utime: 1, stime: 1, startTime: '884375', ...over }, argv, bootId,
  });
  assert.deepEqual(checkIdentity(rec, seen()), { alive: true });
  assert.match(assertGone(checkIdentity(rec, seen({ startTime: '990000' }))), /now belongs to another process/);
  assert.match(assertGone(checkIdentity(rec, seen({}, ['bash']))), /now runs another command \(bash\)/);
  assert.match(assertGone(checkIdentity(rec, seen({}, rec.argv, 'boot-2'))), /host rebooted/);
  assert.match(assertGone(checkIdentity(rec, seen({ state: 'Z' }))), /has exited/);
  assert.match(assertGone(checkIdentity(rec, undefined)), /is gone/);
  // A kernel thread or a process whose cmdline cannot be read shows no argv: start time decides.
  assert.deepEqual(checkIdentity(rec, seen({}, [])), { alive: true });
});

test('this very process, observed through /proc, is itself and not a record with its pid from earlier', async () => {
  const me = await observeProcess(process.pid);
  assert.ok(me);
  const rec: ProcessRecord = { pid: process.pid, startTime: me.stat.startTime, bootId: me.bootId, argv: me.argv };
  assert.deepEqual(checkIdentity(rec, me), { alive: true });
  const earlier = { ...rec, startTime: String(Number(me.stat.startTime) - 1) };
  assert.equal(checkIdentity(earlier, await observeProcess(process.pid)).alive, false);
  assert.equal(await observeProcess(2 ** 22 + 1), undefined);
});

test('exits are classified from the SHUTDOWN event, what vmlet asked for and how the process ended', () => {
  const guestOff = { guest: true, reason: 'guest-shutdown' };
  const r = (f: Parameters<typeof classifyExit>[0]): string => { const e = classifyExit(f); return `${e.reason}: ${e.message}`; };
  assert.equal(r({ shutdown: guestOff, child: { code: 0, signal: null }, duringStart: false }), 'GuestShutdown: the guest powered off');
  assert.equal(r({ shutdown: { guest: true, reason: 'guest-reset' }, duringStart: false }), 'GuestShutdown: the guest rebooted (a reboot ends the VM: QEMU runs with -no-reboot)');
  assert.equal(r({ shutdown: { guest: true, reason: 'guest-panic' }, duringStart: false }), 'Crashed: the guest kernel panicked');
  const stop = { kind: 'stop' as const, message: 'stopped by vmlet with the ACPI power button' };
  assert.equal(r({ intent: stop, shutdown: guestOff, duringStart: false }), `Stopped: ${stop.message}`);
  assert.equal(r({ intent: stop, child: { code: null, signal: 'SIGKILL' }, duringStart: false }), 'Crashed: QEMU was killed by SIGKILL');
  const kill = { kind: 'kill' as const, message: 'did not shut down within 4.0 s of a stop request; killed' };
  assert.equal(r({ intent: kill, child: { code: null, signal: 'SIGKILL' }, duringStart: false }), `Killed: ${kill.message}`);
  assert.equal(r({ child: { code: null, signal: 'SIGKILL' }, duringStart: false }), 'Crashed: QEMU was killed by SIGKILL');
  assert.equal(r({ duringStart: false }), 'Crashed: QEMU exited unexpectedly (killed?)');
  assert.equal(r({ shutdown: { guest: false, reason: 'host-signal' }, duringStart: false }), 'Crashed: QEMU shut down on a signal from outside vmlet');
  assert.equal(r({ child: { code: 1, signal: null }, qemuError: 'qemu-system-x86_64: oops', duringStart: false }), 'Crashed: QEMU exited with code 1: qemu-system-x86_64: oops');
  assert.equal(r({ child: { code: 1, signal: null }, qemuError: "qemu: could not open kernel file '/k'", duringStart: true }), "BootFailed: qemu: could not open kernel file '/k'");
  assert.equal(r({ intent: kill, child: { code: null, signal: 'SIGKILL' }, duringStart: true }), 'BootFailed: QEMU was killed by SIGKILL while starting');
  assert.deepEqual(classifyExit({ child: { code: null, signal: 'SIGKILL' }, duringStart: false }).signal, 'SIGKILL');
});

test('QEMU\'s error line is the last one it printed, warnings aside', async () => {
  const log = [
    'qemu-system-x86_64: warning: host doesn\'t support requested feature: CPUID.01H:ECX.pni [bit 0]',
    'qemu-system-x86_64: -drive if=none,file=/x: Could not open \'/x\': No such file or directory\r',
    'something else',
  ].join('\n');
  assert.equal(qemuErrorLine(log), "qemu-system-x86_64: -drive if=none,file=/x: Could not open '/x': No such file or directory");
  assert.equal(qemuErrorLine("qemu: could not open kernel file '/k': No such file or directory\n"), "qemu: could not open kernel file '/k': No such file or directory");
  assert.equal(qemuErrorLine('qemu-system-x86_64: warning: only this\n'), undefined);
});

function assertGone(id: ReturnType<typeof checkIdentity>): string {
  assert.equal(id.alive, false);
  return id.alive ? '' : id.why;
}
