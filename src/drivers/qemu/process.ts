// The process side of a VM, as thin I/O: start a program detached in its own session with its output
// appended to a log (so it outlives vmlet), read who a pid is from /proc, and watch a process that is not
// our child until it is gone. What the readings mean is decided in state.ts.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { checkIdentity, parseCmdline, parseProcStat, type ObservedProcess, type ProcessRecord } from './state.ts';

const run = promisify(execFile);

export interface Spawned {
  child: ChildProcess;
  record: ProcessRecord;
}

/**
 * Starts argv[0] detached (setsid: its own session and process group, so a signal to vmlet's group or
 * vmlet's exit does not reach it), stdin from /dev/null, stdout and stderr appended to logFile. The
 * child stays referenced (it keeps vmlet's event loop alive, so an awaited exit is seen) until the
 * caller lets go of it with child.unref() (Vm.detach()).
 */
export async function spawnDetached(argv: string[], logFile: string): Promise<Spawned> {
  const [command, ...args] = argv;
  if (!command) throw new Error('spawnDetached: empty argv');
  const fd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(command, args, { detached: true, stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd);
  }
  if (child.pid === undefined) {
    const err = await new Promise<Error>((resolve) => child.once('error', resolve));
    throw new Error(`cannot start ${command}: ${err.message}`);
  }
  child.on('error', () => {}); // exits are reported through 'exit'
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
  if (!(await isAlive(rec))) return false;
  try {
    process.kill(rec.pid, sig);
    return true;
  } catch {
    return false;
  }
}

/** Resolves when the recorded process is gone (or a zombie), polling /proc; stop() ends the watch (and its timer). */
export function watchGone(rec: ProcessRecord, intervalMs = 250): { gone: Promise<void>; stop: () => void } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const gone = new Promise<void>((resolve) => {
    const tick = async (): Promise<void> => {
      if (stopped) return;
      if (!(await isAlive(rec))) return resolve();
      timer = setTimeout(() => void tick(), intervalMs);
    };
    void tick();
  });
  return { gone, stop: () => { stopped = true; clearTimeout(timer); } };
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
