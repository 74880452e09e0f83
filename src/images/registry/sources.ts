// Blob sources for a push: the content as a fresh stream from any offset, so that a failed upload can
// be retried, or resumed where the registry says it stopped, without holding the blob in memory.
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { digestOf } from './digest.ts';
import { RegistryError, type ErrorContext } from './errors.ts';

export interface BlobSource {
  digest: string;
  size: number;
  /** The blob's bytes from `offset` to its end, as a fresh stream; called once per attempt. */
  open(offset: number): Readable | AsyncIterable<Uint8Array>;
}

/** A blob held in memory (configs, small test blobs); computes its digest. */
export function bufferSource(bytes: Uint8Array): BlobSource {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { digest: digestOf(buf), size: buf.length, open: (offset) => Readable.from([buf.subarray(offset)]) };
}

/** A blob in a file whose digest and size the caller already knows (a content store does). */
export function fileSource(path: string, digest: string, size: number): BlobSource {
  return { digest, size, open: (offset) => createReadStream(path, { start: offset }) };
}

/**
 * Hands out a source stream in consecutive pieces of exact sizes (upload chunks), keeping what a piece
 * did not use for the next one. A source that ends early is a SizeMismatch: its descriptor lied.
 */
export class ChunkReader {
  private readonly it: AsyncIterator<Uint8Array>;
  private rest: Buffer | undefined;
  private position: number;

  constructor(
    source: Readable | AsyncIterable<Uint8Array>,
    start: number,
    private readonly size: number,
    private readonly context: ErrorContext,
  ) {
    this.it = (source as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
    this.position = start;
  }

  /** The next n bytes. */
  async *take(n: number): AsyncGenerator<Buffer, void, undefined> {
    let left = n;
    while (left > 0) {
      let buf = this.rest;
      this.rest = undefined;
      if (!buf) {
        const r = await this.it.next();
        if (r.done) {
          throw new RegistryError({
            reason: 'SizeMismatch',
            detail: `the content to upload ended after ${this.position} of ${this.size} bytes`,
            context: this.context,
          });
        }
        buf = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
      }
      if (buf.length > left) {
        this.rest = buf.subarray(left);
        buf = buf.subarray(0, left);
      }
      left -= buf.length;
      this.position += buf.length;
      yield buf;
    }
  }

  /** Releases the source (closes a file stream). */
  close(): void {
    void this.it.return?.().catch(() => {});
  }
}
