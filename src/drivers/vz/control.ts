// A session with a vz helper over its control socket: the hello, requests matched to responses by id,
// events pushed to listeners, and 'close' when the helper goes (or the socket breaks). The framing and
// message shapes are protocol.ts's.
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { connectUnix } from '../../host/unix-socket.ts';
import { encodeRequest, LineDecoder, parseHelperLine, type Hello, type HelperError, type HelperEvent, type Request } from './protocol.ts';

export class HelperRequestError extends Error {
  override name = 'HelperRequestError';
  constructor(readonly error: HelperError) {
    super(error.message);
  }
}

interface Pending {
  resolve: (result: Record<string, unknown>) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export interface VzControlEvents {
  event: [HelperEvent];
  close: [];
}

export class VzControl extends EventEmitter<VzControlEvents> {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closed = false;

  private constructor(
    private readonly socket: Socket,
    readonly hello: Hello,
    decoder: LineDecoder,
    rest: string[],
  ) {
    super();
    for (const line of rest) this.onLine(line);
    socket.on('data', (chunk: Buffer) => {
      let lines: string[];
      try {
        lines = decoder.push(chunk);
      } catch {
        socket.destroy();
        return;
      }
      for (const line of lines) this.onLine(line);
    });
    socket.on('error', () => {});
    socket.on('close', () => this.onClose());
  }

  /**
   * Connects to the control socket, retrying while it does not exist yet or refuses (the helper is
   * starting), until timeoutMs; `gaveUp` ends the wait early with its reason (e.g. the helper exited).
   */
  static async connect(path: string, timeoutMs: number, gaveUp?: () => string | undefined): Promise<VzControl> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const why = gaveUp?.();
      if (why) throw new Error(why);
      let socket: Socket;
      try {
        socket = await connectUnix(path);
      } catch (err) {
        if (Date.now() >= deadline) throw new Error(`the vz helper's control socket ${path} did not answer within ${timeoutMs} ms: ${(err as Error).message}`);
        await sleep(25);
        continue;
      }
      return VzControl.handshake(socket, Math.max(1000, deadline - Date.now()));
    }
  }

  private static handshake(socket: Socket, timeoutMs: number): Promise<VzControl> {
    const decoder = new LineDecoder();
    return new Promise<VzControl>((resolve, reject) => {
      const fail = (err: Error): void => {
        cleanup();
        socket.destroy();
        reject(err);
      };
      const timer = setTimeout(() => fail(new Error(`no hello from the vz helper within ${timeoutMs} ms`)), timeoutMs);
      const onData = (chunk: Buffer): void => {
        try {
          const lines = decoder.push(chunk);
          if (lines.length === 0) return;
          const first = parseHelperLine(lines[0]!);
          if (first.kind !== 'hello') throw new Error(`the vz helper spoke before its hello: ${lines[0]}`);
          cleanup();
          resolve(new VzControl(socket, first.hello, decoder, lines.slice(1)));
        } catch (err) {
          fail(err as Error);
        }
      };
      const onClose = (): void => fail(new Error('the vz helper closed the control connection before its hello'));
      const cleanup = (): void => {
        clearTimeout(timer);
        socket.off('data', onData);
        socket.off('close', onClose);
      };
      socket.on('data', onData);
      socket.on('close', onClose);
      socket.on('error', () => {});
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Sends a request; resolves with its result, rejects with HelperRequestError (the helper's error) or a timeout. */
  request(req: Request, timeoutMs = 30_000): Promise<Record<string, unknown>> {
    if (this.closed) return Promise.reject(new Error('the vz helper connection is closed'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`the vz helper did not answer ${req.op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.socket.write(encodeRequest(id, req));
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private onLine(line: string): void {
    let msg;
    try {
      msg = parseHelperLine(line);
    } catch {
      return; // a line this vmlet does not understand is skipped, not fatal
    }
    if (msg.kind === 'response') {
      const res = msg.response;
      const p = this.pending.get(res.id);
      if (!p) return;
      this.pending.delete(res.id);
      clearTimeout(p.timer);
      if (res.ok) p.resolve(res.result ?? {});
      else p.reject(new HelperRequestError(res.error ?? { name: 'HelperError', message: 'the helper refused without saying why' }));
    } else if (msg.kind === 'event') {
      this.emit('event', msg.event);
    }
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new Error('the vz helper closed the control connection'));
    }
    this.pending.clear();
    this.emit('close');
  }
}
