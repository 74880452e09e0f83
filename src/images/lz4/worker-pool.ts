// Lz4WorkerPool: a few Apple LZ4 decode workers shared by concurrent pulls (Tart pulls four layers at a
// time). A stream borrows a worker for its whole length; idle workers do not keep the process alive.
import type { Worker } from 'node:worker_threads';
import type { Duplex } from 'node:stream';
import type { DecodedDigest } from './digest.ts';
import { spawnDecodeWorker, WorkerDecodeStream, type Slot, type WorkerDecodeOptions } from './worker-stream.ts';

/** Decoded output of one stream, and its sha256/size once all of it has been read. */
export interface DecodeJob extends AsyncIterable<Buffer> {
  result: Promise<DecodedDigest>;
}

export interface Lz4WorkerPoolOptions {
  /** Workers at most (default 2): each decodes at well over network speed. */
  size?: number;
}

/** A few decode workers shared by concurrent pulls; idle workers do not keep the process alive. */
export class Lz4WorkerPool {
  private readonly size: number;
  private readonly idle: Worker[] = [];
  private readonly waiting: { resolve: (slot: Slot) => void; reject: (err: Error) => void }[] = [];
  private readonly all = new Set<Worker>();
  private closed = false;

  constructor(options: Lz4WorkerPoolOptions = {}) {
    this.size = Math.max(1, options.size ?? 2);
  }

  /** A decode stream whose worker comes from the pool (it waits for one if all are busy). */
  createDecodeStream(options?: WorkerDecodeOptions): WorkerDecodeStream {
    return new WorkerDecodeStream(() => this.acquire(), options);
  }

  /** Decodes `source`; iterate the job for output, then await `job.result` for sha256 and size. */
  decode(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, options?: WorkerDecodeOptions): DecodeJob {
    const stream = this.createDecodeStream(options);
    void feed(source, stream);
    const result = new Promise<DecodedDigest>((resolve, reject) => {
      stream.once('error', reject);
      stream.once('close', () => {
        if (stream.result) resolve(stream.result);
        else reject(new Error('apple-lz4: decoding stopped before the end of the stream'));
      });
    });
    result.catch(() => {}); // a caller that only iterates must not get an unhandled rejection
    return { [Symbol.asyncIterator]: () => stream[Symbol.asyncIterator](), result };
  }

  /** Workers started and not yet ended. */
  get workers(): number {
    return this.all.size;
  }

  /** Ends every worker; streams still running fail. */
  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.waiting.splice(0)) w.reject(new Error('apple-lz4: the worker pool is closed'));
    const workers = [...this.all];
    this.all.clear();
    this.idle.length = 0;
    await Promise.all(workers.map((w) => w.terminate()));
  }

  private acquire(): Promise<Slot> {
    if (this.closed) return Promise.reject(new Error('apple-lz4: the worker pool is closed'));
    const worker = this.idle.pop() ?? (this.all.size < this.size ? this.spawn() : undefined);
    if (worker) return Promise.resolve(this.lend(worker));
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  private spawn(): Worker {
    const worker = spawnDecodeWorker();
    this.all.add(worker);
    worker.on('error', () => {}); // a stream using it reports the error; an idle one just exits
    worker.once('exit', () => {
      // A worker that died while idle must not be lent again.
      this.all.delete(worker);
      const at = this.idle.indexOf(worker);
      if (at >= 0) this.idle.splice(at, 1);
    });
    return worker;
  }

  private lend(worker: Worker): Slot {
    worker.ref();
    let released = false;
    return {
      worker,
      release: (healthy) => {
        if (released) return;
        released = true;
        if (healthy && !this.closed) return this.handOn(worker);
        this.all.delete(worker);
        void worker.terminate();
        if (!this.closed && this.waiting.length > 0) this.handOn(this.spawn());
      },
    };
  }

  /** Gives a free worker to the next waiting stream, or parks it. */
  private handOn(worker: Worker): void {
    const next = this.waiting.shift();
    if (next) return next.resolve(this.lend(worker));
    worker.unref();
    this.idle.push(worker);
  }
}

/** Writes `source` into `stream` with backpressure; stops when the stream is destroyed. */
async function feed(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, stream: Duplex): Promise<void> {
  try {
    for await (const chunk of source) {
      if (stream.destroyed) return;
      if (!stream.write(chunk)) await drained(stream);
    }
    if (!stream.destroyed) stream.end();
  } catch (err) {
    stream.destroy(err as Error);
  }
}

function drained(stream: Duplex): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      stream.off('drain', done);
      stream.off('close', done);
      resolve();
    };
    stream.on('drain', done);
    stream.on('close', done);
  });
}

