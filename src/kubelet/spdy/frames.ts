// SPDY/3.1 frames as bytes: a push parser (bytes in, frames out through callbacks) and one encoder per
// frame type. Pure — no sockets, no timers, no zlib: header blocks stay compressed here and are handled
// by header-block.ts. Wire layout from SPDY Protocol Draft 3.1 and moby/spdystream's spdy/read.go and
// spdy/write.go (what client-go and the API server send).
//
// Every frame starts with 8 bytes. Control frames: 1 bit set, 15 bits version (3), 16 bits type,
// 8 bits flags, 24 bits payload length. DATA frames: 1 bit clear, 31 bits stream id, 8 bits flags,
// 24 bits length. All integers are big-endian; stream ids are 31 bits.

export const SPDY_VERSION = 3;
/** The largest payload a 24-bit length can say. */
export const MAX_FRAME_PAYLOAD = 0xffffff;
export const MAX_STREAM_ID = 0x7fffffff;
/** SPDY/3.1's initial flow-control window, per stream and per session (draft 3.1, 2.6.8). */
export const DEFAULT_INITIAL_WINDOW_SIZE = 64 * 1024;
/** Default cap on a control frame's payload: header blocks of Kubernetes streams are tens of bytes. */
export const DEFAULT_MAX_CONTROL_FRAME_LENGTH = 1024 * 1024;

export const ControlType = {
  SYN_STREAM: 1,
  SYN_REPLY: 2,
  RST_STREAM: 3,
  SETTINGS: 4,
  PING: 6,
  GOAWAY: 7,
  HEADERS: 8,
  WINDOW_UPDATE: 9,
} as const;

export const Flag = {
  /** DATA, SYN_STREAM, SYN_REPLY, HEADERS: the sender's last frame on the stream. */
  FIN: 0x01,
  /** SYN_STREAM: the receiver must not send on the stream. */
  UNIDIRECTIONAL: 0x02,
  /** SETTINGS: forget persisted settings. */
  CLEAR_SETTINGS: 0x01,
} as const;

/** RST_STREAM status codes (draft 3.1, 2.6.3); also the `status` of a parse error. */
export const RstStatus = {
  PROTOCOL_ERROR: 1,
  INVALID_STREAM: 2,
  REFUSED_STREAM: 3,
  UNSUPPORTED_VERSION: 4,
  CANCEL: 5,
  INTERNAL_ERROR: 6,
  FLOW_CONTROL_ERROR: 7,
  STREAM_IN_USE: 8,
  STREAM_ALREADY_CLOSED: 9,
  FRAME_TOO_LARGE: 11,
} as const;

export const GoAwayStatus = { OK: 0, PROTOCOL_ERROR: 1, INTERNAL_ERROR: 2 } as const;

export const SettingId = {
  UPLOAD_BANDWIDTH: 1,
  DOWNLOAD_BANDWIDTH: 2,
  ROUND_TRIP_TIME: 3,
  MAX_CONCURRENT_STREAMS: 4,
  CURRENT_CWND: 5,
  DOWNLOAD_RETRANS_RATE: 6,
  INITIAL_WINDOW_SIZE: 7,
  CLIENT_CERTIFICATE_VECTOR_SIZE: 8,
} as const;

/**
 * Payload of a DATA frame. A frame's payload may arrive as several consecutive DataFrames for the same
 * stream (the parser hands bytes on as they come rather than buffering up to 16 MiB); `fin` is set only
 * on the last one.
 */
export interface DataFrame {
  type: 'data';
  streamId: number;
  fin: boolean;
  data: Buffer;
}

export interface SynStreamFrame {
  type: 'syn_stream';
  streamId: number;
  associatedStreamId: number;
  /** 0 (highest) to 7. */
  priority: number;
  slot: number;
  fin: boolean;
  unidirectional: boolean;
  /** Compressed name/value block (header-block.ts). */
  headerBlock: Buffer;
}

export interface SynReplyFrame {
  type: 'syn_reply';
  streamId: number;
  fin: boolean;
  headerBlock: Buffer;
}

export interface RstStreamFrame {
  type: 'rst_stream';
  streamId: number;
  status: number;
}

export interface Setting {
  id: number;
  flags: number;
  value: number;
}

export interface SettingsFrame {
  type: 'settings';
  clearSettings: boolean;
  settings: Setting[];
}

export interface PingFrame {
  type: 'ping';
  id: number;
}

export interface GoAwayFrame {
  type: 'goaway';
  lastGoodStreamId: number;
  status: number;
}

export interface HeadersFrame {
  type: 'headers';
  streamId: number;
  fin: boolean;
  headerBlock: Buffer;
}

export interface WindowUpdateFrame {
  type: 'window_update';
  /** 0 for the session window (SPDY/3.1). */
  streamId: number;
  delta: number;
}

export type SpdyFrame =
  | DataFrame
  | SynStreamFrame
  | SynReplyFrame
  | RstStreamFrame
  | SettingsFrame
  | PingFrame
  | GoAwayFrame
  | HeadersFrame
  | WindowUpdateFrame;

/** Why the byte stream is not SPDY/3.1. After one, the parser ignores further input. */
export interface SpdyParseError {
  /** An RstStatus code: PROTOCOL_ERROR, UNSUPPORTED_VERSION or FRAME_TOO_LARGE. */
  status: number;
  reason: string;
  /** The stream the bad frame named, when it named one. */
  streamId?: number;
}

export interface SpdyFrameParserHandlers {
  onFrame(frame: SpdyFrame): void;
  onError(error: SpdyParseError): void;
}

export interface SpdyFrameParserOptions {
  /** Control frames with a longer payload are an error (FRAME_TOO_LARGE). Default 1 MiB. */
  maxControlFrameLength?: number;
}

type ParserState =
  | { kind: 'header' }
  | { kind: 'control'; type: number; flags: number; length: number }
  | { kind: 'data'; streamId: number; fin: boolean; remaining: number }
  | { kind: 'failed' };

/**
 * Turns pushed bytes into frames. Never throws on bad input: a malformed frame calls onError once and
 * the parser ignores everything after it (SPDY cannot resynchronise). Buffered bytes are bounded by
 * maxControlFrameLength + 8: DATA payloads are handed on as they arrive. Emitted Buffers may share
 * memory with the pushed ones, so callers must not reuse a buffer after pushing it. Exceptions thrown by
 * the handlers propagate to the caller of push().
 */
export class SpdyFrameParser {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private state: ParserState = { kind: 'header' };
  private readonly maxControlFrameLength: number;

  constructor(
    private readonly handlers: SpdyFrameParserHandlers,
    options: SpdyFrameParserOptions = {},
  ) {
    this.maxControlFrameLength = Math.min(options.maxControlFrameLength ?? DEFAULT_MAX_CONTROL_FRAME_LENGTH, MAX_FRAME_PAYLOAD);
  }

  /** True once a malformed frame was seen. */
  get failed(): boolean {
    return this.state.kind === 'failed';
  }

  /** Bytes held while waiting for the rest of a frame header or control frame. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  push(bytes: Uint8Array): void {
    if (this.failed || bytes.length === 0) return;
    const chunk = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      const state = this.state;
      if (state.kind === 'failed') return;
      if (state.kind === 'header') {
        if (this.buffered < 8) return;
        this.readHeader(this.take(8));
      } else if (state.kind === 'control') {
        if (this.buffered < state.length) return;
        const payload = this.take(state.length);
        this.state = { kind: 'header' };
        const result = decodeControlPayload(state.type, state.flags, payload);
        if (result === null) continue; // unknown type: ignored, as draft 3.1 section 2.2.1 requires
        if ('reason' in result) this.fail(result);
        else this.handlers.onFrame(result);
      } else {
        const n = Math.min(state.remaining, this.buffered);
        if (n === 0) return;
        const data = this.take(n);
        state.remaining -= n;
        if (state.remaining === 0) this.state = { kind: 'header' };
        this.handlers.onFrame({ type: 'data', streamId: state.streamId, fin: state.fin && state.remaining === 0, data });
      }
    }
  }

  private readHeader(header: Buffer): void {
    const word = header.readUInt32BE(0);
    const flags = header[4] ?? 0;
    const length = header.readUIntBE(5, 3);
    if (word & 0x80000000) {
      const version = (word >>> 16) & 0x7fff;
      const type = word & 0xffff;
      if (version !== SPDY_VERSION) {
        this.fail({ status: RstStatus.UNSUPPORTED_VERSION, reason: `control frame of SPDY version ${version}, not 3` });
      } else if (length > this.maxControlFrameLength) {
        this.fail({ status: RstStatus.FRAME_TOO_LARGE, reason: `control frame type ${type} of ${length} bytes (limit ${this.maxControlFrameLength})` });
      } else {
        this.state = { kind: 'control', type, flags, length };
      }
      return;
    }
    const streamId = word & MAX_STREAM_ID;
    if (streamId === 0) {
      this.fail({ status: RstStatus.PROTOCOL_ERROR, reason: 'DATA frame for stream 0' });
      return;
    }
    const fin = (flags & Flag.FIN) !== 0;
    if (length === 0) this.handlers.onFrame({ type: 'data', streamId, fin, data: Buffer.alloc(0) });
    else this.state = { kind: 'data', streamId, fin, remaining: length };
  }

  private fail(error: SpdyParseError): void {
    this.state = { kind: 'failed' };
    this.chunks = [];
    this.buffered = 0;
    this.handlers.onError(error);
  }

  /** Removes and returns the first n buffered bytes (n <= buffered), copying only across chunks. */
  private take(n: number): Buffer {
    this.buffered -= n;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let used = 0;
    while (filled < n) {
      const chunk = this.chunks[used]!;
      const k = Math.min(chunk.length, n - filled);
      chunk.copy(out, filled, 0, k);
      filled += k;
      if (k === chunk.length) used++;
      else this.chunks[used] = chunk.subarray(k);
    }
    this.chunks.splice(0, used);
    return out;
  }
}

function protocolError(reason: string, streamId?: number): SpdyParseError {
  return streamId === undefined ? { status: RstStatus.PROTOCOL_ERROR, reason } : { status: RstStatus.PROTOCOL_ERROR, reason, streamId };
}

/** A control frame from its type, flags and whole payload; null for a type SPDY/3.1 does not define. */
export function decodeControlPayload(type: number, flags: number, p: Buffer): SpdyFrame | SpdyParseError | null {
  const fin = (flags & Flag.FIN) !== 0;
  switch (type) {
    case ControlType.SYN_STREAM: {
      if (p.length < 10) return protocolError(`SYN_STREAM payload of ${p.length} bytes, at least 10 needed`);
      const streamId = p.readUInt32BE(0) & MAX_STREAM_ID;
      if (streamId === 0) return protocolError('SYN_STREAM for stream 0');
      return {
        type: 'syn_stream',
        streamId,
        associatedStreamId: p.readUInt32BE(4) & MAX_STREAM_ID,
        priority: (p[8] ?? 0) >> 5,
        slot: p[9] ?? 0,
        fin,
        unidirectional: (flags & Flag.UNIDIRECTIONAL) !== 0,
        headerBlock: p.subarray(10),
      };
    }
    case ControlType.SYN_REPLY:
    case ControlType.HEADERS: {
      const name = type === ControlType.SYN_REPLY ? 'SYN_REPLY' : 'HEADERS';
      if (p.length < 4) return protocolError(`${name} payload of ${p.length} bytes, at least 4 needed`);
      const streamId = p.readUInt32BE(0) & MAX_STREAM_ID;
      if (streamId === 0) return protocolError(`${name} for stream 0`);
      return { type: type === ControlType.SYN_REPLY ? 'syn_reply' : 'headers', streamId, fin, headerBlock: p.subarray(4) };
    }
    case ControlType.RST_STREAM: {
      if (p.length !== 8) return protocolError(`RST_STREAM payload of ${p.length} bytes, not 8`);
      const streamId = p.readUInt32BE(0) & MAX_STREAM_ID;
      const status = p.readUInt32BE(4);
      if (streamId === 0) return protocolError('RST_STREAM for stream 0');
      if (status === 0) return protocolError('RST_STREAM with status 0', streamId);
      return { type: 'rst_stream', streamId, status };
    }
    case ControlType.SETTINGS: {
      if (p.length < 4) return protocolError(`SETTINGS payload of ${p.length} bytes, at least 4 needed`);
      const count = p.readUInt32BE(0);
      if (p.length !== 4 + 8 * count) return protocolError(`SETTINGS says ${count} entries in ${p.length - 4} bytes`);
      const settings: Setting[] = [];
      for (let off = 4; off < p.length; off += 8) {
        const flagsAndId = p.readUInt32BE(off);
        settings.push({ flags: flagsAndId >>> 24, id: flagsAndId & 0xffffff, value: p.readUInt32BE(off + 4) });
      }
      return { type: 'settings', clearSettings: (flags & Flag.CLEAR_SETTINGS) !== 0, settings };
    }
    case ControlType.PING:
      if (p.length !== 4) return protocolError(`PING payload of ${p.length} bytes, not 4`);
      return { type: 'ping', id: p.readUInt32BE(0) };
    case ControlType.GOAWAY:
      if (p.length !== 8) return protocolError(`GOAWAY payload of ${p.length} bytes, not 8`);
      return { type: 'goaway', lastGoodStreamId: p.readUInt32BE(0) & MAX_STREAM_ID, status: p.readUInt32BE(4) };
    case ControlType.WINDOW_UPDATE:
      if (p.length !== 8) return protocolError(`WINDOW_UPDATE payload of ${p.length} bytes, not 8`);
      return { type: 'window_update', streamId: p.readUInt32BE(0) & MAX_STREAM_ID, delta: p.readUInt32BE(4) & 0x7fffffff };
    default:
      return null;
  }
}

// ---- encoders: each returns one frame's bytes; invalid arguments are programming errors and throw.

function checkId(what: string, id: number, allowZero: boolean): void {
  if (!Number.isInteger(id) || id < (allowZero ? 0 : 1) || id > MAX_STREAM_ID) throw new RangeError(`${what} ${id} is not a valid SPDY stream id`);
}

function checkU32(what: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`${what} ${value} does not fit 32 bits`);
}

function checkLength(length: number): void {
  if (length > MAX_FRAME_PAYLOAD) throw new RangeError(`frame payload of ${length} bytes exceeds the 24-bit length field`);
}

function controlFrame(type: number, flags: number, payloadLength: number): Buffer {
  checkLength(payloadLength);
  const frame = Buffer.allocUnsafe(8 + payloadLength);
  frame.writeUInt16BE(0x8000 | SPDY_VERSION, 0);
  frame.writeUInt16BE(type, 2);
  frame.writeUInt8(flags, 4);
  frame.writeUIntBE(payloadLength, 5, 3);
  return frame;
}

/** The 8 bytes before a DATA payload (for writev without copying the payload). */
export function encodeDataHeader(streamId: number, length: number, fin = false): Buffer {
  checkId('DATA stream', streamId, false);
  checkLength(length);
  const header = Buffer.allocUnsafe(8);
  header.writeUInt32BE(streamId, 0);
  header.writeUInt8(fin ? Flag.FIN : 0, 4);
  header.writeUIntBE(length, 5, 3);
  return header;
}

export function encodeData(streamId: number, data: Uint8Array, fin = false): Buffer {
  return Buffer.concat([encodeDataHeader(streamId, data.length, fin), data]);
}

export interface SynStreamOptions {
  streamId: number;
  headerBlock: Uint8Array;
  associatedStreamId?: number;
  priority?: number;
  slot?: number;
  fin?: boolean;
  unidirectional?: boolean;
}

export function encodeSynStream(o: SynStreamOptions): Buffer {
  checkId('SYN_STREAM stream', o.streamId, false);
  checkId('associated stream', o.associatedStreamId ?? 0, true);
  const priority = o.priority ?? 0;
  if (!Number.isInteger(priority) || priority < 0 || priority > 7) throw new RangeError(`priority ${priority} is not 0..7`);
  const flags = (o.fin ? Flag.FIN : 0) | (o.unidirectional ? Flag.UNIDIRECTIONAL : 0);
  const frame = controlFrame(ControlType.SYN_STREAM, flags, 10 + o.headerBlock.length);
  frame.writeUInt32BE(o.streamId, 8);
  frame.writeUInt32BE(o.associatedStreamId ?? 0, 12);
  frame.writeUInt8(priority << 5, 16);
  frame.writeUInt8((o.slot ?? 0) & 0xff, 17);
  frame.set(o.headerBlock, 18);
  return frame;
}

function encodeStreamHeaderBlock(type: number, streamId: number, headerBlock: Uint8Array, fin: boolean): Buffer {
  checkId('stream', streamId, false);
  const frame = controlFrame(type, fin ? Flag.FIN : 0, 4 + headerBlock.length);
  frame.writeUInt32BE(streamId, 8);
  frame.set(headerBlock, 12);
  return frame;
}

export function encodeSynReply(streamId: number, headerBlock: Uint8Array, fin = false): Buffer {
  return encodeStreamHeaderBlock(ControlType.SYN_REPLY, streamId, headerBlock, fin);
}

export function encodeHeaders(streamId: number, headerBlock: Uint8Array, fin = false): Buffer {
  return encodeStreamHeaderBlock(ControlType.HEADERS, streamId, headerBlock, fin);
}

export function encodeRstStream(streamId: number, status: number): Buffer {
  checkId('RST_STREAM stream', streamId, false);
  checkU32('RST_STREAM status', status);
  if (status === 0) throw new RangeError('RST_STREAM status 0 is not valid');
  const frame = controlFrame(ControlType.RST_STREAM, 0, 8);
  frame.writeUInt32BE(streamId, 8);
  frame.writeUInt32BE(status, 12);
  return frame;
}

export function encodeSettings(settings: readonly Setting[], clearSettings = false): Buffer {
  const frame = controlFrame(ControlType.SETTINGS, clearSettings ? Flag.CLEAR_SETTINGS : 0, 4 + 8 * settings.length);
  frame.writeUInt32BE(settings.length, 8);
  settings.forEach((s, i) => {
    if (!Number.isInteger(s.id) || s.id < 0 || s.id > 0xffffff) throw new RangeError(`setting id ${s.id} does not fit 24 bits`);
    checkU32('setting value', s.value);
    frame.writeUInt32BE((((s.flags & 0xff) << 24) | s.id) >>> 0, 12 + 8 * i);
    frame.writeUInt32BE(s.value, 16 + 8 * i);
  });
  return frame;
}

export function encodePing(id: number): Buffer {
  checkU32('PING id', id);
  const frame = controlFrame(ControlType.PING, 0, 4);
  frame.writeUInt32BE(id, 8);
  return frame;
}

export function encodeGoAway(lastGoodStreamId: number, status: number = GoAwayStatus.OK): Buffer {
  checkId('GOAWAY last-good stream', lastGoodStreamId, true);
  checkU32('GOAWAY status', status);
  const frame = controlFrame(ControlType.GOAWAY, 0, 8);
  frame.writeUInt32BE(lastGoodStreamId, 8);
  frame.writeUInt32BE(status, 12);
  return frame;
}

export function encodeWindowUpdate(streamId: number, delta: number): Buffer {
  checkId('WINDOW_UPDATE stream', streamId, true);
  if (!Number.isInteger(delta) || delta < 1 || delta > 0x7fffffff) throw new RangeError(`window delta ${delta} is not 1..2^31-1`);
  const frame = controlFrame(ControlType.WINDOW_UPDATE, 0, 8);
  frame.writeUInt32BE(streamId, 8);
  frame.writeUInt32BE(delta, 12);
  return frame;
}

/** Any frame, by its parsed shape (for tests and fuzzing; the connection uses the functions above). */
export function encodeFrame(frame: SpdyFrame): Buffer {
  switch (frame.type) {
    case 'data':
      return encodeData(frame.streamId, frame.data, frame.fin);
    case 'syn_stream':
      return encodeSynStream(frame);
    case 'syn_reply':
      return encodeSynReply(frame.streamId, frame.headerBlock, frame.fin);
    case 'headers':
      return encodeHeaders(frame.streamId, frame.headerBlock, frame.fin);
    case 'rst_stream':
      return encodeRstStream(frame.streamId, frame.status);
    case 'settings':
      return encodeSettings(frame.settings, frame.clearSettings);
    case 'ping':
      return encodePing(frame.id);
    case 'goaway':
      return encodeGoAway(frame.lastGoodStreamId, frame.status);
    case 'window_update':
      return encodeWindowUpdate(frame.streamId, frame.delta);
  }
}
