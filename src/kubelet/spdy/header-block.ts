// SPDY/3 header blocks: the name/value block format and its zlib compression. Each direction of a
// connection has ONE zlib stream for its whole life, primed with the SPDY/3 dictionary, and every block
// ends with a sync flush (draft 3.1, 2.6.10; spdystream's spdy/types.go and write.go: one
// zlib.NewWriterLevelDict per Framer, Flush() after each block). So a compressor or decompressor belongs
// to one connection, blocks must pass through it in wire order, and once it fails the connection is lost.
//
// Name/value block (uncompressed): 32-bit count, then per pair a 32-bit name length, the name
// (lowercase), a 32-bit value length, the value; several values of one name are joined by NUL.
import { Deflate, ZStream, Z_BUF_ERROR, Z_NEED_DICT, Z_OK, Z_SYNC_FLUSH, zlibInflate, zlibInflateInit, zlibInflateSetDictionary } from 'pako';
import { SPDY3_DICTIONARY } from './dictionary.ts';

/** Decompressed size allowed per block: a tiny compressed block may otherwise expand ~1000-fold. */
export const DEFAULT_MAX_HEADER_BLOCK_BYTES = 1024 * 1024;
/** Pairs allowed per block (spdystream's default limit too). */
export const DEFAULT_MAX_HEADER_COUNT = 1000;

/** Header names (lowercase) to their values, in wire order. */
export type HeaderValues = Map<string, string[]>;
/** What callers pass in: a name to one value or several. Names are lowercased on the wire. */
export type HeadersInput = Readonly<Record<string, string | readonly string[]>>;

export class HeaderBlockError extends Error {
  override name = 'HeaderBlockError';
}

export function encodeNameValueBlock(headers: HeadersInput): Buffer {
  const merged = new Map<string, string[]>();
  for (const [name, value] of Object.entries(headers)) {
    const lower = name.toLowerCase();
    if (lower === '') throw new HeaderBlockError('empty header name');
    const values = typeof value === 'string' ? [value] : [...value];
    merged.set(lower, [...(merged.get(lower) ?? []), ...values]);
  }
  const parts: Buffer[] = [u32(merged.size)];
  for (const [name, values] of merged) {
    const n = Buffer.from(name, 'utf8');
    const v = Buffer.from(values.join('\0'), 'utf8');
    parts.push(u32(n.length), n, u32(v.length), v);
  }
  return Buffer.concat(parts);
}

export interface NameValueLimits {
  maxHeaderCount?: number;
}

/**
 * Parses an uncompressed name/value block. Throws HeaderBlockError on a malformed block (truncated,
 * trailing bytes, an empty name, too many pairs). Names are lowercased; a repeated name adds values.
 */
export function decodeNameValueBlock(block: Buffer, limits: NameValueLimits = {}): HeaderValues {
  const maxCount = limits.maxHeaderCount ?? DEFAULT_MAX_HEADER_COUNT;
  let off = 0;
  const readU32 = (what: string): number => {
    if (off + 4 > block.length) throw new HeaderBlockError(`header block ends inside ${what}`);
    const v = block.readUInt32BE(off);
    off += 4;
    return v;
  };
  const readString = (what: string): string => {
    const length = readU32(`the length of ${what}`);
    if (length > block.length - off) throw new HeaderBlockError(`header block ends inside ${what} (${length} bytes announced)`);
    const s = block.toString('utf8', off, off + length);
    off += length;
    return s;
  };
  const count = readU32('the pair count');
  if (count > maxCount) throw new HeaderBlockError(`header block has ${count} pairs (limit ${maxCount})`);
  const headers: HeaderValues = new Map();
  for (let i = 0; i < count; i++) {
    const name = readString('a header name').toLowerCase();
    if (name === '') throw new HeaderBlockError('empty header name');
    const values = readString(`the value of ${name}`).split('\0');
    const existing = headers.get(name);
    if (existing) existing.push(...values);
    else headers.set(name, values);
  }
  if (off !== block.length) throw new HeaderBlockError(`${block.length - off} bytes after the last header pair`);
  return headers;
}

/** Compresses the header blocks one side sends, in order, over one zlib stream. */
export class HeaderCompressor {
  private readonly deflate = new Deflate({ dictionary: SPDY3_DICTIONARY });
  private out: Uint8Array[] = [];

  constructor() {
    this.deflate.onData = (chunk) => this.out.push(chunk);
  }

  /** Compressed bytes for a raw name/value block; a sync flush ends it so the peer can decode it now. */
  compressBlock(block: Uint8Array): Buffer {
    this.out = [];
    if (!this.deflate.push(block, Z_SYNC_FLUSH)) throw new HeaderBlockError(`zlib deflate failed: ${this.deflate.msg}`);
    const result = Buffer.concat(this.out);
    this.out = [];
    return result;
  }

  compress(headers: HeadersInput): Buffer {
    return this.compressBlock(encodeNameValueBlock(headers));
  }
}

export interface HeaderDecompressorOptions extends NameValueLimits {
  maxBlockBytes?: number;
}

/** Decompresses the header blocks the peer sends, in order, over one zlib stream. */
export class HeaderDecompressor {
  private readonly strm = new ZStream();
  private broken: string | null = null;
  private readonly maxBlockBytes: number;
  private readonly maxHeaderCount: number;

  constructor(options: HeaderDecompressorOptions = {}) {
    this.maxBlockBytes = options.maxBlockBytes ?? DEFAULT_MAX_HEADER_BLOCK_BYTES;
    this.maxHeaderCount = options.maxHeaderCount ?? DEFAULT_MAX_HEADER_COUNT;
    const status = zlibInflateInit(this.strm);
    if (status !== Z_OK) throw new Error(`zlib inflateInit failed (${status})`);
  }

  /**
   * The raw name/value block inside one compressed block. Throws HeaderBlockError when the bytes are not
   * a continuation of this zlib stream or expand past maxBlockBytes; after that every call throws, since
   * the shared context is lost.
   */
  decompressBlock(compressed: Uint8Array): Buffer {
    if (this.broken !== null) throw new HeaderBlockError(`header decompression failed earlier: ${this.broken}`);
    try {
      return this.inflate(compressed);
    } catch (err) {
      this.broken = err instanceof Error ? err.message : String(err);
      throw err instanceof HeaderBlockError ? err : new HeaderBlockError(this.broken);
    }
  }

  decompress(compressed: Uint8Array): HeaderValues {
    return decodeNameValueBlock(this.decompressBlock(compressed), { maxHeaderCount: this.maxHeaderCount });
  }

  private inflate(compressed: Uint8Array): Buffer {
    const strm = this.strm;
    strm.input = compressed;
    strm.next_in = 0;
    strm.avail_in = compressed.length;
    const out: Buffer[] = [];
    let total = 0;
    for (;;) {
      const room = Math.min(16 * 1024, this.maxBlockBytes - total + 1);
      strm.output = new Uint8Array(room);
      strm.next_out = 0;
      strm.avail_out = room;
      const inBefore = strm.avail_in;
      let status = zlibInflate(strm, Z_SYNC_FLUSH);
      if (status === Z_NEED_DICT) {
        if (zlibInflateSetDictionary(strm, SPDY3_DICTIONARY) !== Z_OK) throw new HeaderBlockError('header block wants a dictionary other than SPDY/3\'s');
        status = zlibInflate(strm, Z_SYNC_FLUSH);
      }
      const produced = strm.next_out;
      if (produced > 0) {
        out.push(Buffer.from(strm.output.buffer, strm.output.byteOffset, produced));
        total += produced;
        if (total > this.maxBlockBytes) throw new HeaderBlockError(`header block expands past ${this.maxBlockBytes} bytes`);
      }
      if (status === Z_OK || status === Z_BUF_ERROR) {
        // Done when zlib took every input byte and had output room left over.
        if (strm.avail_in === 0 && strm.avail_out > 0) break;
        if (produced === 0 && strm.avail_in === inBefore) throw new HeaderBlockError('zlib made no progress on the header block');
        continue;
      }
      if (status === Z_NEED_DICT) throw new HeaderBlockError('header block asks for a dictionary twice');
      // Z_STREAM_END: SPDY header streams never end; negative: corrupt data.
      throw new HeaderBlockError(status > 0 ? 'header zlib stream ended' : `corrupt header block: ${strm.msg || `zlib status ${status}`}`);
    }
    strm.input = new Uint8Array(0);
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  }
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n);
  return b;
}
