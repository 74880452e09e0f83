// The agent protocol's frame codec (docs/AGENT-PROTOCOL.md), pure: FrameParser turns bytes into frames,
// encodeFrame()/encodeHello() turn frames into bytes. No I/O here, so both are tested with bytes alone;
// the guest agent (src/agent/guest/) and the host client (src/agent/host/) tie them to a transport.
//
// A frame is a 12-byte header and a payload:
//   u8 type | u8 flags | u16 reserved (0) | u32 stream id | u32 payload length   (big-endian)
// A HELLO frame is always preceded by the 8-byte MAGIC, so a reader that lost its place (a stale half
// frame from an earlier host, garbage) can find the start of a session again by scanning for it. MAGIC
// may also come at any frame boundary (its first byte is no frame type).

/** Written before every HELLO frame: "VMLETAG" and a protocol generation byte. */
export const MAGIC = Buffer.from([0x56, 0x4d, 0x4c, 0x45, 0x54, 0x41, 0x47, 0x01]);
export const HEADER_BYTES = 12;
/** The largest payload a frame may carry. Bigger data is split; a header claiming more is an error. */
export const MAX_PAYLOAD = 64 * 1024;

export const FrameType = {
  /** Session start, both ways; payload JSON (HelloMessage). Always preceded by MAGIC. */
  Hello: 1,
  /** Host → agent: a request; stream = request id; payload JSON {op, ...}. */
  Request: 2,
  /** Agent → host: the answer to a request; stream = request id; payload JSON. */
  Response: 3,
  /** Agent → host: an event (main-process exit, exec exit); stream = 0 or the exec's stream; JSON. */
  Event: 4,
  /** Bytes of a stream; flags = channel (0 stdin, 1 stdout, 2 stderr). */
  Data: 5,
  /** End of one channel of a stream (flags = channel). */
  Eof: 6,
  /** Credit: the receiver may take payload (u32 BE) more bytes on this stream's channel (flags). */
  Window: 7,
  /** Host → agent: abandon a stream (stop a log follow; hang up an exec). */
  Reset: 8,
} as const;
export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];
const KNOWN_TYPES = new Set<number>(Object.values(FrameType));

export interface Frame {
  type: FrameTypeCode;
  flags: number;
  stream: number;
  payload: Buffer;
}

export class FrameError extends Error {
  override readonly name = 'FrameError';
}

/** One frame as bytes. Throws on a payload over MAX_PAYLOAD (a caller bug: split the data first). */
export function encodeFrame(type: FrameTypeCode, stream: number, payload: Buffer = EMPTY, flags = 0): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`frame payload of ${payload.length} bytes is over ${MAX_PAYLOAD}`);
  const out = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  writeHeader(out, 0, type, flags, stream, payload.length);
  payload.copy(out, HEADER_BYTES);
  return out;
}

/** The header alone, for writers that send the payload as its own buffer (no copy of bulk data). */
export function encodeHeader(type: FrameTypeCode, stream: number, length: number, flags = 0): Buffer {
  if (length > MAX_PAYLOAD) throw new RangeError(`frame payload of ${length} bytes is over ${MAX_PAYLOAD}`);
  const out = Buffer.allocUnsafe(HEADER_BYTES);
  writeHeader(out, 0, type, flags, stream, length);
  return out;
}

/** MAGIC followed by a HELLO frame carrying `message` as JSON. */
export function encodeHello(message: unknown): Buffer {
  return Buffer.concat([MAGIC, encodeFrame(FrameType.Hello, 0, Buffer.from(JSON.stringify(message)))]);
}

/** A JSON frame (request, response, event). */
export function encodeJson(type: FrameTypeCode, stream: number, message: unknown): Buffer {
  return encodeFrame(type, stream, Buffer.from(JSON.stringify(message)));
}

export function encodeWindow(stream: number, channel: number, bytes: number): Buffer {
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt32BE(bytes);
  return encodeFrame(FrameType.Window, stream, payload, channel);
}

function writeHeader(out: Buffer, at: number, type: number, flags: number, stream: number, length: number): void {
  out.writeUInt8(type, at);
  out.writeUInt8(flags, at + 1);
  out.writeUInt16BE(0, at + 2);
  out.writeUInt32BE(stream >>> 0, at + 4);
  out.writeUInt32BE(length, at + 8);
}

const EMPTY = Buffer.alloc(0);

export interface ParserEvents {
  frame(frame: Frame): void;
  /**
   * The stream stopped making sense (unknown type, reserved bits set, a length over MAX_PAYLOAD). The
   * parser has gone back to scanning for MAGIC + HELLO; what to do with the session is the caller's call.
   */
  error(err: FrameError): void;
}

/**
 * Incremental frame parser. Starts (and, after an error or resync(), restarts) in scanning mode, where
 * everything up to MAGIC followed by a valid HELLO frame is discarded; after that, frames follow one
 * another. It holds at most one frame's bytes (HEADER_BYTES + MAX_PAYLOAD, plus MAGIC) at any time,
 * whatever it is fed.
 */
export class FrameParser {
  private chunks: Buffer[] = [];
  private length = 0;
  private scanning = true;

  constructor(private readonly on: ParserEvents) {}

  /** Bytes held back waiting for the rest of a frame (or for MAGIC while scanning). */
  get buffered(): number {
    return this.length;
  }

  /** True while discarding bytes until MAGIC + HELLO. */
  get synchronizing(): boolean {
    return this.scanning;
  }

  /** Forget everything held and scan for MAGIC + HELLO again (e.g. the host went away). */
  resync(): void {
    this.chunks = [];
    this.length = 0;
    this.scanning = true;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
    for (;;) {
      if (this.scanning) {
        if (!this.scan()) return;
        continue;
      }
      if (this.length < HEADER_BYTES) return;
      if (this.chunks[0]![0] === MAGIC[0]) {
        // MAGIC at a frame boundary: a HELLO follows (a peer starting over, or repeating itself).
        if (this.length < MAGIC.length) return;
        if (this.peek(MAGIC.length).equals(MAGIC)) {
          this.consume(MAGIC.length);
          continue;
        }
      }
      const head = this.peek(HEADER_BYTES);
      const problem = headerProblem(head);
      if (problem) {
        // Drop the first byte only: a MAGIC may start anywhere inside what looked like a header.
        this.consume(1);
        this.scanning = true;
        this.on.error(new FrameError(problem));
        continue;
      }
      const total = HEADER_BYTES + head.readUInt32BE(8);
      if (this.length < total) return;
      const bytes = this.take(total);
      this.on.frame({
        type: bytes.readUInt8(0) as FrameTypeCode,
        flags: bytes.readUInt8(1),
        stream: bytes.readUInt32BE(4),
        payload: bytes.subarray(HEADER_BYTES),
      });
    }
  }

  /** Scanning mode: finds MAGIC + a complete HELLO frame. False when more bytes are needed. */
  private scan(): boolean {
    const all = this.flatten();
    const at = all.indexOf(MAGIC);
    if (at < 0) {
      // Keep only what could be the start of a MAGIC split across chunks.
      this.consume(Math.max(0, all.length - (MAGIC.length - 1)));
      return false;
    }
    this.consume(at);
    if (this.length < MAGIC.length + HEADER_BYTES) return false;
    const head = this.peek(MAGIC.length + HEADER_BYTES).subarray(MAGIC.length);
    if (headerProblem(head) || head.readUInt8(0) !== FrameType.Hello || head.readUInt32BE(4) !== 0) {
      this.consume(1); // not a hello after all: look for the next MAGIC
      return true;
    }
    const total = MAGIC.length + HEADER_BYTES + head.readUInt32BE(8);
    if (this.length < total) return false;
    this.consume(MAGIC.length);
    this.scanning = false;
    return true;
  }

  private flatten(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.length)];
    return this.chunks[0] ?? EMPTY;
  }

  private peek(n: number): Buffer {
    const first = this.chunks[0]!;
    return first.length >= n ? first.subarray(0, n) : this.flatten().subarray(0, n);
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    const all = first.length >= n ? first : this.flatten();
    const out = all.subarray(0, n);
    this.consume(n);
    return out;
  }

  private consume(n: number): void {
    this.length -= n;
    while (n > 0) {
      const first = this.chunks[0]!;
      if (first.length <= n) {
        this.chunks.shift();
        n -= first.length;
      } else {
        this.chunks[0] = first.subarray(n);
        n = 0;
      }
    }
  }
}

function headerProblem(head: Buffer): string | undefined {
  const type = head.readUInt8(0);
  if (!KNOWN_TYPES.has(type)) return `unknown frame type ${type}`;
  if (head.readUInt16BE(2) !== 0) return `reserved header bits set (0x${head.readUInt16BE(2).toString(16)})`;
  const length = head.readUInt32BE(8);
  if (length > MAX_PAYLOAD) return `frame payload length ${length} is over ${MAX_PAYLOAD}`;
  return undefined;
}
