// Apple LZ4 decoding on worker threads, so decompression and the sha256 of its output run beside the
// main thread's network I/O: createWorkerDecodeStream() gives a Duplex on a worker of its own, and
// Lz4WorkerPool shares a few workers between pulls. Memory in flight per stream is bounded (about
// maxInputInFlight + outputWindow + one block), with backpressure across the thread boundary.
import { spawnDecodeWorker, WorkerDecodeStream, type WorkerDecodeOptions } from './worker-stream.ts';

export { spawnDecodeWorker, WorkerDecodeStream, type WorkerDecodeOptions } from './worker-stream.ts';
export { Lz4WorkerPool, type DecodeJob, type Lz4WorkerPoolOptions } from './worker-pool.ts';
export type { DecodeExpectation, DecodedDigest } from './digest.ts';
export { DecodedMismatchError } from './digest.ts';

/** A decode stream on a worker of its own, ended with the stream. */
export function createWorkerDecodeStream(options?: WorkerDecodeOptions): WorkerDecodeStream {
  return new WorkerDecodeStream(async () => {
    const worker = spawnDecodeWorker();
    worker.on('error', () => {}); // reported by the stream while it runs; nothing to do after
    return { worker, release: () => void worker.terminate() };
  }, options);
}

