// The decoding thread (started by worker-stream.ts): runs AppleLz4Parser and sha256 over one stream at a time,
// sending decoded chunks back as transferred ArrayBuffers and stopping while its output window is full
// (protocol.ts). Nothing here runs on the main thread.
import { parentPort } from 'node:worker_threads';
import { DigestTracker } from './digest.ts';
import { AppleLz4Parser } from './parser.ts';
import { toWire, type FromWorker, type ToWorker } from './protocol.ts';

/** Decoded bytes gathered before one `out` message: fewer, larger messages; well under the window. */
const BATCH_BYTES = 256 * 1024;

const port = parentPort;
if (!port) throw new Error('apple-lz4: worker-entry.ts must run in a worker thread (see worker.ts)');

class Session {
  private readonly parser: AppleLz4Parser;
  private readonly tracker: DigestTracker;
  private readonly queue: Uint8Array[] = [];
  private current: { blocks: Generator<Buffer, void, undefined>; bytes: number } | null = null;
  private batch: ArrayBuffer[] = [];
  private batchBytes = 0;
  /** Decoded bytes sent or batched that main has not acknowledged yet. */
  private unacknowledged = 0;
  private ending = false;
  private over = false;
  private pumping = false;

  constructor(
    readonly id: number,
    private readonly outputWindow: number,
    start: Extract<ToWorker, { type: 'start' }>,
  ) {
    this.parser = new AppleLz4Parser({ maxBlockSize: start.maxBlockSize });
    this.tracker = new DigestTracker(start.expect);
  }

  data(chunk: ArrayBuffer): void {
    this.queue.push(new Uint8Array(chunk));
    this.pump();
  }

  credit(bytes: number): void {
    this.unacknowledged -= bytes;
    this.pump();
  }

  end(): void {
    this.ending = true;
    this.pump();
  }

  get finished(): boolean {
    return this.over;
  }

  private pump(): void {
    if (this.over || this.pumping) return;
    this.pumping = true;
    try {
      for (;;) {
        if (this.unacknowledged >= this.outputWindow) return this.flush(); // wait for credit
        if (!this.current) {
          const chunk = this.queue.shift();
          if (!chunk) {
            this.flush();
            if (this.ending) this.finish();
            return;
          }
          this.current = { blocks: this.parser.blocks(chunk), bytes: chunk.length };
        }
        const next = this.current.blocks.next();
        if (next.done) {
          this.send({ type: 'consumed', id: this.id, bytes: this.current.bytes });
          this.current = null;
          continue;
        }
        this.tracker.update(next.value); // hash before the buffer is transferred away
        this.add(next.value);
      }
    } catch (err) {
      this.over = true;
      this.send({ type: 'error', id: this.id, error: toWire(err) });
    } finally {
      this.pumping = false;
    }
  }

  private add(out: Buffer): void {
    // Transfer only a buffer that owns its whole ArrayBuffer; otherwise we would hand away memory
    // that other buffers share.
    const own = out.byteOffset === 0 && out.byteLength === out.buffer.byteLength && out.buffer instanceof ArrayBuffer;
    const ab = own ? out.buffer : copyToArrayBuffer(out);
    this.batch.push(ab);
    this.batchBytes += ab.byteLength;
    this.unacknowledged += ab.byteLength;
    if (this.batchBytes >= BATCH_BYTES) this.flush();
  }

  private flush(): void {
    if (this.batch.length === 0) return;
    const chunks = this.batch;
    const msg: FromWorker = { type: 'out', id: this.id, chunks, bytes: this.batchBytes };
    this.batch = [];
    this.batchBytes = 0;
    port?.postMessage(msg, chunks);
  }

  private finish(): void {
    this.parser.end();
    const result = this.tracker.finish();
    this.over = true;
    this.send({ type: 'done', id: this.id, result });
  }

  private send(msg: FromWorker): void {
    port?.postMessage(msg);
  }
}

function copyToArrayBuffer(bytes: Uint8Array): ArrayBuffer {
  const ab = new ArrayBuffer(bytes.byteLength);
  new Uint8Array(ab).set(bytes);
  return ab;
}

let session: Session | null = null;

port.on('message', (msg: ToWorker) => {
  if (msg.type === 'start') {
    session = new Session(msg.id, msg.outputWindow, msg);
    return;
  }
  // Messages for a session that has ended (or an older one) are stale: ignore them.
  if (!session || session.id !== msg.id || session.finished) return;
  if (msg.type === 'data') session.data(msg.chunk);
  else if (msg.type === 'credit') session.credit(msg.bytes);
  else session.end();
});
