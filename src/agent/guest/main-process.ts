// A container's main process in the guest: started from its spec, its stdout/stderr logged in the CRI
// format (cri-log.ts), its exit recorded and reported, restarted on request. When it exits, whatever it
// left behind in its process group is killed, as a container's processes die with its init.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentError } from '../protocol/errors.ts';
import type { ExitInfo, MainStartRequest, MainStatus } from '../protocol/messages.ts';
import { CriLogWriter } from './cri-log.ts';
import { killQuietly } from './exec.ts';
import { exitInfo, prepareProcess, spawned } from './process-spec.ts';

const DEFAULT_LOG_BYTES = 10 * 1024 * 1024;
const DEFAULT_LOG_FILES = 5;

export class MainProcess {
  readonly writer: CriLogWriter;
  private child: ChildProcess | undefined;
  private startedAt = new Date();
  private restarts = 0;
  private exit: (ExitInfo & { finishedAt: string }) | null = null;
  /** Resolves when the current run has exited and its output is all logged. */
  private run: Promise<void> = Promise.resolve();

  constructor(readonly spec: Omit<MainStartRequest, 'op'>, logDir: string, private readonly onExit: (m: MainProcess) => void) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$/.test(spec.id)) {
      throw new AgentError('InvalidArgument', `invalid main process id "${spec.id}": letters, digits, '_', '.', '-'`);
    }
    const maxBytes = spec.log?.maxBytes ?? DEFAULT_LOG_BYTES;
    const maxFiles = spec.log?.maxFiles ?? DEFAULT_LOG_FILES;
    if (!(maxBytes >= 1024) || !(maxFiles >= 1)) throw new AgentError('InvalidArgument', 'log.maxBytes must be at least 1024 and log.maxFiles at least 1');
    this.writer = new CriLogWriter(join(logDir, `${spec.id}.log`), maxBytes, maxFiles);
  }

  get running(): boolean {
    return this.child !== undefined && this.exit === null;
  }

  /** Resolves when the current run is over (exited, output logged). */
  get runEnded(): Promise<void> {
    return this.run;
  }

  async start(): Promise<void> {
    const p = await prepareProcess(this.spec);
    const child = spawn(p.file, p.argv.slice(1), {
      argv0: p.argv[0], cwd: p.cwd, env: p.env, uid: p.uid, gid: p.gid, stdio: ['ignore', 'pipe', 'pipe'], detached: true,
    });
    await spawned(child, p.argv[0]!);
    this.child = child;
    this.exit = null;
    this.startedAt = new Date();
    const ended = (stream: 'stdout' | 'stderr'): Promise<void> => new Promise((resolve) => {
      const s = child[stream];
      s.on('data', (d: Buffer) => this.writer.write(stream, d));
      s.on('close', () => {
        this.writer.flush(stream);
        resolve();
      });
    });
    const outputs = Promise.all([ended('stdout'), ended('stderr')]);
    const exited = new Promise<ExitInfo>((resolve) => child.once('exit', (code, signal) => resolve(exitInfo(code, signal))));
    this.run = exited.then(async (info) => {
      killQuietly(-child.pid!, 'SIGKILL'); // what it left behind dies with it
      // A process that escaped the group could hold the pipes open forever: log for a moment more only.
      await Promise.race([outputs, sleep(2000)]);
      this.exit = { ...info, finishedAt: new Date().toISOString() };
      this.onExit(this);
    });
  }

  /** SIGTERM (or `signal`), then SIGKILL after graceMs; resolves once it has exited. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 10_000): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    killQuietly(child.pid!, signal);
    const timer = setTimeout(() => killQuietly(-child.pid!, 'SIGKILL'), graceMs);
    await this.run;
    clearTimeout(timer);
  }

  async restart(graceMs?: number): Promise<void> {
    await this.stop('SIGTERM', graceMs);
    this.restarts++;
    await this.start();
  }

  status(): MainStatus {
    return {
      id: this.spec.id,
      state: this.running ? 'running' : 'exited',
      pid: this.running ? this.child!.pid! : null,
      startedAt: this.startedAt.toISOString(),
      restarts: this.restarts,
      exit: this.exit,
      logPath: this.writer.path,
    };
  }
}
