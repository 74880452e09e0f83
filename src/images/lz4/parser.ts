// AppleLz4Parser: incremental decoder of Apple's LZ4 framing (bv41 / bv4- / bv4$, see format.ts). Bytes
// in, decoded blocks out, no I/O, so every case is testable with byte arrays alone (the `ws` Receiver
// style). It holds at most one block's payload (bounded by maxBlockSize) plus the 64 KiB window.
import { decodeBlock, decodesToZeros } from './block.ts';
import {
  AppleLz4Error,
  DEFAULT_MAX_BLOCK_SIZE,
  HEADER_SIZE,
  MAGIC,
  WINDOW_SIZE,
  describeMagic,
  lz4Bound,
} from './format.ts';
import { History } from './history.ts';

export interface AppleLz4ParserOptions {
  /** Largest decoded block accepted, in bytes (default 4 MiB; Apple writes 64 KiB). */
  maxBlockSize?: number;
  /**
   * Blocks may be lent rather than owned (default false): a stored block that lies whole in the pushed
   * chunk is a view of it, and an all-zero block is a view of one shared zero buffer. Such a block is
   * valid until the next push and must not be written to. For a caller that copies what it keeps (the
   * chunk writer hashes a block and copies it into its stage), this saves an allocation and a copy per
   * block.
   */
  lend?: boolean;
}

const NO_BYTES = Buffer.alloc(0);
/** Shared zeros lent for all-zero blocks (grown to the largest such block seen; never written). */
let sharedZeros = Buffer.alloc(WINDOW_SIZE);

function zeros(size: number, lend: boolean): Buffer {
  if (!lend) return Buffer.alloc(size);
  if (sharedZeros.length < size) sharedZeros = Buffer.alloc(size);
  return sharedZeros.subarray(0, size);
}

type State = 'header' | 'compressed' | 'stored' | 'ended';

export class AppleLz4Parser {
  private readonly maxBlockSize: number;
  private readonly lend: boolean;
  private readonly history = new History();
  /** How many of the last bytes of the history are known to be zeros (from blocks seen as all-zero). */
  private zeroTail = 0;
  private readonly header = Buffer.alloc(HEADER_SIZE.compressed);
  private state: State = 'header';
  private headerHave = 0;
  private headerNeed: number = HEADER_SIZE.end;
  /** Where the current block's header starts in the compressed stream. */
  private blockStart = 0;
  private decodedSize = 0;
  /** Compressed: [u32le decoded size][LZ4 block], the form lz4-napi reads; reused. Stored: the output. */
  private scratch = Buffer.alloc(0);
  private payload = Buffer.alloc(0);
  private payloadBase = 0;
  private payloadHave = 0;
  private payloadNeed = 0;
  private busy = false;
  private broken: Error | null = null;
  private consumed = 0;
  private produced = 0;

  constructor(options: AppleLz4ParserOptions = {}) {
    this.maxBlockSize = options.maxBlockSize ?? DEFAULT_MAX_BLOCK_SIZE;
    this.lend = options.lend ?? false;
  }

  /** Compressed bytes consumed so far. */
  get bytesIn(): number {
    return this.consumed;
  }

  /** Decoded bytes produced so far. */
  get bytesOut(): number {
    return this.produced;
  }

  /** True once the end marker has been read. */
  get ended(): boolean {
    return this.state === 'ended';
  }

  /** Decodes what `chunk` completes; returns the decoded blocks in order (possibly none). */
  push(chunk: Uint8Array): Buffer[] {
    return [...this.blocks(chunk)];
  }

  /**
   * Like push(), but yields each decoded block as soon as it is ready, so a caller with backpressure
   * can stop between blocks. Run it to completion before the next call; a generator left unfinished
   * leaves the parser unusable (the rest of its chunk is lost).
   */
  *blocks(chunk: Uint8Array): Generator<Buffer, void, undefined> {
    this.check();
    this.busy = true;
    let finished = false;
    try {
      let pos = 0;
      while (pos < chunk.length) {
        if (this.state === 'ended') {
          throw new AppleLz4Error(
            'trailing-data',
            this.consumed,
            `${chunk.length - pos} or more bytes follow the bv4$ end marker; a layer holds exactly one stream`,
          );
        }
        if (this.state === 'header') {
          const take = Math.min(this.headerNeed - this.headerHave, chunk.length - pos);
          this.header.set(chunk.subarray(pos, pos + take), this.headerHave);
          this.headerHave += take;
          pos += take;
          this.consumed += take;
          if (this.headerHave === this.headerNeed) {
            const out = this.onHeader();
            if (out) yield out;
          }
          continue;
        }
        if (this.state === 'stored' && this.payloadHave === 0 && this.lend && chunk.length - pos >= this.payloadNeed) {
          // A stored block whole in this chunk: lent as it lies.
          const view = Buffer.from(chunk.buffer, chunk.byteOffset + pos, this.payloadNeed);
          pos += this.payloadNeed;
          this.consumed += this.payloadNeed;
          const out = this.finishBlock(view);
          if (out) yield out;
          continue;
        }
        if (this.state === 'stored' && this.payload.length < this.payloadNeed) this.payload = Buffer.allocUnsafeSlow(this.payloadNeed);
        const take = Math.min(this.payloadNeed - this.payloadHave, chunk.length - pos);
        this.payload.set(chunk.subarray(pos, pos + take), this.payloadBase + this.payloadHave);
        this.payloadHave += take;
        pos += take;
        this.consumed += take;
        if (this.payloadHave === this.payloadNeed) {
          const out = this.finishBlock();
          if (out) yield out;
        }
      }
      finished = true;
    } catch (err) {
      this.broken = err instanceof Error ? err : new Error(String(err));
      throw err;
    } finally {
      this.busy = false;
      if (!finished && !this.broken) this.broken = new Error('apple-lz4: a blocks() generator was abandoned mid-chunk');
    }
  }

  /** Checks that the stream ended cleanly: with bv4$ and nothing cut short. */
  end(): void {
    this.check();
    if (this.state === 'ended') return;
    const err =
      this.state === 'header' && this.headerHave === 0
        ? new AppleLz4Error('truncated', this.consumed, 'stream ends without the bv4$ end marker (download cut short?)')
        : new AppleLz4Error(
            'truncated',
            this.blockStart,
            `stream ends inside the block that starts here (${this.consumed - this.blockStart} bytes of it arrived)`,
          );
    this.broken = err;
    throw err;
  }

  private check(): void {
    if (this.broken) throw this.broken;
    if (this.busy) throw new Error('apple-lz4: finish the previous blocks() generator before pushing more');
  }

  /** A complete magic or header is in `this.header`. Returns output for an empty stored block (none). */
  private onHeader(): Buffer | undefined {
    const magic = this.header.readUInt32LE(0);
    if (this.headerNeed === HEADER_SIZE.end) {
      if (magic === MAGIC.end) {
        this.state = 'ended';
        return undefined;
      }
      if (magic === MAGIC.stored) this.headerNeed = HEADER_SIZE.stored;
      else if (magic === MAGIC.compressed) this.headerNeed = HEADER_SIZE.compressed;
      else {
        throw new AppleLz4Error(
          'bad-magic',
          this.blockStart,
          `block magic ${describeMagic(this.header.subarray(0, 4))} is not bv41, bv4- or bv4$: not an Apple LZ4 stream, or corrupt`,
        );
      }
      return undefined;
    }
    const size = this.header.readUInt32LE(4);
    this.limit(size);
    if (magic === MAGIC.stored) {
      this.state = 'stored';
      this.payload = NO_BYTES; // allocated when its first bytes are copied (not at all if lent)
      this.payloadBase = 0;
      this.payloadNeed = size;
    } else {
      const encoded = this.header.readUInt32LE(8);
      if (encoded > lz4Bound(size)) {
        throw new AppleLz4Error(
          encoded > lz4Bound(this.maxBlockSize) ? 'block-too-large' : 'corrupt-block',
          this.blockStart,
          `bv41 block claims ${encoded} encoded bytes for ${size} decoded, more than LZ4's worst case ${lz4Bound(size)}`,
        );
      }
      this.state = 'compressed';
      if (this.scratch.length < 4 + encoded) this.scratch = Buffer.allocUnsafeSlow(4 + Math.max(encoded, 64 * 1024));
      this.scratch.writeUInt32LE(size, 0);
      this.payload = this.scratch;
      this.payloadBase = 4;
      this.payloadNeed = encoded;
    }
    this.decodedSize = size;
    this.payloadHave = 0;
    // A zero-length payload is complete already; there may be no more input to trigger it.
    return this.payloadNeed === 0 ? this.finishBlock() : undefined;
  }

  private limit(size: number): void {
    if (size > this.maxBlockSize) {
      throw new AppleLz4Error(
        'block-too-large',
        this.blockStart,
        `block declares ${size} decoded bytes, over the ${this.maxBlockSize}-byte limit (Apple writes 65536)`,
      );
    }
  }

  /**
   * The payload is complete (or lent whole, `stored`): decode it, remember it as history, and start the
   * next header.
   */
  private finishBlock(stored?: Buffer): Buffer | undefined {
    let out: Buffer;
    let zero = false;
    if (this.state === 'stored') {
      out = stored ?? this.payload.subarray(0, this.payloadNeed);
    } else {
      const block = this.scratch.subarray(4, 4 + this.payloadNeed);
      zero = decodesToZeros(block, this.decodedSize, this.zeroTail);
      out = zero
        ? zeros(this.decodedSize, this.lend)
        : decodeBlock(this.scratch.subarray(0, 4 + this.payloadNeed), this.history.view(), this.decodedSize, this.blockStart);
    }
    this.history.append(out);
    this.zeroTail = zero ? Math.min(WINDOW_SIZE, this.zeroTail + out.length) : 0;
    this.produced += out.length;
    this.payload = NO_BYTES;
    this.state = 'header';
    this.headerHave = 0;
    this.headerNeed = HEADER_SIZE.end;
    this.blockStart = this.consumed;
    return out.length > 0 ? out : undefined;
  }
}
