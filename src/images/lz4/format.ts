// Apple's LZ4 stream framing (COMPRESSION_LZ4 of Apple's Compression framework): block magics, size
// limits and the error every part of src/images/lz4 throws for a bad stream.
//
// What the framing is, and where each fact comes from (read, not copied):
// - Apple's own header, apple-oss-distributions/xnu libkern/libkern/compression/compression.h:
//   `bv41` (62 76 34 31) + u32le decoded size + u32le encoded size + a raw LZ4 block;
//   `bv4-` (62 76 34 2d) + ONE u32le size + that many stored bytes; `bv4$` (62 76 34 24) ends the
//   stream and nothing may be read or written after it.
// - developer.apple.com/documentation/compression/compression_lz4 says the same, and adds: "a compressed
//   block may refer to data from the previous block, so the (decoded) previous block must be available
//   to the decoder". (Older copies of that page and of Algorithm.lz4 say `bv4-` carries two sizes; the
//   header above, the current page and every open decoder of real files read one, and so do we.)
// - Tart (cirruslabs/tart Sources/tart/OCI/Layerizer/DiskV2.swift) writes each 512 MiB disk chunk with
//   `NSData.compressed(using: .lz4)` and reads it back through `OutputFilter(.decompress, using: .lz4)`.
// - Block size: Apple's encoder cuts its input into 64 KiB blocks. Seen in the header of a real Tart
//   layer from ghcr.io (`62 76 34 31 00 00 01 00`: decoded size 65536), in go-compressions/lz4's Apple
//   oracle test (it probes sizes around 65536) and in macospkg's notes ("blocks decode to at most
//   64 KiB"). Not re-checked on a Mac here.

/** Four-byte block magics, as the little-endian u32 of their bytes. */
export const MAGIC = {
  compressed: 0x31347662, // "bv41"
  stored: 0x2d347662, // "bv4-"
  end: 0x24347662, // "bv4$"
} as const;

/** Size of the header before a block's payload: magic + decoded size + encoded size / magic + size / magic. */
export const HEADER_SIZE = { compressed: 12, stored: 8, end: 4 } as const;

/** The bytes of the end-of-stream marker. */
export const END_MARKER: Buffer = Buffer.from('bv4$', 'latin1');

/** LZ4 matches reach back at most 65535 bytes, so 64 KiB of history is all any block can need. */
export const WINDOW_SIZE = 64 * 1024;

/**
 * Largest decoded block the parser accepts by default. Apple's encoder writes 64 KiB blocks; 4 MiB
 * leaves 64x headroom for other writers while bounding what one block header can make us allocate
 * (its payload, its output and the 64 KiB window: about 8 MiB at worst, not the 4 GiB a u32 allows).
 * It is also Tart's own decode buffer (DiskV2.bufferSizeBytes).
 */
export const DEFAULT_MAX_BLOCK_SIZE = 4 * 1024 * 1024;

/** Block size the writer uses: what Apple's encoder emits, so Apple's decoder sees familiar input. */
export const DEFAULT_BLOCK_SIZE = 64 * 1024;

/** Worst-case LZ4 block size for `n` input bytes (LZ4_COMPRESSBOUND in lz4.h). */
export function lz4Bound(n: number): number {
  return n + Math.floor(n / 255) + 16;
}

export type AppleLz4Reason =
  | 'bad-magic' // four bytes that are none of bv41, bv4-, bv4$
  | 'truncated' // the input ended inside a block, or before bv4$
  | 'size-mismatch' // an LZ4 block decoded to a size other than its header says
  | 'offset-out-of-window' // an LZ4 match reaches before the start of the available history
  | 'block-too-large' // a header declares more than the configured limit
  | 'corrupt-block' // an LZ4 block that is not well formed
  | 'trailing-data'; // bytes after bv4$

/** A stream that is not valid Apple LZ4. `offset` is where in the compressed stream the problem is. */
export class AppleLz4Error extends Error {
  override name = 'AppleLz4Error';
  constructor(
    readonly reason: AppleLz4Reason,
    readonly offset: number,
    readonly detail: string,
  ) {
    super(`apple-lz4: ${detail} at byte ${offset} of the compressed stream (${reason})`);
  }
}

/** Names a magic for an error message: printable as text, else as hex. */
export function describeMagic(bytes: Uint8Array): string {
  const text = Buffer.from(bytes).toString('latin1');
  return /^[\x20-\x7e]*$/.test(text) ? `"${text}"` : `0x${Buffer.from(bytes).toString('hex')}`;
}
