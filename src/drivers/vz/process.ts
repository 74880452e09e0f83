// The helper process as thin, portable I/O: a detached spawn (its own session, so the VM outlives
// vmlet), who a pid is (start time: /proc on Linux, where the tests run the fake helper; `ps` on macOS),
// signals only to the process recorded, and its CPU and memory.
import { execFile, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { parseProcStat } from '../common/proc.ts';
import { signalIfAlive, spawnDetachedChild } from '../common/spawn.ts';
import type { VzProcess } from './state.ts';

const run = promisify(execFile);

/** Starts argv detached (../common/spawn.ts), stdin from /dev/null, stdout and stderr appended to logFile. */
export async function spawnHelper(argv: string[], logFile: string, env?: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; record: VzProcess }> {
  const child = await spawnDetachedChild(argv, logFile, { ...(env ? { env } : {}), what: 'the vz helper ' });
  return { child, record: { pid: child.pid, startTime: (await startTimeOf(child.pid)) ?? '0', argv } };
}

/** An opaque start time of pid (undefined: no such process). Two readings differ iff the pid was reused. */
export async function startTimeOf(pid: number): Promise<string | undefined> {
  if (process.platform === 'linux') {
    try {
      const stat = parseProcStat(await readFile(`/proc/${pid}/stat`, 'utf8'));
      return stat.state === 'Z' || stat.state === 'X' ? undefined : stat.startTime;
    } catch {
      return undefined;
    }
  }
  try {
    const { stdout } = await run('ps', ['-o', 'lstart=,stat=', '-p', String(pid)], { timeout: 5000 });
    const line = stdout.trim();
    if (!line || /\sZ\S*$/.test(line)) return undefined;
    return line.replace(/\s+\S+$/, '');
  } catch {
    return undefined; // ps exits 1 when there is no such process
  }
}

/** Is the recorded helper still the process running under its pid? A record without a start time never is. */
export async function helperAlive(rec: VzProcess): Promise<boolean> {
  if (rec.startTime === '0') {
    try {
      process.kill(rec.pid, 0);
      return (await startTimeOf(rec.pid)) !== undefined;
    } catch {
      return false;
    }
  }
  return (await startTimeOf(rec.pid)) === rec.startTime;
}

/** Signals the recorded helper, only while it is still that process. */
export async function signalHelper(rec: VzProcess, sig: NodeJS.Signals): Promise<boolean> {
  return signalIfAlive(rec.pid, () => helperAlive(rec), sig);
}

/** `ps` cputime ("[[dd-]hh:]mm:ss[.ss]") in seconds. */
export function parsePsTime(text: string): number {
  const [days, rest] = text.includes('-') ? [Number(text.split('-')[0]), text.split('-')[1]!] : [0, text];
  const parts = rest.trim().split(':').map(Number);
  let seconds = 0;
  for (const p of parts) seconds = seconds * 60 + (Number.isFinite(p) ? p : 0);
  return days * 86_400 + seconds;
}

/**
 * CPU seconds and resident bytes of the helper. On macOS the guest itself runs in Virtualization.framework's
 * XPC service (com.apple.Virtualization.VirtualMachine), not in the helper, so this is the helper's share only.
 */
export async function helperUsage(pid: number): Promise<{ cpuSeconds: number; rssBytes: number }> {
  try {
    const { stdout } = await run('ps', ['-o', 'rss=,time=', '-p', String(pid)], { timeout: 5000 });
    const [rss, time] = stdout.trim().split(/\s+/);
    return { cpuSeconds: parsePsTime(time ?? '0'), rssBytes: Number(rss ?? 0) * 1024 };
  } catch {
    return { cpuSeconds: 0, rssBytes: 0 };
  }
}
