// Exec'd processes in the guest, with pipes (here) or a pseudo-terminal (startTty). Both give the agent
// the same handle: streams, signal, resize, hang-up and the exit.
//
// Why busybox telnetd for terminals: Node can open /dev/ptmx but cannot unlock its slave (that takes an
// ioctl, TIOCSPTLCK, which needs a native module), and the guest has no node-pty, no util-linux `script`
// and no python. busybox's telnetd in inetd mode (-i) allocates a pty, runs a program on it as the session
// leader, and relays it over its stdin/stdout in the telnet encoding, which telnet.ts strips; a window
// size travels as telnet NAWS, which telnetd applies with TIOCSWINSZ (so the program gets SIGWINCH). The
// program is a small generated wrapper: it sets the initial size with stty before anything runs, runs the
// command with fd 3 closed, and writes the command's status to fd 3, a pipe to the agent, because
// telnetd itself does not pass the status on.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { AgentError } from '../protocol/errors.ts';
import { SIGNALS, type ExitInfo } from '../protocol/messages.ts';
import { exitInfo, spawned, type PreparedProcess } from './process-spec.ts';
import { nawsCommand, TelnetDecoder, TelnetEncoder } from './telnet.ts';

export interface ExecHandle {
  pid: number;
  stdin: Writable | undefined;
  stdout: Readable;
  stderr: Readable | undefined;
  signal(signal: NodeJS.Signals): void;
  resize(rows: number, cols: number): void;
  /** The host is gone: SIGHUP to the process group (as a closed terminal or SSH connection would). */
  hangup(): void;
  exited: Promise<ExitInfo>;
}

export async function startPiped(p: PreparedProcess, stdin: boolean): Promise<ExecHandle> {
  const child = spawn(p.file, p.argv.slice(1), {
    argv0: p.argv[0], cwd: p.cwd, env: p.env, uid: p.uid, gid: p.gid,
    stdio: [stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'], detached: true,
  });
  await spawned(child, p.argv[0]!);
  child.stdin?.on('error', () => {}); // EPIPE when the process stops reading: its problem, not ours
  return {
    pid: child.pid!,
    stdin: child.stdin ?? undefined,
    stdout: child.stdout!,
    stderr: child.stderr!,
    signal: (sig) => killQuietly(child.pid!, sig),
    resize: () => {
      throw new AgentError('InvalidArgument', 'resize needs an exec with a tty');
    },
    hangup: () => {
      killQuietly(-child.pid!, 'SIGHUP');
      child.stdin?.destroy();
    },
    exited: exitOf(child),
  };
}

export async function startTty(p: PreparedProcess, size: { rows: number; cols: number }, runDir: string): Promise<ExecHandle> {
  const telnetd = findTelnetd(p.env.PATH ?? '');
  if (!telnetd) {
    throw new AgentError('NotSupported', 'a tty needs busybox (with telnetd) in the guest: the agent allocates terminals through it');
  }
  const dir = join(runDir, 'tty');
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const script = join(dir, `exec-${process.pid}-${++scripts}.sh`);
  const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  await writeFile(script, [
    '#!/bin/sh',
    `stty rows ${Math.floor(size.rows)} cols ${Math.floor(size.cols)} 2>/dev/null`,
    // The wrapper outlives ^C and a hang-up to report the status; trapped (not ignored) signals are
    // reset to their defaults in the command.
    'trap : INT QUIT TERM HUP',
    `cd ${quote(p.cwd)} || exit 126`,
    `${[p.file, ...p.argv.slice(1)].map(quote).join(' ')} 3>&-`,
    'echo $? >&3',
    '',
  ].join('\n'), { mode: 0o755 });
  const [cmd, ...pre] = telnetd;
  const child = spawn(cmd!, [...pre, '-i', '-l', script, '-f', '/dev/null'], {
    cwd: p.cwd, env: p.env, uid: p.uid, gid: p.gid, stdio: ['pipe', 'pipe', 'pipe', 'pipe'], detached: true,
  });
  try {
    await spawned(child, 'telnetd');
  } catch (err) {
    await rm(script, { force: true });
    throw err;
  }
  const decoder = new TelnetDecoder();
  child.stdout.pipe(decoder);
  const encoder = new TelnetEncoder();
  encoder.pipe(child.stdin);
  child.stdin.on('error', () => {});
  child.stderr.resume();
  let status = '';
  (child.stdio[3] as Readable).on('data', (d: Buffer) => (status += d.toString()));
  const exited = exitOf(child).then((telnetdExit): ExitInfo => {
    void rm(script, { force: true });
    const code = /^\d+/.exec(status.trim())?.[0];
    if (code === undefined) return telnetdExit.signal ? telnetdExit : { exitCode: 255, signal: null };
    const n = Number(code);
    // The shell reports a command killed by signal N as 128 + N.
    const signal = n > 128 ? Object.keys(SIGNALS).find((k) => SIGNALS[k] === n - 128) ?? null : null;
    return { exitCode: n, signal };
  });
  const command = async (): Promise<number | undefined> => {
    const wrapper = (await childrenOf(child.pid!))[0];
    return wrapper === undefined ? undefined : (await childrenOf(wrapper))[0] ?? wrapper;
  };
  return {
    pid: child.pid!,
    // telnetd ends the session when its input ends, so the host's EOF is not passed on for a tty.
    stdin: encoder,
    stdout: decoder,
    stderr: undefined,
    signal: (sig) => void command().then((pid) => pid !== undefined && killQuietly(pid, sig)),
    resize: (rows, cols) => void child.stdin.write(nawsCommand(rows, cols)),
    hangup: () => killQuietly(child.pid!, 'SIGTERM'),
    exited,
  };
}
let scripts = 0;

function findTelnetd(path: string): string[] | undefined {
  for (const dir of path.split(':').filter(Boolean)) {
    if (existsSync(join(dir, 'telnetd'))) return [join(dir, 'telnetd')];
  }
  for (const dir of path.split(':').filter(Boolean)) {
    if (existsSync(join(dir, 'busybox'))) return [join(dir, 'busybox'), 'telnetd'];
  }
  return undefined;
}

/** Children of a process, from /proc/<pid>/stat's ppid field. */
async function childrenOf(parent: number): Promise<number[]> {
  const found: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[1]) === parent) found.push(Number(name));
  }
  return found.sort((a, b) => a - b);
}

function exitOf(child: ChildProcess): Promise<ExitInfo> {
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve(exitInfo(code, signal))));
}

export function killQuietly(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false; // gone already
  }
}
