// AgentClient: the host side of the agent protocol over any Duplex (QEMU's unix socket for the
// virtio-serial port, a unix socket, a TLS connection). Requests are promises; exec, attach, logs and
// port connections are Node streams with the protocol's credit-based flow control behind them, so a
// consumer that stops reading stops the process's output (or the guest socket) rather than filling
// memory on either side.
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Duplex, Readable, Writable } from 'node:stream';
import { AgentError } from '../protocol/errors.ts';
import {
  encodeFrame, encodeHeader, encodeHello, encodeJson, encodeWindow, FrameParser, FrameType, MAX_PAYLOAD, type Frame,
} from '../protocol/frames.ts';
import {
  Channel, INITIAL_WINDOW, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, type AgentEvent, type AgentHello, type AgentInfo,
  type AgentStats, type AttachExit, type ExitInfo, type LogOptions, type MainStatus, type OpName, type Ops, type ProcessSpec,
  type Response,
} from '../protocol/messages.ts';

export { AgentError } from '../protocol/errors.ts';
export type { AgentErrorReason, AgentInfo, AgentStats, AttachExit, ExitInfo, MainStatus } from '../protocol/messages.ts';

export interface ConnectOptions {
  /** The whole handshake, default 10 s. */
  timeoutMs?: number;
  /** Named in the agent's log. */
  clientName?: string;
  /**
   * Without an answer after this long, send the HELLO again behind a flush of zeros as long as the
   * largest frame: on a channel that may hold the rest of a previous host's frame (virtio-serial), that
   * frame then ends inside the zeros. Default 1 s.
   */
  retryMs?: number;
}

export interface ExecOptions extends ProcessSpec {
  /** Keep stdin open (a Writable); else the process gets /dev/null. */
  stdin?: boolean;
  /** A pseudo-terminal of this size; then stderr is merged into stdout. */
  tty?: { rows: number; cols: number; term?: string };
}

export interface MainStartOptions extends ProcessSpec {
  id: string;
  log?: LogOptions;
  /** Keep the process's stdin open for attachMain({ stdin: true }) (else /dev/null). Needs capability `main.stdin`. */
  stdin?: boolean;
  /** With stdin: its stdin closes when the first attach with stdin ends or detaches (Kubernetes' stdinOnce). */
  stdinOnce?: boolean;
}

export interface LogsOptions {
  /** Keep streaming new lines until the run ends (not with `previous`). */
  follow?: boolean;
  tailLines?: number;
  sinceTime?: Date | string;
  timestamps?: boolean;
  /** The log of the run before the last restart; NotFound when there was none. Capability `logs.previous`. */
  previous?: boolean;
  /** End after this many bytes (cut at the byte), following or not. Capability `logs.limit-bytes`. */
  limitBytes?: number;
  /** Only the lines the process wrote to this stream. Capability `logs.stream`. */
  stream?: 'stdout' | 'stderr';
}

export interface AttachOptions {
  /** Pass a Writable's bytes to the process's stdin (it must have been started with stdin to get them). */
  stdin?: boolean;
}

export interface PortConnectOptions {
  /** The guest loopback address: "127.0.0.1" (default) or "::1". */
  host?: '127.0.0.1' | '::1';
  /** Default 60 s (the agent itself gives up on a connect after 20 s). */
  timeoutMs?: number;
}

export interface RequestOptions {
  /** Default 60 s; 0 for none. */
  timeoutMs?: number;
}

export type MainExitEvent = Extract<AgentEvent, { event: 'main-exit' }>;

/** One exec'd process: its streams, signals, resize and exit. */
export interface ExecProcess {
  pid: number;
  /** Present when started with stdin: true. end() sends EOF (not passed on to a tty). */
  stdin: Writable | null;
  stdout: Readable;
  /** null with a tty. */
  stderr: Readable | null;
  /** Resolves after stdout and stderr have ended; rejects with Disconnected if the agent goes away. */
  exited: Promise<ExitInfo>;
  // Function-valued properties, not methods: they do not use `this`, so passing them on alone is fine.
  signal: (signal: string) => Promise<void>;
  resize: (rows: number, cols: number) => Promise<void>;
  /** Abandons the exec: the agent hangs it up (SIGHUP) and sends nothing more. */
  close: () => void;
}

/**
 * An attach to a main process: the same shape as an exec. `exited` resolves with the process's exit (after
 * stdout and stderr ended) and rejects when close() detaches first; signal() and resize() reject with
 * NotSupported (a main process has no tty).
 */
export interface AttachedProcess extends Omit<ExecProcess, 'exited'> {
  exited: Promise<AttachExit>;
  /** False when stdin was asked for but does not reach the process (started without stdin, or stdinOnce closed it); writes are then discarded. */
  stdinAttached: boolean;
}

interface Pending {
  resolve(value: unknown): void;
  reject(err: AgentError): void;
  timer: NodeJS.Timeout | undefined;
  op: string;
}

/** An incoming data channel of a stream, as the client feeds it. */
interface Inbound {
  receive(data: Buffer): void;
  /** EOF came (or the host abandoned the stream). */
  eof(): void;
  readonly eofSeen: boolean;
  destroy(err?: Error): void;
}

/** An outgoing (stdin) data channel: told of the agent's credit. */
interface Outbound {
  grant(bytes: number): void;
  destroy(err?: Error): void;
}

interface StreamState {
  kind: 'exec' | 'attach' | 'logs' | 'port';
  out: Map<number, Inbound>;
  stdin?: Outbound;
  exit?: { resolve(e: AttachExit): void; reject(e: Error): void };
  /** A port connection: the agent's port-closed. */
  closed?(error: string | undefined): void;
}

/**
 * Emits 'main-exit' (MainExitEvent) when a main process exits, and 'close' (AgentError | undefined) once
 * the connection is gone.
 */
export class AgentClient extends EventEmitter {
  private readonly pending = new Map<number, Pending>();
  private readonly streams = new Map<number, StreamState>();
  private nextId = 1;
  private closedWith: AgentError | undefined;
  private parser: FrameParser;

  /** The agent's HELLO: its version, capabilities, uptime and boot id. */
  hello!: AgentHello;
  private handshake: ((frame: Frame) => void) | undefined;

  private constructor(private readonly link: Duplex) {
    super();
    // The parser starts out scanning: whatever a previous session left on the channel is skipped up to
    // the agent's MAGIC + HELLO.
    this.parser = new FrameParser({
      frame: (f) => (this.handshake ? this.handshake(f) : this.onFrame(f)),
      error: (err) => this.shutdownLink(new AgentError('ProtocolError', `the agent sent bytes that are not frames: ${err.message}`)),
    });
  }

  /** Says HELLO on `link` and waits for the agent's; the client owns the link from then on. */
  static async connect(link: Duplex, opts: ConnectOptions = {}): Promise<AgentClient> {
    const client = new AgentClient(link);
    await client.greet(opts);
    return client;
  }

  private async greet(opts: ConnectOptions): Promise<void> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const hello = {
      magic: 'vmlet', role: 'host', minVersion: MIN_PROTOCOL_VERSION, maxVersion: PROTOCOL_VERSION,
      client: opts.clientName ?? `vmlet pid ${process.pid}`, nonce: randomBytes(8).toString('hex'),
    };
    const link = this.link;
    link.on('data', (chunk: Buffer) => this.parser.push(chunk));
    link.on('error', (err) => this.shutdownLink(new AgentError('Disconnected', `agent channel: ${err.message}`)));
    link.on('close', () => this.shutdownLink(new AgentError('Disconnected', 'the agent channel closed')));
    let timer: NodeJS.Timeout | undefined;
    let retry: NodeJS.Timeout | undefined;
    try {
      this.hello = await new Promise<AgentHello>((resolve, reject) => {
        this.handshake = (f) => {
          if (f.type !== FrameType.Hello) return;
          try {
            const h = JSON.parse(f.payload.toString('utf8')) as AgentHello;
            if (h.magic === 'vmlet' && h.role === 'agent') resolve(h);
          } catch { /* not a hello we understand: keep waiting */ }
        };
        this.once('close', (err?: AgentError) => reject(err ?? new AgentError('Disconnected', 'closed during the handshake')));
        timer = setTimeout(() => reject(new AgentError('Timeout', `the agent did not answer HELLO within ${timeoutMs} ms`)), timeoutMs);
        let flushed = false;
        retry = setInterval(() => {
          // Once is enough to end any stale frame; more zeros would only slow a booting agent down.
          if (!flushed) this.send(Buffer.alloc(MAX_PAYLOAD + 32));
          flushed = true;
          this.send(encodeHello(hello));
        }, opts.retryMs ?? 1000);
        this.send(encodeHello(hello));
      });
    } catch (err) {
      this.shutdownLink(err as AgentError);
      throw err;
    } finally {
      clearTimeout(timer);
      clearInterval(retry);
      this.handshake = undefined;
    }
    if (this.hello.error || this.hello.version === undefined) {
      const err = AgentError.fromBody(this.hello.error ?? { reason: 'VersionMismatch', message: 'the agent chose no protocol version' });
      this.shutdownLink(err);
      throw err;
    }
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  ping(opts?: RequestOptions): Promise<Ops['ping']['res']> {
    return this.request('ping', {}, opts);
  }

  info(opts?: RequestOptions): Promise<AgentInfo> {
    return this.request('info', {}, opts);
  }

  stats(opts?: RequestOptions): Promise<AgentStats> {
    return this.request('stats', {}, opts);
  }

  async exec(opts: ExecOptions): Promise<ExecProcess> {
    const stream = this.nextId++;
    const state: StreamState = { kind: 'exec', out: new Map() };
    const stdout = new InStream(this, stream, Channel.Stdout);
    state.out.set(Channel.Stdout, stdout);
    const stderr = opts.tty ? null : new InStream(this, stream, Channel.Stderr);
    if (stderr) state.out.set(Channel.Stderr, stderr);
    const stdin = opts.stdin ? new OutStream(this, stream) : null;
    if (stdin) state.stdin = stdin;
    const exited = new Promise<ExitInfo>((resolve, reject) => (state.exit = { resolve, reject }));
    exited.catch(() => {}); // a caller that never looks at the exit must not crash the process
    this.streams.set(stream, state);
    const { argv, shell, env, cwd, user, tty } = opts;
    let started: { pid: number };
    try {
      started = await this.request('exec', { stream, stdin: stdin !== null, argv, shell, env, cwd, user, tty });
    } catch (err) {
      this.streams.delete(stream);
      throw err;
    }
    return {
      pid: started.pid,
      stdin, stdout, stderr, exited,
      signal: async (signal) => void (await this.request('exec.signal', { stream, signal })),
      resize: async (rows, cols) => void (await this.request('exec.resize', { stream, rows, cols })),
      close: () => this.resetStream(stream),
    };
  }

  /** Runs a command to the end and collects its output (for small outputs: all of it is kept in memory). */
  async run(opts: Omit<ExecOptions, 'stdin' | 'tty'> & { input?: string | Buffer }): Promise<ExitInfo & { stdout: string; stderr: string }> {
    const { input, ...rest } = opts;
    const p = await this.exec({ ...rest, stdin: input !== undefined });
    if (p.stdin) p.stdin.end(input);
    const [stdout, stderr, exit] = await Promise.all([collect(p.stdout), collect(p.stderr!), p.exited]);
    return { ...exit, stdout: stdout.toString('utf8'), stderr: stderr.toString('utf8') };
  }

  async startMain(opts: MainStartOptions): Promise<MainStatus> {
    if (opts.stdin) this.need('main.stdin', 'start a main process with stdin');
    return this.request('main.start', opts);
  }

  /**
   * Attaches to a running main process (`kubectl attach`): its output from now on, raw, on stdout and
   * stderr, and with `stdin` a Writable to its stdin. Several attaches may run at once; one that reads
   * too slowly loses output (counted in `droppedBytes` of the exit) rather than holding the process up.
   */
  async attachMain(id: string, opts: AttachOptions = {}): Promise<AttachedProcess> {
    this.need('attach', 'attach to main processes');
    const stream = this.nextId++;
    const state: StreamState = { kind: 'attach', out: new Map() };
    const stdout = new InStream(this, stream, Channel.Stdout);
    const stderr = new InStream(this, stream, Channel.Stderr);
    state.out.set(Channel.Stdout, stdout).set(Channel.Stderr, stderr);
    const stdin = opts.stdin ? new OutStream(this, stream) : null;
    if (stdin) state.stdin = stdin;
    const exited = new Promise<AttachExit>((resolve, reject) => (state.exit = { resolve, reject }));
    exited.catch(() => {});
    this.streams.set(stream, state);
    let attached: Ops['main.attach']['res'];
    try {
      attached = await this.request('main.attach', { id, stream, stdin: stdin !== null });
    } catch (err) {
      this.streams.delete(stream);
      throw err;
    }
    const notSupported = (what: string) => () => Promise.reject(new AgentError('NotSupported', `${what} is not supported for an attach to a main process`));
    return {
      pid: attached.pid,
      stdin, stdout, stderr, exited,
      stdinAttached: attached.stdin,
      signal: notSupported('a signal'),
      resize: notSupported('resize (there is no tty)'),
      close: () => this.resetStream(stream),
    };
  }

  /**
   * A TCP connection to `port` on the guest's loopback (`kubectl port-forward`), once it is connected; a
   * refused one rejects with ConnectFailed ("connect ECONNREFUSED 127.0.0.1:8080"). Writing sends, end()
   * half-closes (the guest socket gets a FIN), the readable side ends when the guest server ends its side,
   * and destroy() resets the connection. A connection that breaks in the guest destroys the stream with a
   * ConnectFailed error.
   */
  async connectPort(port: number, opts: PortConnectOptions = {}): Promise<Duplex> {
    this.need('port-connect', 'connect to ports in the guest');
    const stream = this.nextId++;
    const host = opts.host ?? '127.0.0.1';
    const duplex = new PortStream(this, stream, host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);
    this.streams.set(stream, { kind: 'port', out: new Map([[Channel.Stdout, duplex]]), stdin: duplex, closed: (e) => duplex.agentClosed(e) });
    try {
      await this.request('port.connect', { stream, port, ...(opts.host ? { host: opts.host } : {}) }, opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {});
    } catch (err) {
      this.streams.delete(stream);
      throw err;
    }
    return duplex;
  }

  /** SIGTERM (or `signal`), SIGKILL after graceMs (default 10 s); resolves with the exited status. */
  stopMain(id: string, opts: { signal?: string; graceMs?: number } = {}): Promise<MainStatus> {
    return this.request('main.stop', { id, ...opts }, { timeoutMs: (opts.graceMs ?? 10_000) + 30_000 });
  }

  restartMain(id: string, opts: { graceMs?: number } = {}): Promise<MainStatus> {
    return this.request('main.restart', { id, ...opts }, { timeoutMs: (opts.graceMs ?? 10_000) + 30_000 });
  }

  mainStatus(id: string): Promise<MainStatus> {
    return this.request('main.status', { id });
  }

  listMains(): Promise<MainStatus[]> {
    return this.request('main.list', {});
  }

  removeMain(id: string): Promise<void> {
    return this.request('main.remove', { id }).then(() => undefined);
  }

  /** A main process's log as `kubectl logs` shows it. Destroying the stream stops a follow. */
  async logs(id: string, opts: LogsOptions = {}): Promise<Readable> {
    // An older agent would ignore these fields and send the wrong log, or all of it.
    if (opts.previous) this.need('logs.previous', 'return the log of a previous run');
    if (opts.limitBytes !== undefined) this.need('logs.limit-bytes', 'limit a log by bytes');
    if (opts.stream !== undefined) this.need('logs.stream', 'return one output stream of a log');
    const stream = this.nextId++;
    const out = new InStream(this, stream, Channel.Stdout);
    this.streams.set(stream, { kind: 'logs', out: new Map([[Channel.Stdout, out]]) });
    out.once('close', () => {
      if (!out.readableEnded) this.resetStream(stream);
    });
    const sinceTime = opts.sinceTime instanceof Date ? opts.sinceTime.toISOString() : opts.sinceTime;
    try {
      await this.request('logs', {
        id, stream, follow: opts.follow, tailLines: opts.tailLines, sinceTime, timestamps: opts.timestamps,
        ...(opts.previous ? { previous: true } : {}),
        ...(opts.limitBytes !== undefined ? { limitBytes: opts.limitBytes } : {}),
        ...(opts.stream !== undefined ? { outputStream: opts.stream } : {}),
      });
    } catch (err) {
      this.streams.delete(stream);
      throw err;
    }
    return out;
  }

  mount(opts: { tag: string; mountPath: string; readOnly?: boolean; fsType?: 'virtiofs'; subPath?: string }): Promise<void> {
    if (opts.subPath !== undefined) this.need('mount.subpath', 'mount a subPath of a volume');
    return this.request('mount', opts).then(() => undefined);
  }

  setHostname(hostname: string): Promise<void> {
    return this.request('set-hostname', { hostname }).then(() => undefined);
  }

  /**
   * Stops the main processes (SIGTERM, SIGKILL after graceMs), syncs and powers the guest off. Resolves
   * when the agent has stopped everything and is about to power off; the client is closed then.
   */
  shutdown(opts: { graceMs?: number } = {}): Promise<void> {
    // Then the connection is closed: that also releases the agent's blocked read of the virtio port.
    return this.request('shutdown', opts, { timeoutMs: (opts.graceMs ?? 10_000) + 60_000 }).then(() => this.close());
  }

  /** Closes the connection; the agent keeps running (main processes too) and waits for a new host. */
  close(): void {
    this.shutdownLink(new AgentError('Disconnected', 'the client closed the connection'));
  }

  // ----- internals -----

  /** @internal */
  send(buf: Buffer): boolean {
    if (this.closedWith) return false;
    return this.link.write(buf);
  }

  /** @internal */
  resetStream(stream: number): void {
    const state = this.streams.get(stream);
    if (!state) return;
    this.streams.delete(stream);
    this.send(encodeFrame(FrameType.Reset, stream));
    for (const s of state.out.values()) s.eof();
    state.exit?.reject(new AgentError('Disconnected', `the ${state.kind} was closed by the host`));
  }

  /** What an older agent lacks is NotSupported here, rather than its InvalidArgument or a silently ignored field. */
  private need(capability: string, what: string): void {
    if (!this.hello.capabilities.includes(capability)) {
      throw new AgentError('NotSupported', `the agent (vmlet-agent ${this.hello.agentVersion}) cannot ${what}: it lacks the capability "${capability}"`);
    }
  }

  request<O extends OpName>(op: O, args: Ops[O]['req'], opts: RequestOptions = {}): Promise<Ops[O]['res']> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const id = this.nextId++;
    const timeoutMs = opts.timeoutMs ?? 60_000;
    return new Promise((resolve, reject) => {
      const timer = timeoutMs > 0
        ? setTimeout(() => {
          this.pending.delete(id);
          reject(new AgentError('Timeout', `agent request ${op} got no answer within ${timeoutMs} ms`));
        }, timeoutMs)
        : undefined;
      this.pending.set(id, { resolve: resolve, reject, timer, op });
      this.send(encodeJson(FrameType.Request, id, { op, ...args }));
    });
  }

  private shutdownLink(err: AgentError): void {
    if (this.closedWith) return;
    this.closedWith = err;
    this.link.destroy();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new AgentError(err.reason, `agent request ${p.op}: ${err.message}`));
    }
    this.pending.clear();
    for (const state of this.streams.values()) {
      // Only what was cut short is an error; an ended stream may still hold data nobody has read yet.
      for (const s of state.out.values()) if (!s.eofSeen) s.destroy(err);
      state.stdin?.destroy(err);
      state.exit?.reject(err);
    }
    this.streams.clear();
    this.emit('close', err.message === 'the client closed the connection' ? undefined : err);
  }

  private onFrame(frame: Frame): void {
    switch (frame.type) {
      case FrameType.Response: {
        const p = this.pending.get(frame.stream);
        if (!p) return;
        this.pending.delete(frame.stream);
        clearTimeout(p.timer);
        let response: Response;
        try {
          response = JSON.parse(frame.payload.toString('utf8')) as Response;
        } catch {
          p.reject(new AgentError('ProtocolError', `the answer to ${p.op} is not JSON`));
          return;
        }
        if (response.ok) p.resolve(response.result);
        else p.reject(AgentError.fromBody(response.error));
        break;
      }
      case FrameType.Data:
        this.streams.get(frame.stream)?.out.get(frame.flags)?.receive(frame.payload);
        break;
      case FrameType.Eof: {
        const state = this.streams.get(frame.stream);
        const s = state?.out.get(frame.flags);
        if (!state || !s) break;
        s.eof();
        // A logs stream has no exit to wait for: EOF is its end.
        if (state.kind === 'logs') this.streams.delete(frame.stream);
        break;
      }
      case FrameType.Window:
        if (frame.flags === Channel.Stdin && frame.payload.length === 4) {
          this.streams.get(frame.stream)?.stdin?.grant(frame.payload.readUInt32BE(0));
        }
        break;
      case FrameType.Hello:
        break; // the agent answering a repeated HELLO of the handshake again
      case FrameType.Event: {
        let event: AgentEvent;
        try {
          event = JSON.parse(frame.payload.toString('utf8')) as AgentEvent;
        } catch {
          return;
        }
        if (event.event === 'exec-exit' || event.event === 'attach-exit') {
          const state = this.streams.get(frame.stream);
          this.streams.delete(frame.stream);
          const { event: _, ...exit } = event;
          state?.exit?.resolve(exit);
        } else if (event.event === 'port-closed') {
          const state = this.streams.get(frame.stream);
          this.streams.delete(frame.stream);
          state?.closed?.(event.error);
        } else if (event.event === 'main-exit') this.emit('main-exit', event);
        break;
      }
      default:
        break;
    }
  }
}

/** An output channel of a stream (stdout, stderr, logs): grants credit as the consumer reads. */
class InStream extends Readable implements Inbound {
  private readonly credit: CreditReturn;

  constructor(client: AgentClient, stream: number, channel: number) {
    super({ highWaterMark: 256 * 1024 });
    this.credit = new CreditReturn(client, stream, channel);
  }

  eofSeen = false;

  eof(): void {
    if (this.eofSeen) return;
    this.eofSeen = true;
    if (!this.destroyed) this.push(null);
  }

  receive(data: Buffer): void {
    if (this.destroyed || this.eofSeen) return;
    this.credit.received(data.length, this.push(data));
  }

  override _read(): void {
    this.credit.read();
  }
}

/** The stdin of an exec or attach: DATA within the agent's credit, EOF on end(). */
class OutStream extends Writable implements Outbound {
  private readonly sender: CreditSender;

  constructor(client: AgentClient, stream: number) {
    super({ highWaterMark: 64 * 1024 });
    this.sender = new CreditSender(client, stream);
  }

  grant(bytes: number): void {
    this.sender.grant(bytes);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    this.sender.write(chunk, done);
  }

  override _final(done: (err?: Error | null) => void): void {
    this.sender.eof();
    done();
  }
}

/** A port.connect stream: writes go out on stdin, stdout comes in, each with its credit. */
class PortStream extends Duplex implements Inbound, Outbound {
  private readonly sender: CreditSender;
  private readonly credit: CreditReturn;
  /** The agent said port-closed: the stream is over there, nothing to reset. */
  private over = false;
  eofSeen = false;

  constructor(private readonly client: AgentClient, private readonly stream: number, private readonly where: string) {
    super({ readableHighWaterMark: 256 * 1024, writableHighWaterMark: 64 * 1024, allowHalfOpen: true });
    this.sender = new CreditSender(client, stream);
    this.credit = new CreditReturn(client, stream, Channel.Stdout);
  }

  receive(data: Buffer): void {
    if (this.destroyed || this.eofSeen) return;
    this.credit.received(data.length, this.push(data));
  }

  eof(): void {
    if (this.eofSeen) return;
    this.eofSeen = true;
    if (!this.destroyed) this.push(null);
  }

  grant(bytes: number): void {
    this.sender.grant(bytes);
  }

  agentClosed(error: string | undefined): void {
    this.over = true;
    this.sender.close();
    if (error !== undefined) this.destroy(new AgentError('ConnectFailed', `the connection to ${this.where} in the guest broke: ${error}`));
  }

  override _read(): void {
    this.credit.read();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    this.sender.write(chunk, done);
  }

  override _final(done: (err?: Error | null) => void): void {
    this.sender.eof();
    done();
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    // Both directions ended cleanly: the agent closes the socket itself and says port-closed; a reset now
    // could cut off bytes the guest socket still has to write. Otherwise the connection is abandoned.
    const clean = !err && this.eofSeen && this.writableFinished;
    if (!this.over && !clean) this.client.resetStream(this.stream);
    done(err);
  }
}

/** The receiving side's credit: handed back to the agent as the consumer takes data (batched). */
class CreditReturn {
  private owed = 0;

  constructor(private readonly client: AgentClient, private readonly stream: number, private readonly channel: number) {}

  /** `bytes` arrived; `wantMore` is what push() said (false: the consumer is behind, hold the credit). */
  received(bytes: number, wantMore: boolean): void {
    this.owed += bytes;
    if (wantMore && this.owed >= INITIAL_WINDOW / 4) this.grant();
  }

  /** The consumer wants more. */
  read(): void {
    if (this.owed > 0) this.grant();
  }

  private grant(): void {
    this.client.send(encodeWindow(this.stream, this.channel, this.owed));
    this.owed = 0;
  }
}

/** The sending side of a stdin channel: DATA frames within the agent's credit. */
class CreditSender {
  private credit = INITIAL_WINDOW;
  private waiting: (() => void) | undefined;
  private closed = false;

  constructor(private readonly client: AgentClient, private readonly stream: number) {}

  grant(bytes: number): void {
    this.credit += bytes;
    this.wake();
  }

  /** The stream is over at the agent: what is still written is dropped. */
  close(): void {
    this.closed = true;
    this.wake();
  }

  write(chunk: Buffer, done: (err?: Error | null) => void): void {
    const sendSome = (at: number): void => {
      while (at < chunk.length && !this.closed) {
        if (this.credit <= 0) {
          this.waiting = () => sendSome(at);
          return;
        }
        const n = Math.min(chunk.length - at, this.credit, MAX_PAYLOAD);
        this.client.send(Buffer.concat([encodeHeader(FrameType.Data, this.stream, n, Channel.Stdin), chunk.subarray(at, at + n)]));
        this.credit -= n;
        at += n;
      }
      done();
    };
    sendSome(0);
  }

  eof(): void {
    if (!this.closed) this.client.send(encodeFrame(FrameType.Eof, this.stream, undefined, Channel.Stdin));
  }

  private wake(): void {
    const w = this.waiting;
    this.waiting = undefined;
    w?.();
  }
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
