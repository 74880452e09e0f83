// The process side of a QEMU VM, as thin I/O: start QEMU or virtiofsd detached (../common/spawn.ts) and
// record who it is, read who a pid is from /proc, and signal a recorded process only while it is itself.
// What the readings mean is decided in state.ts.
import { execFile, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { parseCmdline, parseProcStat } from '../common/proc.ts';
import { signalIfAlive, spawnDetachedChild } from '../common/spawn.ts';
import { checkIdentity, type ObservedProcess, type ProcessRecord } from './state.ts';

const run = promisify(execFile);

export interface Spawned {
  child: ChildProcess;
  record: ProcessRecord;
}

/** Starts argv detached with its output appended to logFile (spawnDetachedChild), and records who it is. */
export async function spawnDetached(argv: string[], logFile: string): Promise<Spawned> {
  const child = await spawnDetachedChild(argv, logFile);
  const pid = child.pid;
  const observed = await observeProcess(pid);
  // The child may already be gone (bad arguments); it is still ours to wait for, so record what we can.
  const record: ProcessRecord = {
    pid,
    startTime: observed?.stat.startTime ?? '0',
    bootId: await bootId(),
    argv,
  };
  return { child, record };
}

let cachedBootId: string | undefined;
export async function bootId(): Promise<string> {
  cachedBootId ??= (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => 'unknown')).trim();
  return cachedBootId;
}

/** What /proc says about pid now; undefined when there is no such process. */
export async function observeProcess(pid: number): Promise<ObservedProcess | undefined> {
  try {
    const [stat, cmdline] = await Promise.all([
      readFile(`/proc/${pid}/stat`, 'utf8'),
      readFile(`/proc/${pid}/cmdline`).catch(() => Buffer.alloc(0)),
    ]);
    return { stat: parseProcStat(stat), argv: parseCmdline(cmdline), bootId: await bootId() };
  } catch {
    return undefined;
  }
}

/** Is the process recorded still the one running under its pid? */
export async function isAlive(rec: ProcessRecord): Promise<boolean> {
  return checkIdentity(rec, await observeProcess(rec.pid)).alive;
}

/** Sends sig to the recorded process, only if it is still that process (a reused pid is never signalled). */
export async function signalRecorded(rec: ProcessRecord, sig: NodeJS.Signals): Promise<boolean> {
  return signalIfAlive(rec.pid, () => isAlive(rec), sig);
}

let clockTicks: number | undefined;
/** Clock ticks per second, for /proc/<pid>/stat times (getconf CLK_TCK; 100 on every Linux we know). */
export async function ticksPerSecond(): Promise<number> {
  if (clockTicks === undefined) {
    const { stdout } = await run('getconf', ['CLK_TCK'], { timeout: 5000 }).catch(() => ({ stdout: '100' }));
    clockTicks = Number(stdout.trim()) || 100;
  }
  return clockTicks;
}

/** CPU seconds and resident bytes of a live process, from /proc. */
export async function processUsage(pid: number): Promise<{ cpuSeconds: number; rssBytes: number }> {
  const [stat, status] = await Promise.all([readFile(`/proc/${pid}/stat`, 'utf8'), readFile(`/proc/${pid}/status`, 'utf8')]);
  const s = parseProcStat(stat);
  const rssKiB = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? 0);
  return { cpuSeconds: (s.utime + s.stime) / (await ticksPerSecond()), rssBytes: rssKiB * 1024 };
}
