// Raw LZ4 blocks through lz4-napi (Rust lz4_flex, native): decode one block against the history window,
// encode one block on its own. The framing around them lives in parser.ts and writer.ts.
//
// lz4-napi's block functions put a 4-byte little-endian decoded size in front of the block (lz4_flex's
// *_size_prepended). Its dictionary form decodes matches that reach back into the dictionary, which is
// how a `bv41` block sees the previous block's output (checked by the hand-built vector in
// test/unit/images/lz4.test.ts). Throughput on this machine: see README.md in this folder.
import { compressSync, uncompressSync } from 'lz4-napi';
import { AppleLz4Error, lz4Bound } from './format.ts';

/**
 * Decodes the LZ4 block in `framed[4..]`, whose first four bytes the caller has set to the decoded size
 * (u32le), with `history` (at most 64 KiB, possibly empty) as the bytes before it. Returns a new buffer.
 * `offset` is the block's place in the compressed stream, for errors.
 */
export function decodeBlock(framed: Uint8Array, history: Uint8Array, decodedSize: number, offset: number): Buffer {
  let out: Buffer;
  try {
    out = history.length > 0 ? uncompressSync(framed, history) : uncompressSync(framed);
  } catch (err) {
    throw blockError(err, offset);
  }
  // lz4_flex returns what the block produced, which may be less than the size we gave it.
  if (out.length !== decodedSize) {
    throw new AppleLz4Error(
      'size-mismatch',
      offset,
      `LZ4 block decoded to ${out.length} bytes but its header says ${decodedSize}`,
    );
  }
  return out;
}

/**
 * Whether the raw LZ4 block `block` decodes to exactly `size` zero bytes, read from its sequences without
 * decoding: every literal is zero, every match copies zeros (from earlier in the block, or from the last
 * `zeroHistory` bytes of the window, known to be zeros), and the block ends with literals as LZ4 requires.
 * An all-zero block (a disk's free space: half of a typical image) is a handful of sequences, so this
 * costs almost nothing, and the decode it saves is the largest part of decoding such a disk. Anything
 * else, a malformed block included, answers false and is decoded (and refused) by decodeBlock.
 */
export function decodesToZeros(block: Uint8Array, size: number, zeroHistory: number): boolean {
  const n = block.length;
  let i = 0;
  let out = 0;
  while (i < n) {
    const token = block[i++]!;
    let literals = token >>> 4;
    if (literals === 15) {
      for (let b = 255; b === 255; literals += b) {
        if (i >= n) return false;
        b = block[i++]!;
      }
    }
    if (literals > n - i) return false;
    for (const end = i + literals; i < end; i++) if (block[i] !== 0) return false;
    out += literals;
    if (i === n) return out === size; // the last sequence: literals only
    if (n - i < 2) return false;
    const offset = block[i]! | (block[i + 1]! << 8);
    i += 2;
    if (offset === 0 || offset > out + zeroHistory) return false;
    let match = token & 15;
    if (match === 15) {
      for (let b = 255; b === 255; match += b) {
        if (i >= n) return false;
        b = block[i++]!;
      }
    }
    out += match + 4;
    if (out > size) return false;
  }
  return false; // empty, or ends with a match
}

/** Maps lz4_flex's messages onto our reasons; anything unrecognised is a corrupt block. */
function blockError(err: unknown, offset: number): AppleLz4Error {
  const message = err instanceof Error ? err.message : String(err);
  if (/offset to copy is not contained/.test(message)) {
    return new AppleLz4Error(
      'offset-out-of-window',
      offset,
      `LZ4 block refers to data before the start of its 64 KiB window (${message})`,
    );
  }
  if (/output is too small/.test(message)) {
    return new AppleLz4Error('size-mismatch', offset, `LZ4 block decodes to more than its header says (${message})`);
  }
  return new AppleLz4Error('corrupt-block', offset, `LZ4 block is corrupt (${message})`);
}

/**
 * Encodes `plain` as one LZ4 block that needs no history (blocks are independent: a decoder that keeps
 * the window, as Apple's does, reads them all the same). Returns the block without any size prefix.
 */
export function encodeBlock(plain: Buffer): Buffer {
  const framed = compressSync(plain);
  const block = framed.subarray(4);
  if (block.length > lz4Bound(plain.length)) throw new Error(`lz4-napi produced ${block.length} bytes for ${plain.length}`);
  return block;
}
