// AppleLz4DecodeStream: a Transform from Apple LZ4 bytes to decoded bytes, on the calling thread, that
// also hashes what it decodes (sha256 + size, in `result` once the stream has ended) and can refuse
// output that does not match a layer's annotations. For decoding off the main thread see worker.ts.
import { Transform, type TransformCallback, type TransformOptions } from 'node:stream';
import { DigestTracker, type DecodeExpectation, type DecodedDigest } from './digest.ts';
import { AppleLz4Parser, type AppleLz4ParserOptions } from './parser.ts';

export interface AppleLz4DecodeStreamOptions extends AppleLz4ParserOptions {
  /** Refuse the output unless it has this size / sha256 (Tart's uncompressed-size/-content-digest). */
  expect?: DecodeExpectation;
  /** Readable side's buffer, in bytes (default 1 MiB). Writable side: `writableHighWaterMark`. */
  readableHighWaterMark?: number;
  writableHighWaterMark?: number;
}

/**
 * Backpressure holds inside a chunk too: one compressed chunk can decode to ~255x its size (zeros), so
 * when push() says "full" the rest of the chunk waits for _read() instead of piling up in the buffer.
 */
export class AppleLz4DecodeStream extends Transform {
  private readonly parser: AppleLz4Parser;
  private readonly tracker: DigestTracker;
  private pending: { blocks: Generator<Buffer, void, undefined>; done: TransformCallback } | null = null;
  private digestResult: DecodedDigest | undefined;
  private pumping = false;

  constructor(options: AppleLz4DecodeStreamOptions = {}) {
    const streamOptions: TransformOptions = {
      readableHighWaterMark: options.readableHighWaterMark ?? 1024 * 1024,
      writableHighWaterMark: options.writableHighWaterMark ?? 64 * 1024,
    };
    super(streamOptions);
    this.parser = new AppleLz4Parser(options);
    this.tracker = new DigestTracker(options.expect);
  }

  /** sha256 and size of everything decoded; set once the stream has ended without error. */
  get result(): DecodedDigest | undefined {
    return this.digestResult;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.pending = { blocks: this.parser.blocks(chunk), done };
    this.pump();
  }

  override _read(size: number): void {
    if (this.pending) this.pump();
    else super._read(size);
  }

  override _flush(done: TransformCallback): void {
    try {
      this.parser.end();
      this.digestResult = this.tracker.finish();
    } catch (err) {
      done(err as Error);
      return;
    }
    done();
  }

  /** Pushes decoded blocks until the chunk is used up or the reader is full. */
  private pump(): void {
    const job = this.pending;
    // push() can reach _read() again synchronously (a flowing reader); the outer loop carries on.
    if (!job || this.pumping) return;
    this.pumping = true;
    try {
      for (;;) {
        const next = job.blocks.next();
        if (next.done) break;
        this.tracker.update(next.value);
        if (!this.push(next.value)) return; // _read() resumes us
      }
    } catch (err) {
      this.pending = null;
      job.done(err as Error);
      return;
    } finally {
      this.pumping = false;
    }
    this.pending = null;
    job.done();
  }
}

/** Creates a decode stream; see AppleLz4DecodeStream. */
export function createDecodeStream(options?: AppleLz4DecodeStreamOptions): AppleLz4DecodeStream {
  return new AppleLz4DecodeStream(options);
}
