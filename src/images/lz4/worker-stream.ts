// WorkerDecodeStream: the main-thread half of Apple LZ4 decoding on a worker thread (the other half is
// worker-entry.ts). A Duplex: write compressed bytes, read decoded ones. Memory stays bounded across the
// thread boundary (credits both ways, see protocol.ts): about maxInputInFlight + outputWindow + one
// block per stream. worker.ts is the public face; worker-pool.ts shares workers between streams.
import { Duplex } from 'node:stream';
import type { Worker } from 'node:worker_threads';
import { spawnModuleWorker } from '../threads.ts';
import type { DecodeExpectation, DecodedDigest } from './digest.ts';
import { DEFAULT_MAX_BLOCK_SIZE } from './format.ts';
import { fromWire, type FromWorker, type ToWorker } from './protocol.ts';

export interface WorkerDecodeOptions {
  /** Refuse the output unless it has this size / sha256 (Tart's uncompressed-size/-content-digest). */
  expect?: DecodeExpectation;
  maxBlockSize?: number;
  /** Compressed bytes sent to the worker and not yet decoded (default 1 MiB). */
  maxInputInFlight?: number;
  /** Decoded bytes the worker may send ahead of the reader (default 4 MiB). */
  outputWindow?: number;
  /** Hand written buffers to the worker instead of copying them; the caller's buffers are detached. */
  transferInput?: boolean;
  /** Readable side's buffer in bytes (default 1 MiB). */
  readableHighWaterMark?: number;
}

/** A worker lent to one stream; `release(healthy)` gives it back (or ends it if unhealthy). */
export interface Slot {
  worker: Worker;
  release(healthy: boolean): void;
}

let nextId = 1;

/** Starts the decoding thread: the .ts entry through tsx when running from source, else the .js. */
export function spawnDecodeWorker(): Worker {
  return spawnModuleWorker(import.meta.url, 'worker-entry');
}

/**
 * A Duplex: write Apple LZ4 bytes, read decoded bytes; `result` holds sha256 and size once it ends.
 * The worker is borrowed from `slot` when the stream starts and given back when it is over.
 */
export class WorkerDecodeStream extends Duplex {
  private slot: Slot | null = null;
  private readonly id = nextId++;
  private readonly options: Required<Pick<WorkerDecodeOptions, 'maxInputInFlight' | 'outputWindow'>> &
    WorkerDecodeOptions;
  private inFlight = 0;
  private waitingWrite: ((err?: Error | null) => void) | null = null;
  private waitingFinal: ((err?: Error | null) => void) | null = null;
  private owedCredit = 0;
  private over = false;
  private digestResult: DecodedDigest | undefined;
  private readonly onMessage = (msg: FromWorker) => this.receive(msg);
  private readonly onError = (err: Error) => this.destroy(err);
  private readonly onExit = (code: number) =>
    this.destroy(new Error(`apple-lz4: decode worker exited (code ${code}) in the middle of a stream`));

  constructor(
    private readonly acquire: () => Promise<Slot>,
    options: WorkerDecodeOptions = {},
  ) {
    super({ readableHighWaterMark: options.readableHighWaterMark ?? 1024 * 1024, decodeStrings: true });
    this.options = {
      ...options,
      maxInputInFlight: options.maxInputInFlight ?? 1024 * 1024,
      outputWindow: options.outputWindow ?? 4 * 1024 * 1024,
    };
  }

  /** sha256 and size of everything decoded; set once the stream has ended without error. */
  get result(): DecodedDigest | undefined {
    return this.digestResult;
  }

  override _construct(done: (err?: Error | null) => void): void {
    this.acquire().then(
      (slot) => {
        this.slot = slot;
        slot.worker.on('message', this.onMessage);
        slot.worker.on('error', this.onError);
        slot.worker.on('exit', this.onExit);
        this.send({
          type: 'start',
          id: this.id,
          maxBlockSize: this.options.maxBlockSize ?? DEFAULT_MAX_BLOCK_SIZE,
          expect: this.options.expect,
          outputWindow: this.options.outputWindow,
        });
        done();
      },
      (err: Error) => done(err),
    );
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (err?: Error | null) => void): void {
    if (chunk.length === 0) return done();
    const ab = this.options.transferInput && ownsBuffer(chunk) ? (chunk.buffer as ArrayBuffer) : copyOf(chunk);
    this.inFlight += ab.byteLength;
    this.send({ type: 'data', id: this.id, chunk: ab }, [ab]);
    if (this.inFlight < this.options.maxInputInFlight) done();
    else this.waitingWrite = done; // the worker's `consumed` releases it
  }

  override _final(done: (err?: Error | null) => void): void {
    this.waitingFinal = done; // answered by `done` or `error` from the worker
    this.send({ type: 'end', id: this.id });
  }

  override _read(): void {
    if (this.owedCredit > 0) {
      this.send({ type: 'credit', id: this.id, bytes: this.owedCredit });
      this.owedCredit = 0;
    }
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    // A worker that was interrupted mid-stream may still be decoding: end it rather than reuse it.
    this.detach(this.over);
    this.waitingWrite = null;
    this.waitingFinal = null;
    done(err);
  }

  private receive(msg: FromWorker): void {
    if (msg.id !== this.id || this.destroyed) return;
    switch (msg.type) {
      case 'out': {
        let more = true;
        for (const ab of msg.chunks) more = this.push(Buffer.from(ab));
        // Credit now if the reader keeps up, else when it next asks (_read).
        if (more) this.send({ type: 'credit', id: this.id, bytes: msg.bytes });
        else this.owedCredit += msg.bytes;
        return;
      }
      case 'consumed': {
        this.inFlight -= msg.bytes;
        const waiting = this.waitingWrite;
        if (waiting && this.inFlight < this.options.maxInputInFlight) {
          this.waitingWrite = null;
          waiting();
        }
        return;
      }
      case 'done': {
        this.over = true;
        this.digestResult = msg.result;
        this.detach(true);
        this.push(null);
        this.waitingFinal?.();
        this.waitingFinal = null;
        return;
      }
      case 'error': {
        this.over = true;
        this.destroy(fromWire(msg.error));
        return;
      }
    }
  }

  private detach(healthy: boolean): void {
    const slot = this.slot;
    if (!slot) return;
    this.slot = null;
    slot.worker.off('message', this.onMessage);
    slot.worker.off('error', this.onError);
    slot.worker.off('exit', this.onExit);
    slot.release(healthy);
  }

  private send(msg: ToWorker, transfer?: ArrayBuffer[]): void {
    this.slot?.worker.postMessage(msg, transfer);
  }
}

function ownsBuffer(chunk: Buffer): boolean {
  return chunk.buffer instanceof ArrayBuffer && chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength;
}

function copyOf(chunk: Uint8Array): ArrayBuffer {
  const ab = new ArrayBuffer(chunk.byteLength);
  new Uint8Array(ab).set(chunk);
  return ab;
}
