// Apple LZ4 (COMPRESSION_LZ4, the encoding of Tart's disk.v2 layers): the pure codec's public face.
// The parser and writer are incremental and do no I/O; decodeAppleLz4/encodeAppleLz4 are whole-buffer
// conveniences for small data and tests. Streams: decode-stream.ts (in-thread), worker.ts (off-thread).
import { END_MARKER } from './format.ts';
import { AppleLz4Parser, type AppleLz4ParserOptions } from './parser.ts';
import { encodeBlocks, type AppleLz4WriterOptions } from './writer.ts';

export {
  AppleLz4Error,
  DEFAULT_BLOCK_SIZE,
  DEFAULT_MAX_BLOCK_SIZE,
  END_MARKER,
  MAGIC,
  WINDOW_SIZE,
  type AppleLz4Reason,
} from './format.ts';
export { AppleLz4Parser, type AppleLz4ParserOptions } from './parser.ts';
export { AppleLz4Writer, encodeBlocks, encodeFrame, type AppleLz4WriterOptions } from './writer.ts';

/** Decodes a whole Apple LZ4 stream. Throws AppleLz4Error if it is not exactly one valid stream. */
export function decodeAppleLz4(data: Uint8Array, options?: AppleLz4ParserOptions): Buffer {
  const parser = new AppleLz4Parser(options);
  const out = parser.push(data);
  parser.end();
  return Buffer.concat(out, parser.bytesOut);
}

/** Encodes `data` as one Apple LZ4 stream (64 KiB blocks, then bv4$). */
export function encodeAppleLz4(data: Uint8Array, options?: AppleLz4WriterOptions): Buffer {
  const plain = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return Buffer.concat([...encodeBlocks(plain, options), END_MARKER]);
}
