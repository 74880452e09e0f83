// A QMP client on QEMU's unix socket: connects (retrying while QEMU has not created the socket yet),
// negotiates capabilities, runs commands one reply at a time by id, and emits events. The framing is
// qmp-protocol.ts. The socket closes when QEMU exits: 'close' is how a VM that is not our child is seen
// going away.
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { encodeQmpCommand, QmpDecoder, type QmpEvent, type QmpMessage } from './qmp-protocol.ts';
import { connectUnix } from '../../host/unix-socket.ts';

export class QmpError extends Error {
  override name = 'QmpError';
  constructor(
    readonly command: string,
    readonly errorClass: string,
    desc: string,
  ) {
    super(`QMP ${command}: ${desc}`);
  }
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export interface QmpClientEvents {
  event: [QmpEvent];
  close: [];
}

export class QmpClient extends EventEmitter<QmpClientEvents> {
  private readonly decoder = new QmpDecoder();
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;
  private greeted: ((ok: boolean) => void) | undefined;
  version = '';

  private constructor(private readonly socket: Socket) {
    super();
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => {}); // reported as 'close'
    socket.on('close', () => this.onClose());
  }

  /**
   * Connects to path and negotiates. Retries ENOENT/ECONNREFUSED until timeoutMs; `gaveUp` ends the wait
   * early with its reason (e.g. "QEMU exited").
   */
  static async connect(path: string, timeoutMs: number, gaveUp: () => string | undefined = () => undefined): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let socket: Socket;
      try {
        socket = await connectUnix(path);
      } catch (err) {
        const reason = gaveUp();
        if (reason) throw new Error(`cannot connect to QMP at ${path}: ${reason}`);
        if (Date.now() >= deadline) throw new Error(`cannot connect to QMP at ${path} within ${timeoutMs} ms: ${(err as Error).message}`);
        await sleep(25);
        continue;
      }
      const client = new QmpClient(socket);
      const greeted = await new Promise<boolean>((resolve) => {
        client.greeted = resolve;
        setTimeout(() => resolve(false), Math.max(1000, deadline - Date.now())).unref();
      });
      if (!greeted) {
        client.close();
        throw new Error(`QMP at ${path} sent no greeting (is another client connected?)`);
      }
      await client.execute('qmp_capabilities');
      return client;
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Runs a command; resolves with its return value, rejects with QmpError or when QEMU goes away. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`QMP ${command}: the connection to QEMU is closed`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`QMP ${command}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket.write(encodeQmpCommand(command, args, id));
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    let messages: QmpMessage[];
    try {
      messages = this.decoder.push(chunk);
    } catch {
      this.socket.destroy(); // not QMP: nothing more can be trusted on this connection
      return;
    }
    for (const msg of messages) {
      switch (msg.kind) {
        case 'greeting':
          this.version = msg.version;
          this.greeted?.(true);
          this.greeted = undefined;
          break;
        case 'event':
          this.emit('event', msg);
          break;
        case 'return':
        case 'error': {
          const p = typeof msg.id === 'number' ? this.pending.get(msg.id) : undefined;
          if (!p) break;
          this.pending.delete(msg.id as number);
          clearTimeout(p.timer);
          if (msg.kind === 'return') p.resolve(msg.value);
          else p.reject(new QmpError(p.command, msg.errorClass, msg.desc));
          break;
        }
      }
    }
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.greeted?.(false);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error(`QMP ${p.command}: QEMU closed the connection`));
    }
    this.pending.clear();
    this.emit('close');
  }
}

