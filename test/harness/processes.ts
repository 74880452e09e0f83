// Long-running child processes for test fixtures: spawn tracked, wait for readiness, stop, and a
// process-exit safety net that kills whatever is still tracked and removes tracked fixture dirs.
// Also freePort() and log tails.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, rmSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface TrackedProcess {
  readonly name: string;
  readonly pid: number;
  readonly logFile: string;
  readonly child: ChildProcess;
  /** Resolves once the process has exited (never rejects). */
  readonly exited: Promise<ExitStatus>;
  /** Set as soon as the process has exited. */
  exitStatus: ExitStatus | undefined;
}

export interface SpawnOptions {
  /** Where stdout and stderr go; appended to, so a restarted process keeps one log. */
  logFile: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

// Every child still running; the safety net below kills these when this process goes away.
const tracked = new Set<TrackedProcess>();
// Fixture dirs not yet removed; the safety net removes these too (etcd alone preallocates 64 MB).
const trackedDirs = new Set<string>();

/** VMLET_KEEP_TEST_DIRS=1 keeps fixture dirs (logs, audit log, certs, data) for a post-mortem. */
export function keepTestDirs(): boolean {
  return process.env.VMLET_KEEP_TEST_DIRS === '1';
}

/** A fresh dir under os.tmpdir(), removed by removeFixtureDir() or, failing that, when this process exits. */
export async function createFixtureDir(prefix: string): Promise<string> {
  installSafetyNet();
  const dir = await mkdtemp(join(tmpdir(), prefix));
  trackedDirs.add(dir);
  return dir;
}

/** Removes a dir made by createFixtureDir, unless VMLET_KEEP_TEST_DIRS=1. */
export async function removeFixtureDir(dir: string): Promise<void> {
  trackedDirs.delete(dir);
  if (!keepTestDirs()) await rm(dir, { recursive: true, force: true });
}

/** Starts a long-running child whose output goes straight to logFile, and tracks it until it exits. */
export function spawnTracked(name: string, command: string, args: string[], opts: SpawnOptions): TrackedProcess {
  installSafetyNet();
  // The child writes its log through its own file descriptor, so logging does not depend on this
  // process's event loop and a dying test process cannot kill the child with SIGPIPE.
  const fd = openSync(opts.logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(command, args, { stdio: ['ignore', fd, fd], env: opts.env ?? process.env, cwd: opts.cwd });
  } finally {
    closeSync(fd);
  }
  const pid = child.pid;
  if (pid === undefined) {
    // spawn() reports ENOENT and friends asynchronously; without a pid there is nothing to track.
    child.on('error', () => {});
    throw new Error(`${name}: could not start ${command} (missing or not executable?)`);
  }
  let resolveExit!: (s: ExitStatus) => void;
  const exited = new Promise<ExitStatus>((resolve) => (resolveExit = resolve));
  const proc: TrackedProcess = { name, pid, logFile: opts.logFile, child, exited, exitStatus: undefined };
  child.on('error', () => {}); // Exit is reported through 'exit'; an unhandled 'error' would crash the test.
  child.on('exit', (code, signal) => {
    proc.exitStatus = { code, signal };
    tracked.delete(proc);
    resolveExit(proc.exitStatus);
  });
  tracked.add(proc);
  return proc;
}

/** SIGTERM, then SIGKILL if the process has not exited within graceMs. Safe to call twice. */
export async function stopProcess(proc: TrackedProcess, graceMs = 5000): Promise<void> {
  if (proc.exitStatus) return;
  signal(proc.pid, 'SIGTERM');
  // A cleared timer, not a bare sleep(): a pending one would keep the test process alive for graceMs.
  const kill = setTimeout(() => signal(proc.pid, 'SIGKILL'), graceMs);
  try {
    await proc.exited;
  } finally {
    clearTimeout(kill);
  }
}

export interface WaitOptions {
  timeoutMs: number;
  intervalMs?: number;
  /** Fail fast, with its exit status and log tail, if this process dies while we wait. */
  process?: TrackedProcess;
}

/**
 * Polls probe until it returns something other than undefined. Probe errors count as "not yet"; the
 * last one is quoted in the timeout error with the process's log tail, which is what explains a hang.
 */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, opts: WaitOptions): Promise<T> {
  const deadline = Date.now() + opts.timeoutMs;
  let lastError: unknown;
  for (;;) {
    if (opts.process?.exitStatus) {
      const { code, signal: sig } = opts.process.exitStatus;
      throw new Error(
        `${opts.process.name} exited (code ${code}, signal ${sig}) while waiting for ${what}\n` +
          (await logTail(opts.process.logFile)),
      );
    }
    try {
      const value = await probe();
      if (value !== undefined) return value;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const why = lastError instanceof Error ? `: last error: ${lastError.message}` : '';
      const tail = opts.process ? `\n${await logTail(opts.process.logFile)}` : '';
      throw new Error(`timed out after ${opts.timeoutMs} ms waiting for ${what}${why}${tail}`);
    }
    await sleep(opts.intervalMs ?? 250);
  }
}

/** The last lines of a log file, framed for an error message. */
export async function logTail(file: string, lines = 40): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return `(no log at ${file})`;
  }
  const tail = text.trimEnd().split('\n').slice(-lines).join('\n');
  return `--- last ${lines} lines of ${file} ---\n${tail}\n---`;
}

/**
 * A TCP port that was free on 127.0.0.1 a moment ago. The OS picks it (listen on port 0) and we close
 * the socket at once; the caller should hand it to its child right away to keep the race small.
 */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('freePort: no TCP address');
  return address.port;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // Already gone (ESRCH): nothing to stop.
  }
}

let safetyNetInstalled = false;

/**
 * Kills every still-tracked child when this process ends, however it ends short of SIGKILL: a test
 * that crashes or is interrupted must not leave etcd or an apiserver holding ports and temp dirs.
 * 'exit' handlers cannot wait, so this is synchronous: SIGKILL, then rmSync.
 */
function installSafetyNet(): void {
  if (safetyNetInstalled) return;
  safetyNetInstalled = true;
  const killAll = (): void => {
    for (const proc of tracked) signal(proc.pid, 'SIGKILL');
    tracked.clear();
    for (const dir of keepTestDirs() ? [] : trackedDirs) {
      try {
        rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
      } catch {
        // Best effort: a process on its way out must not fail over a temp dir.
      }
    }
    trackedDirs.clear();
  };
  process.on('exit', killAll);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    // Listening for a signal replaces Node's default of exiting, so exit ourselves, with the code a
    // shell would report for death by that signal.
    process.once(sig, () => {
      killAll();
      process.exit(128 + (sig === 'SIGINT' ? 2 : 15));
    });
  }
}
