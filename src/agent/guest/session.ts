// One host connection as the agent sees it: frames in (FrameParser), frames out, requests dispatched to the
// Agent, and the credit-based flow control of the data channels. A session begins with the host's HELLO
// and ends when the transport closes, the bytes stop making sense, or another host says HELLO; processes
// do not belong to it except execs, which are hung up when it ends.
import type { Duplex, Readable, Writable } from 'node:stream';
import { AgentError, errorBody } from '../protocol/errors.ts';
import {
  encodeFrame, encodeHello, encodeJson, encodeWindow, FrameParser, FrameType, MAX_PAYLOAD, type Frame,
} from '../protocol/frames.ts';
import {
  Channel, INITIAL_WINDOW, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, type AgentEvent, type AgentHello, type HostHello,
} from '../protocol/messages.ts';

export interface SessionHost {
  /**
   * Builds the agent's HELLO answer (version, capabilities, uptime). Synchronous on purpose: the session
   * must be active again before the parser hands over the next frame, which may be a request.
   */
  hello(version: number | undefined, error?: AgentError): AgentHello;
  /** Runs one request; what it returns is the result, what it throws the error. */
  handle(session: Session, op: string, args: Record<string, unknown>): Promise<unknown>;
  /** A session said HELLO and became the current one. */
  attached(session: Session): void;
  /** A session ended (its hooks have run). */
  detached(session: Session): void;
  log(msg: string): void;
}

/** What a stream registers to receive the host's frames on it. */
export interface StreamHooks {
  stdin?: Writable;
  /** The host sent RESET, or the session ended: stop, release, do not send. */
  reset?: () => void;
}

export class Session {
  private readonly parser: FrameParser;
  private active = false;
  private nonce: string | undefined;
  private closed = false;
  private readonly streams = new Map<number, StreamHooks>();
  private readonly outs = new Map<string, OutChannel>();
  private readonly stdinCredit = new Map<number, number>();

  constructor(private readonly link: Duplex, private readonly host: SessionHost, readonly name: string) {
    this.parser = new FrameParser({
      frame: (f) => this.onFrame(f),
      error: (err) => {
        host.log(`${name}: ${err.message}; waiting for a new HELLO`);
        this.endStreams();
        this.active = false;
      },
    });
    link.on('data', (chunk: Buffer) => this.parser.push(chunk));
    link.on('error', (err) => host.log(`${name}: ${err.message}`));
    link.on('close', () => this.close());
    link.on('end', () => this.close());
  }

  get attached(): boolean {
    return this.active && !this.closed;
  }

  send(buf: Buffer): void {
    if (!this.closed && !this.link.destroyed) this.link.write(buf);
  }

  sendEvent(stream: number, event: AgentEvent): void {
    if (this.attached) this.send(encodeJson(FrameType.Event, stream, event));
  }

  /** Resolves once everything sent so far has been handed to the transport. */
  flush(): Promise<void> {
    if (this.closed || this.link.destroyed) return Promise.resolve();
    return new Promise((resolve) => this.link.write(Buffer.alloc(0), () => resolve()));
  }

  /** A stream registered (an exec, attach, log or connection not over yet). */
  inUse(stream: number): boolean {
    return this.streams.has(stream);
  }

  register(stream: number, hooks: StreamHooks): void {
    if (this.streams.has(stream)) throw new AgentError('InvalidArgument', `stream ${stream} is in use`);
    this.streams.set(stream, hooks);
    if (hooks.stdin) this.stdinCredit.set(stream, 0);
  }

  unregister(stream: number): void {
    this.streams.delete(stream);
    this.stdinCredit.delete(stream);
  }

  /**
   * Sends `source` as DATA on (stream, channel) within the host's credit, pausing it when the credit is
   * used up, then EOF. Resolves when EOF is sent, or when the session ends (the rest is discarded).
   */
  pipeOut(stream: number, channel: number, source: Readable): Promise<void> {
    const out = new OutChannel(this, stream, channel, source);
    this.outs.set(`${stream}:${channel}`, out);
    return out.done.finally(() => this.outs.delete(`${stream}:${channel}`));
  }

  /** Ends the session: execs' hooks are reset, the transport closed. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.endStreams();
    this.link.destroy();
    this.host.detached(this);
  }

  private endStreams(): void {
    for (const out of this.outs.values()) out.abandon();
    this.outs.clear();
    const hooks = [...this.streams.values()];
    this.streams.clear();
    this.stdinCredit.clear();
    for (const h of hooks) h.reset?.();
  }

  private onFrame(frame: Frame): void {
    if (frame.type === FrameType.Hello) {
      this.onHello(frame.payload);
      return;
    }
    if (!this.active) return;
    switch (frame.type) {
      case FrameType.Request:
        void this.onRequest(frame.stream, frame.payload);
        break;
      case FrameType.Data: {
        const stdin = this.streams.get(frame.stream)?.stdin;
        if (frame.flags !== Channel.Stdin || !stdin || stdin.writableEnded) return;
        const length = frame.payload.length;
        stdin.write(frame.payload, () => this.creditStdin(frame.stream, length, stdin));
        break;
      }
      case FrameType.Eof: {
        const stdin = this.streams.get(frame.stream)?.stdin;
        if (frame.flags === Channel.Stdin && stdin && !stdin.writableEnded) stdin.end();
        break;
      }
      case FrameType.Window:
        if (frame.payload.length === 4) this.outs.get(`${frame.stream}:${frame.flags}`)?.grant(frame.payload.readUInt32BE(0));
        break;
      case FrameType.Reset: {
        const hooks = this.streams.get(frame.stream);
        this.unregister(frame.stream);
        for (const ch of [Channel.Stdout, Channel.Stderr]) this.outs.get(`${frame.stream}:${ch}`)?.abandon();
        hooks?.reset?.();
        break;
      }
      default:
        break; // RESPONSE/EVENT from a host: not ours to answer
    }
  }

  /** Grants the host more stdin credit once the process has taken what it sent (batched). */
  private creditStdin(stream: number, length: number, stdin: Writable): void {
    const owed = this.stdinCredit.get(stream);
    if (owed === undefined) return;
    const total = owed + length;
    if (total >= INITIAL_WINDOW / 4 || stdin.writableLength === 0) {
      this.stdinCredit.set(stream, 0);
      this.send(encodeWindow(stream, Channel.Stdin, total));
    } else this.stdinCredit.set(stream, total);
  }

  private onHello(payload: Buffer): void {
    let hello: Partial<HostHello>;
    try {
      hello = JSON.parse(payload.toString('utf8')) as Partial<HostHello>;
    } catch {
      this.host.log(`${this.name}: a HELLO that is not JSON; ignored`);
      return;
    }
    if (hello.magic !== 'vmlet' || hello.role !== 'host') return;
    // The same host repeating its HELLO (a handshake retry) while the session runs: it has our answer.
    if (this.active && hello.nonce !== undefined && hello.nonce === this.nonce) return;
    this.nonce = hello.nonce;
    // A HELLO while a session runs on this link: the host started over (e.g. vmlet restarted).
    this.endStreams();
    const min = Number(hello.minVersion);
    const max = Number(hello.maxVersion);
    const version = Math.min(max, PROTOCOL_VERSION);
    if (!(version >= Math.max(min, MIN_PROTOCOL_VERSION))) {
      const err = new AgentError('VersionMismatch',
        `the host speaks protocol versions ${min}..${max}, this agent ${MIN_PROTOCOL_VERSION}..${PROTOCOL_VERSION}`);
      this.send(encodeHello(this.host.hello(undefined, err)));
      this.active = false;
      return;
    }
    this.send(encodeHello(this.host.hello(version)));
    this.active = true;
    this.host.log(`${this.name}: host attached (${hello.client ?? 'unnamed client'}, protocol ${version})`);
    this.host.attached(this);
  }

  private async onRequest(id: number, payload: Buffer): Promise<void> {
    let response: unknown;
    try {
      const message = JSON.parse(payload.toString('utf8')) as { op?: unknown } & Record<string, unknown>;
      if (typeof message.op !== 'string') throw new AgentError('InvalidArgument', 'a request needs an "op"');
      response = { ok: true, result: (await this.host.handle(this, message.op, message)) ?? {} };
    } catch (err) {
      if (err instanceof SyntaxError) response = { ok: false, error: { reason: 'ProtocolError', message: `request is not JSON: ${err.message}` } };
      else response = { ok: false, error: errorBody(err) };
    }
    if (this.attached) this.send(encodeJson(FrameType.Response, id, response));
  }
}

/** One outgoing data channel: DATA within credit, then EOF. */
class OutChannel {
  readonly done: Promise<void>;
  private credit = INITIAL_WINDOW;
  private pending: Buffer | undefined;
  private ended = false;
  private finished = false;
  private resolve!: () => void;

  constructor(private readonly session: Session, private readonly stream: number, private readonly channel: number, private readonly source: Readable) {
    this.done = new Promise((r) => (this.resolve = r));
    source.on('data', (chunk: Buffer) => {
      if (this.pending) this.pending = Buffer.concat([this.pending, chunk]);
      else this.send(chunk);
    });
    source.on('end', () => {
      this.ended = true;
      this.maybeFinish();
    });
    source.on('error', () => {
      this.ended = true;
      this.maybeFinish();
    });
    // Destroyed without an end or an error (a socket the agent closed): nothing more will come.
    source.on('close', () => {
      this.ended = true;
      this.maybeFinish();
    });
  }

  grant(bytes: number): void {
    if (this.finished) return;
    this.credit += bytes;
    const held = this.pending;
    this.pending = undefined;
    if (held) this.send(held);
    if (!this.pending) {
      this.source.resume();
      this.maybeFinish();
    }
  }

  /** The session is gone: keep the source flowing into nothing, so the process is not blocked on it. */
  abandon(): void {
    if (this.finished) return;
    this.finished = true;
    this.pending = undefined;
    this.source.removeAllListeners('data');
    this.source.resume();
    this.resolve();
  }

  private send(chunk: Buffer): void {
    if (this.finished) return;
    let at = 0;
    while (at < chunk.length && this.credit > 0) {
      const n = Math.min(chunk.length - at, this.credit, MAX_PAYLOAD);
      this.session.send(encodeFrame(FrameType.Data, this.stream, chunk.subarray(at, at + n), this.channel));
      this.credit -= n;
      at += n;
    }
    if (at < chunk.length) {
      this.pending = chunk.subarray(at);
      this.source.pause();
    }
  }

  private maybeFinish(): void {
    if (!this.ended || this.pending || this.finished) return;
    this.finished = true;
    this.session.send(encodeFrame(FrameType.Eof, this.stream, undefined, this.channel));
    this.resolve();
  }
}
