// A container's main process in the guest: started from its spec, its stdout/stderr logged in the CRI
// format (cri-log.ts), its exit recorded and reported, restarted on request (the last run's log is kept as
// the previous one). When it exits, whatever it left behind in its process group is killed, as a
// container's processes die with its init. Attachers (main.attach) get its live output as it comes, and
// may write to its stdin when it was started with one.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentError } from '../protocol/errors.ts';
import type { AttachExit, ExitInfo, MainStartRequest, MainStatus } from '../protocol/messages.ts';
import { CriLogWriter, type LogStream } from './cri-log.ts';
import { killQuietly } from './exec.ts';
import { exitInfo, prepareProcess, spawned } from './process-spec.ts';

const DEFAULT_LOG_BYTES = 10 * 1024 * 1024;
const DEFAULT_LOG_FILES = 5;
/**
 * Output an attacher may have waiting in the agent per channel, beyond the flow-control window the host
 * has granted. An attacher that falls further behind loses output (counted in its attach-exit): the
 * process and its log never wait for an attacher.
 */
export const ATTACH_BUFFER_BYTES = 1024 * 1024;

export type MainSpec = Omit<MainStartRequest, 'op'>;

/** Checks what can be checked of a spec before anything is started or any file touched. */
export function checkMainSpec(spec: MainSpec): void {
  if (typeof spec.id !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$/.test(spec.id)) {
    throw new AgentError('InvalidArgument', `invalid main process id "${String(spec.id)}": letters, digits, '_', '.', '-'`);
  }
  const maxBytes = spec.log?.maxBytes ?? DEFAULT_LOG_BYTES;
  const maxFiles = spec.log?.maxFiles ?? DEFAULT_LOG_FILES;
  if (!(maxBytes >= 1024) || !(maxFiles >= 1)) throw new AgentError('InvalidArgument', 'log.maxBytes must be at least 1024 and log.maxFiles at least 1');
  if (spec.tty !== undefined && spec.tty !== null && spec.tty !== false) {
    throw new AgentError('NotSupported', 'a main process cannot have a tty (attach works with pipes: stdin, stdout, stderr)');
  }
}

/** One main.attach: the process's live output, and a way into its stdin. */
export interface Attachment {
  pid: number;
  stdout: Readable;
  stderr: Readable;
  /** Writes go to the process's stdin when `stdinAttached`; else they are discarded. */
  stdin: Writable;
  stdinAttached: boolean;
  /** Resolves when the run has ended, with its exit (the outputs have ended then). */
  ended: Promise<AttachExit>;
  /** The host went away or reset the stream. */
  detach(): void;
}

export class MainProcess {
  readonly writer: CriLogWriter;
  private child: ChildProcess | undefined;
  private startedAt = new Date();
  private restarts = 0;
  private exit: (ExitInfo & { finishedAt: string }) | null = null;
  /** Resolves when the current run has exited and its output is all logged. */
  private run: Promise<void> = Promise.resolve();
  /** The current run's stdin, while it is open (started with stdin, not closed by stdinOnce). */
  private stdinPipe: Writable | undefined;
  /** stdinOnce: an attach with stdin has come in this run; its end closes stdin. */
  private stdinClaimed = false;
  private readonly outputListeners = new Set<(stream: LogStream, chunk: Buffer) => void>();

  constructor(readonly spec: MainSpec, logDir: string, private readonly onExit: (m: MainProcess) => void) {
    checkMainSpec(spec);
    this.writer = new CriLogWriter(join(logDir, `${spec.id}.log`), spec.log?.maxBytes ?? DEFAULT_LOG_BYTES, spec.log?.maxFiles ?? DEFAULT_LOG_FILES);
  }

  get running(): boolean {
    return this.child !== undefined && this.exit === null;
  }

  /** Whether it was ever started (a run whose log is worth keeping as the previous one). */
  get hasRun(): boolean {
    return this.child !== undefined;
  }

  /** Resolves when the current run is over (exited, output logged). */
  get runEnded(): Promise<void> {
    return this.run;
  }

  async start(): Promise<void> {
    const p = await prepareProcess(this.spec);
    const withStdin = this.spec.stdin === true;
    const child = spawn(p.file, p.argv.slice(1), {
      argv0: p.argv[0], cwd: p.cwd, env: p.env, uid: p.uid, gid: p.gid, stdio: [withStdin ? 'pipe' : 'ignore', 'pipe', 'pipe'], detached: true,
    });
    await spawned(child, p.argv[0]!);
    this.child = child;
    this.exit = null;
    this.startedAt = new Date();
    this.stdinClaimed = false;
    this.stdinPipe = child.stdin ?? undefined;
    child.stdin?.on('error', () => {}); // EPIPE when it stops reading: its business
    const ended = (stream: LogStream): Promise<void> => new Promise((resolve) => {
      const s = child[stream]!;
      s.on('data', (d: Buffer) => {
        this.writer.write(stream, d);
        for (const fn of this.outputListeners) fn(stream, d);
      });
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
      child.stdin?.destroy();
      if (this.stdinPipe === child.stdin) this.stdinPipe = undefined;
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

  /** Stops the current run, keeps its log as the previous one, and starts the spec again. */
  async restart(graceMs?: number): Promise<void> {
    await this.stop('SIGTERM', graceMs);
    this.restarts++;
    if (this.hasRun) this.writer.startOver();
    await this.start();
  }

  /**
   * Connects to the running process: its output from now on (raw, as it writes it), and its stdin when
   * `wantStdin` and it has one. Ends when the run ends.
   */
  attach(wantStdin: boolean): Attachment {
    const child = this.child;
    if (!child || !this.running) throw new AgentError('InvalidArgument', `main process "${this.spec.id}" is not running`);
    const outs: Record<LogStream, Readable> = { stdout: new Readable({ read() {} }), stderr: new Readable({ read() {} }) };
    let dropped = 0;
    const listener = (stream: LogStream, chunk: Buffer): void => {
      const out = outs[stream];
      if (out.readableLength + chunk.length > ATTACH_BUFFER_BYTES) dropped += chunk.length;
      else out.push(chunk);
    };
    this.outputListeners.add(listener);

    const pipe = wantStdin ? this.stdinPipe : undefined;
    // stdinOnce: the first attach with stdin owns it; when that one ends, so does the process's stdin.
    const owner = pipe !== undefined && this.spec.stdinOnce === true && !this.stdinClaimed;
    if (owner) this.stdinClaimed = true;
    const release = (): void => {
      if (owner && pipe && this.stdinPipe === pipe) {
        this.stdinPipe = undefined;
        pipe.end();
      }
    };
    const usable = (): boolean => pipe !== undefined && this.stdinPipe === pipe && !pipe.writableEnded && !pipe.destroyed;
    const stdin = new Writable({
      highWaterMark: 64 * 1024,
      // The callback comes when the pipe has taken the bytes: that is when the host gets its credit back.
      write: (chunk: Buffer, _enc, done) => (usable() ? void pipe!.write(chunk, () => done()) : done()),
      final: (done) => {
        release();
        done();
      },
    });

    let attached = true;
    const stop = (): void => {
      attached = false;
      this.outputListeners.delete(listener);
    };
    const ended = this.run.then((): AttachExit => {
      stop();
      outs.stdout.push(null);
      outs.stderr.push(null);
      const exit = this.exit ?? { exitCode: 255, signal: null };
      return { exitCode: exit.exitCode, signal: exit.signal, ...(dropped ? { droppedBytes: dropped } : {}) };
    });
    return {
      pid: child.pid!,
      stdout: outs.stdout,
      stderr: outs.stderr,
      stdin,
      stdinAttached: pipe !== undefined,
      ended,
      detach: () => {
        if (!attached) return;
        stop();
        release();
        outs.stdout.destroy();
        outs.stderr.destroy();
      },
    };
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
