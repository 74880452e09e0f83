// Turns a ProcessSpec (argv or shell line, env, cwd, user) into what spawn() needs, checking what can be
// checked up front so a bad spec fails with a clear one-line reason instead of spawn's bare ENOENT.
// The file checks are synchronous on purpose: each is a few microseconds on a real CPU, while an async
// one is a round trip through libuv's thread pool, which under TCG costs milliseconds (an exec of
// `true` spent ~20 ms in them).
import { accessSync, constants, statSync } from 'node:fs';
import { AgentError } from '../protocol/errors.ts';
import { SIGNALS, type ExitInfo, type ProcessSpec } from '../protocol/messages.ts';
import { resolveUser } from './users.ts';

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface PreparedProcess {
  /** The executable, resolved through PATH. */
  file: string;
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  uid: number;
  gid: number;
}

export async function prepareProcess(spec: ProcessSpec, extraEnv: Record<string, string> = {}): Promise<PreparedProcess> {
  let argv: string[];
  if (spec.shell !== undefined && spec.argv !== undefined) throw new AgentError('InvalidArgument', 'give either argv or shell, not both');
  if (spec.shell !== undefined) argv = ['/bin/sh', '-c', String(spec.shell)];
  else if (Array.isArray(spec.argv) && spec.argv.length > 0 && spec.argv.every((a) => typeof a === 'string')) argv = spec.argv;
  else throw new AgentError('InvalidArgument', 'argv must be a non-empty list of strings (or give a shell line)');

  const user = await resolveUser(spec.user ?? '0');
  const env: Record<string, string> = {
    PATH: DEFAULT_PATH,
    HOME: user.home,
    ...(user.name ? { USER: user.name, LOGNAME: user.name } : {}),
    ...extraEnv,
    ...(spec.env ?? {}),
  };
  const cwd = spec.cwd ?? '/';
  const dir = statSync(cwd, { throwIfNoEntry: false });
  if (!dir?.isDirectory()) throw new AgentError('StartFailed', `working directory ${cwd} does not exist or is not a directory`);
  const file = findExecutable(argv[0]!, env.PATH ?? DEFAULT_PATH, cwd);
  return { file, argv, env, cwd, uid: user.uid, gid: user.gid };
}

function findExecutable(name: string, path: string, cwd: string): string {
  if (name.includes('/')) {
    const full = name.startsWith('/') ? name : `${cwd}/${name}`;
    const s = statSync(full, { throwIfNoEntry: false });
    if (!s) throw new AgentError('StartFailed', `exec ${name}: no such file or directory`);
    if (!s.isFile() || !isExecutable(full)) throw new AgentError('StartFailed', `exec ${name}: permission denied`);
    return full;
  }
  for (const dir of path.split(':')) {
    const full = `${dir || '.'}/${name}`;
    const s = statSync(full, { throwIfNoEntry: false });
    if (s?.isFile() && isExecutable(full)) return full;
  }
  throw new AgentError('StartFailed', `exec ${name}: executable file not found in $PATH`);
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** A signal given by name ("SIGTERM", "TERM") or number, as the name Node's kill() takes. */
export function signalName(signal: string | number): NodeJS.Signals {
  if (typeof signal === 'number' || /^\d+$/.test(signal)) {
    const n = Number(signal);
    const name = Object.keys(SIGNALS).find((k) => SIGNALS[k] === n);
    if (!name) throw new AgentError('InvalidArgument', `unknown signal ${signal}`);
    return name as NodeJS.Signals;
  }
  const name = signal.toUpperCase().startsWith('SIG') ? signal.toUpperCase() : `SIG${signal.toUpperCase()}`;
  if (!(name in SIGNALS)) throw new AgentError('InvalidArgument', `unknown signal ${signal}`);
  return name as NodeJS.Signals;
}

/** Node's (code, signal) of an exit as the protocol's ExitInfo: 128 + n for a signal. */
export function exitInfo(code: number | null, signal: NodeJS.Signals | null): ExitInfo {
  if (signal) return { exitCode: 128 + (SIGNALS[signal] ?? 0), signal };
  return { exitCode: code ?? 0, signal: null };
}

/** Waits for spawn() to succeed or fail; a failure becomes a StartFailed AgentError. */
export function spawned(child: import('node:child_process').ChildProcess, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    child.once('spawn', () => resolve());
    child.once('error', (err: NodeJS.ErrnoException) => reject(new AgentError('StartFailed', `cannot start ${what}: ${err.code ?? err.message}`)));
  });
}
