// AppleLz4Writer / encodeBlocks: produce Apple's LZ4 framing (format.ts) that Apple's decoder reads, for
// vmlet's own pushes and for tests. Plain bytes in, framed bytes out, no I/O.
//
// Choices, and why:
// - 64 KiB blocks, as Apple's encoder writes them; a decoder tuned to Apple's output sees nothing new.
// - Blocks are encoded independently (no dictionary). The format allows a block to use the previous
//   block's output; not using it costs a little ratio (see README.md) and keeps each block's offsets
//   inside its own bytes, which any decoder reads.
// - A block that LZ4 does not shrink is stored (`bv4-`): never larger than the input plus 8 bytes.
import { encodeBlock } from './block.ts';
import { DEFAULT_BLOCK_SIZE, DEFAULT_MAX_BLOCK_SIZE, END_MARKER, HEADER_SIZE, MAGIC } from './format.ts';

export interface AppleLz4WriterOptions {
  /** Decoded bytes per block (default 64 KiB, as Apple's encoder). */
  blockSize?: number;
}

/** Frames one block of plain bytes: `bv41` if LZ4 makes it smaller, else `bv4-`. */
export function encodeFrame(plain: Buffer): Buffer {
  const block = plain.length > 0 ? encodeBlock(plain) : null;
  if (block && HEADER_SIZE.compressed + block.length < HEADER_SIZE.stored + plain.length) {
    const out = Buffer.allocUnsafe(HEADER_SIZE.compressed + block.length);
    out.writeUInt32LE(MAGIC.compressed, 0);
    out.writeUInt32LE(plain.length, 4);
    out.writeUInt32LE(block.length, 8);
    block.copy(out, HEADER_SIZE.compressed);
    return out;
  }
  const out = Buffer.allocUnsafe(HEADER_SIZE.stored + plain.length);
  out.writeUInt32LE(MAGIC.stored, 0);
  out.writeUInt32LE(plain.length, 4);
  plain.copy(out, HEADER_SIZE.stored);
  return out;
}

/** Frames `data` as blocks of at most `blockSize` bytes, without the end marker. */
export function encodeBlocks(data: Buffer, options: AppleLz4WriterOptions = {}): Buffer[] {
  const size = blockSizeOf(options);
  const frames: Buffer[] = [];
  for (let at = 0; at < data.length; at += size) frames.push(encodeFrame(data.subarray(at, at + size)));
  return frames;
}

/** Incremental writer: push plain bytes, get framed bytes for every completed block; end() flushes. */
export class AppleLz4Writer {
  private readonly blockSize: number;
  private readonly pending: Buffer;
  private have = 0;
  private ended = false;

  constructor(options: AppleLz4WriterOptions = {}) {
    this.blockSize = blockSizeOf(options);
    this.pending = Buffer.allocUnsafe(this.blockSize);
  }

  push(chunk: Uint8Array): Buffer[] {
    if (this.ended) throw new Error('apple-lz4: push() after end()');
    const frames: Buffer[] = [];
    let pos = 0;
    while (pos < chunk.length) {
      // Whole blocks straight from the chunk when nothing is pending: no copy.
      if (this.have === 0 && chunk.length - pos >= this.blockSize) {
        frames.push(encodeFrame(Buffer.from(chunk.buffer, chunk.byteOffset + pos, this.blockSize)));
        pos += this.blockSize;
        continue;
      }
      const take = Math.min(this.blockSize - this.have, chunk.length - pos);
      this.pending.set(chunk.subarray(pos, pos + take), this.have);
      this.have += take;
      pos += take;
      if (this.have === this.blockSize) {
        frames.push(encodeFrame(this.pending));
        this.have = 0;
      }
    }
    return frames;
  }

  /** The last partial block, if any, and the end marker. */
  end(): Buffer[] {
    if (this.ended) throw new Error('apple-lz4: end() called twice');
    this.ended = true;
    const frames = this.have > 0 ? [encodeFrame(this.pending.subarray(0, this.have))] : [];
    frames.push(Buffer.from(END_MARKER));
    return frames;
  }
}

function blockSizeOf(options: AppleLz4WriterOptions): number {
  const size = options.blockSize ?? DEFAULT_BLOCK_SIZE;
  // Capped at what our own parser accepts by default, so everything we write we can read back.
  if (!Number.isInteger(size) || size < 1 || size > DEFAULT_MAX_BLOCK_SIZE) {
    throw new RangeError(`apple-lz4: blockSize must be an integer from 1 to ${DEFAULT_MAX_BLOCK_SIZE}, got ${size}`);
  }
  return size;
}
