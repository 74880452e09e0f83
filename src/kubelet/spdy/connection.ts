// The server side of a SPDY/3.1 connection, as the API server and client-go open them towards a kubelet
// after `Upgrade: SPDY/3.1`: a thin I/O shell around frames.ts and header-block.ts. The peer opens
// streams (odd ids) and each becomes a SpdyStream, a Duplex. vmlet never opens streams itself.
//
// Deliberately matched to moby/spdystream (connection.go, stream.go), the only peer that matters:
// - It never sends WINDOW_UPDATE and ignores received ones, so outgoing flow-control windows are not
//   enforced here (enforcing them would stall every stream after 64 KiB). Incoming data is granted back
//   with WINDOW_UPDATEs as it arrives, for stricter peers; real backpressure is TCP's: the socket is
//   paused while any stream's read buffer is full.
// - It drops DATA on a stream that has not been replied to, so a stream's first write sends SYN_REPLY
//   when reply() was not called yet.
// - It stops reading at the first GOAWAY, so GOAWAY is the last frame close() sends.
// - It sends PINGs with odd ids and expects them echoed; ours are even (draft 3.1, 2.6.5).
import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import {
  DEFAULT_INITIAL_WINDOW_SIZE,
  GoAwayStatus,
  RstStatus,
  SpdyFrameParser,
  encodeDataHeader,
  encodeGoAway,
  encodePing,
  encodeRstStream,
  encodeSynReply,
  encodeWindowUpdate,
  type DataFrame,
  type HeadersFrame,
  type SpdyFrame,
  type SpdyParseError,
  type SynStreamFrame,
} from './frames.ts';
import { HeaderBlockError, HeaderCompressor, HeaderDecompressor, type HeaderValues, type HeadersInput } from './header-block.ts';

export interface SpdyConnectionOptions {
  /** Close the connection (streams reset, GOAWAY) after this long without a frame either way. Default: never. */
  idleTimeoutMs?: number;
  /** Bytes already read from the socket past the upgrade request (the `head` of an 'upgrade' event). */
  head?: Buffer;
  /** Streams open at once; more are refused with RST_STREAM REFUSED_STREAM. Default 1000. */
  maxConcurrentStreams?: number;
  /** Cap on a control frame's payload. Default 1 MiB. */
  maxControlFrameLength?: number;
  /** Cap on a decompressed header block. Default 1 MiB. */
  maxHeaderBlockBytes?: number;
  /** Read buffer of one stream past which the socket stops being read. Default 256 KiB. */
  streamHighWaterMark?: number;
  /** How long close() waits for ended streams to flush, and then for the peer to close. Default 5 s. */
  closeTimeoutMs?: number;
}

export interface SpdyConnectionEvents {
  /** A stream the peer opened. Call reply() (or just write) to accept it, reset() to refuse it. */
  stream: [stream: SpdyStream];
  /** The peer sent GOAWAY: it opens no more streams; the connection closes when the open ones are done. */
  goaway: [lastGoodStreamId: number, status: number];
  /** The socket closed. `reason` says why when it was not an orderly close. */
  close: [reason: string | undefined];
}

const MAX_DATA_FRAME = 64 * 1024;
const WINDOW_UPDATE_THRESHOLD = DEFAULT_INITIAL_WINDOW_SIZE / 2;

export class SpdyConnection extends EventEmitter<SpdyConnectionEvents> {
  /** Resolves once the socket has closed and every stream is destroyed. */
  readonly closed: Promise<void>;

  private readonly parser: SpdyFrameParser;
  private readonly compressor = new HeaderCompressor();
  private readonly decompressor: HeaderDecompressor;
  private readonly streams = new Map<number, SpdyStream>();
  private readonly pausedBy = new Set<SpdyStream>();
  private readonly pings = new Map<number, { resolve: (ms: number) => void; reject: (err: Error) => void; sentAt: number; timer: NodeJS.Timeout }>();
  private drainWaiters: ((err?: Error) => void)[] = [];
  private lastPeerStreamId = 0;
  private lastInvalidDataStream = 0;
  private nextPingId = 2;
  private sessionUnacked = 0;
  private closing = false;
  private goAwaySent = false;
  private goAwayReceived = false;
  private finalized = false;
  private closeReason: string | undefined;
  private lastActivity = Date.now();
  private idleTimer: NodeJS.Timeout | undefined;
  private closeTimer: NodeJS.Timeout | undefined;
  private resolveClosed!: () => void;

  private readonly maxConcurrentStreams: number;
  private readonly streamHighWaterMark: number;
  private readonly closeTimeoutMs: number;
  private readonly idleTimeoutMs: number;

  private readonly onData = (chunk: Buffer): void => this.receive(chunk);
  private readonly onEnd = (): void => this.shutdown(undefined);
  private readonly onError = (err: Error): void => {
    this.closeReason ??= `socket error: ${err.message}`;
    this.socket.destroy();
  };
  private readonly onClose = (): void => this.finalize();
  private readonly onDrain = (): void => this.runDrainWaiters();

  constructor(
    private readonly socket: Duplex,
    options: SpdyConnectionOptions = {},
  ) {
    super();
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.maxConcurrentStreams = options.maxConcurrentStreams ?? 1000;
    this.streamHighWaterMark = options.streamHighWaterMark ?? 256 * 1024;
    this.closeTimeoutMs = options.closeTimeoutMs ?? 5000;
    this.idleTimeoutMs = options.idleTimeoutMs ?? 0;
    this.decompressor = new HeaderDecompressor({ maxBlockBytes: options.maxHeaderBlockBytes });
    this.parser = new SpdyFrameParser(
      { onFrame: (frame) => this.handleFrame(frame), onError: (error) => this.handleParseError(error) },
      { maxControlFrameLength: options.maxControlFrameLength },
    );
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
    socket.on('drain', this.onDrain);
    this.armIdleTimer();
    // Reading starts on the next tick, so that 'stream' listeners added right after construction hear
    // the streams in `head` too.
    process.nextTick(() => {
      if (this.finalized) return;
      if (socket.destroyed) return this.finalize();
      if (options.head && options.head.length > 0) this.receive(options.head);
      socket.on('data', this.onData);
      socket.on('end', this.onEnd);
    });
  }

  /** Streams the peer opened that are not closed yet. */
  get openStreams(): number {
    return this.streams.size;
  }

  /** Round trip in ms of a PING to the peer. Rejects on timeout or when the connection closes. */
  ping(timeoutMs = 10_000): Promise<number> {
    if (this.finalized || this.goAwaySent) return Promise.reject(new Error('SPDY connection is closed'));
    const id = this.nextPingId;
    this.nextPingId = this.nextPingId >= 0x7ffffffe ? 2 : this.nextPingId + 2;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pings.delete(id);
        reject(new Error(`SPDY PING ${id} unanswered after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pings.set(id, { resolve, reject, sentAt: performance.now(), timer });
      this.write(encodePing(id));
    });
  }

  /**
   * Ends the connection in order: streams whose writable side was ended get up to closeTimeoutMs to
   * flush, every stream still open is reset (CANCEL), GOAWAY goes last, then the socket is ended.
   */
  close(): Promise<void> {
    if (this.closing || this.finalized) return this.closed;
    this.closing = true;
    clearTimeout(this.idleTimer);
    const flushing: Promise<void>[] = [];
    for (const stream of [...this.streams.values()]) {
      if (stream.writableEnded && !stream.writableFinished && !stream.destroyed) {
        flushing.push(new Promise((resolve) => {
          stream.once('finish', resolve);
          stream.once('close', resolve);
        }));
      } else if (!stream.writableEnded) {
        stream.reset(RstStatus.CANCEL);
      }
    }
    const finish = (): void => {
      for (const stream of [...this.streams.values()]) stream.reset(RstStatus.CANCEL);
      this.sendGoAway(GoAwayStatus.OK);
      this.endSocket();
    };
    if (flushing.length === 0) {
      finish();
    } else {
      let timer: NodeJS.Timeout | undefined;
      void Promise.race([Promise.all(flushing), new Promise((resolve) => (timer = setTimeout(resolve, this.closeTimeoutMs)))]).then(() => {
        clearTimeout(timer);
        if (!this.finalized) finish();
      });
    }
    return this.closed;
  }

  /** Closes the socket now, without GOAWAY; every stream is destroyed. */
  destroy(reason?: string): void {
    this.closeReason ??= reason;
    this.socket.destroy();
    this.finalize();
  }

  // ---- receiving

  private receive(chunk: Buffer): void {
    if (this.finalized || this.parser.failed) return;
    this.lastActivity = Date.now();
    this.parser.push(chunk);
  }

  private handleParseError(error: SpdyParseError): void {
    this.sessionError(GoAwayStatus.PROTOCOL_ERROR, `${error.reason} (SPDY status ${error.status})`);
  }

  private handleFrame(frame: SpdyFrame): void {
    if (this.finalized) return;
    switch (frame.type) {
      case 'syn_stream':
        return this.onSynStream(frame);
      case 'data':
        return this.onDataFrame(frame);
      case 'headers':
        return this.onHeaders(frame);
      case 'syn_reply': {
        // vmlet opens no streams, so a SYN_REPLY can only be wrong; its block still feeds the shared context.
        if (this.decodeHeaders(frame.headerBlock) === null) return;
        const stream = this.streams.get(frame.streamId);
        if (stream) stream.abort(RstStatus.PROTOCOL_ERROR, true);
        else this.sendRst(frame.streamId, RstStatus.INVALID_STREAM);
        return;
      }
      case 'rst_stream':
        this.streams.get(frame.streamId)?.peerReset(frame.status);
        return;
      case 'ping':
        if (frame.id % 2 === 1) {
          this.write(encodePing(frame.id));
        } else {
          const pending = this.pings.get(frame.id);
          if (pending) {
            this.pings.delete(frame.id);
            clearTimeout(pending.timer);
            pending.resolve(performance.now() - pending.sentAt);
          }
        }
        return;
      case 'goaway':
        this.goAwayReceived = true;
        this.emit('goaway', frame.lastGoodStreamId, frame.status);
        if (this.streams.size === 0) this.shutdown(undefined);
        return;
      case 'settings':
      case 'window_update':
        // See the top of this file: spdystream never sends these, and outgoing windows are not enforced.
        return;
    }
  }

  /** The peer's header block as a map, or null after turning a failure into a session error. */
  private decodeHeaders(block: Buffer): HeaderValues | null {
    try {
      return this.decompressor.decompress(block);
    } catch (err) {
      const reason = err instanceof HeaderBlockError ? err.message : String(err);
      this.sessionError(GoAwayStatus.PROTOCOL_ERROR, `bad header block: ${reason}`);
      return null;
    }
  }

  private onSynStream(frame: SynStreamFrame): void {
    const headers = this.decodeHeaders(frame.headerBlock);
    if (headers === null) return;
    const id = frame.streamId;
    // Draft 3.1, 2.6.6: after sending GOAWAY, new streams are ignored.
    if (this.goAwaySent) return;
    if (id % 2 === 0) return this.sendRst(id, RstStatus.PROTOCOL_ERROR);
    const existing = this.streams.get(id);
    if (existing) {
      // Draft 3.1, 2.3.2: a second SYN_STREAM for an open stream is a stream error.
      existing.abort(RstStatus.PROTOCOL_ERROR, true);
      return;
    }
    if (id <= this.lastPeerStreamId) {
      // Draft 3.1, 2.3.2: stream ids must increase; a lower one is a session error.
      return this.sessionError(GoAwayStatus.PROTOCOL_ERROR, `SYN_STREAM ${id} after ${this.lastPeerStreamId}`);
    }
    this.lastPeerStreamId = id;
    if (this.closing || this.goAwayReceived || this.streams.size >= this.maxConcurrentStreams || this.listenerCount('stream') === 0) {
      return this.sendRst(id, RstStatus.REFUSED_STREAM);
    }
    const stream = new SpdyStream(this.host, frame, headers, this.streamHighWaterMark);
    this.streams.set(id, stream);
    if (frame.fin) stream.remoteEnd();
    this.emit('stream', stream);
  }

  private onDataFrame(frame: DataFrame): void {
    const stream = this.streams.get(frame.streamId);
    if (!stream) {
      // Data still in flight for a stream that was closed or reset is dropped; data for a stream that
      // never existed is a stream error (draft 3.1, 2.2.2), reported once rather than once per piece.
      const known = frame.streamId % 2 === 1 && frame.streamId <= this.lastPeerStreamId;
      if (!known && !this.goAwaySent && this.lastInvalidDataStream !== frame.streamId) {
        this.lastInvalidDataStream = frame.streamId;
        this.sendRst(frame.streamId, RstStatus.INVALID_STREAM);
      }
      return;
    }
    if (stream.remoteFinished) {
      stream.abort(RstStatus.STREAM_ALREADY_CLOSED, true);
      return;
    }
    if (frame.data.length > 0) {
      this.grantWindow(stream, frame.data.length);
      if (!stream.push(frame.data)) {
        this.pausedBy.add(stream);
        this.socket.pause();
      }
    }
    if (frame.fin) stream.remoteEnd();
  }

  private onHeaders(frame: HeadersFrame): void {
    const headers = this.decodeHeaders(frame.headerBlock);
    if (headers === null) return;
    const stream = this.streams.get(frame.streamId);
    if (!stream) {
      if (frame.streamId > this.lastPeerStreamId || frame.streamId % 2 === 0) this.sendRst(frame.streamId, RstStatus.INVALID_STREAM);
      return;
    }
    if (stream.remoteFinished) {
      stream.abort(RstStatus.STREAM_ALREADY_CLOSED, true);
      return;
    }
    stream.emit('headers', headers);
    if (frame.fin) stream.remoteEnd();
  }

  /** WINDOW_UPDATEs for received data, once half a default window has accumulated. */
  private grantWindow(stream: SpdyStream, length: number): void {
    this.sessionUnacked += length;
    if (this.sessionUnacked >= WINDOW_UPDATE_THRESHOLD) {
      this.write(encodeWindowUpdate(0, this.sessionUnacked));
      this.sessionUnacked = 0;
    }
    stream.unacked += length;
    if (stream.unacked >= WINDOW_UPDATE_THRESHOLD) {
      this.write(encodeWindowUpdate(stream.id, stream.unacked));
      stream.unacked = 0;
    }
  }

  // ---- sending

  private write(frame: Buffer): boolean {
    if (this.finalized || this.socket.destroyed || this.socket.writableEnded) return true;
    this.lastActivity = Date.now();
    return this.socket.write(frame);
  }

  private sendRst(streamId: number, status: number): void {
    this.write(encodeRstStream(streamId, status));
  }

  private sendGoAway(status: number): void {
    if (this.goAwaySent) return;
    this.goAwaySent = true;
    this.write(encodeGoAway(this.lastPeerStreamId, status));
  }

  private runDrainWaiters(err?: Error): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const waiter of waiters) waiter(err);
  }

  /** What a SpdyStream may ask of its connection. */
  private readonly host: StreamHost = {
    sendReply: (stream, headers) => {
      this.write(encodeSynReply(stream.id, this.compressor.compress(headers)));
    },
    sendData: (stream, data, fin, callback) => {
      if (this.finalized || this.socket.destroyed || this.socket.writableEnded) {
        // Destroyed first, so the failed write reaches the write's callback but is not an 'error' event
        // on a stream whose user only learns of the lost connection from 'close'.
        stream.abort(RstStatus.CANCEL, false);
        callback(new Error('SPDY connection is closed'));
        return;
      }
      let ok = true;
      if (data.length === 0) {
        ok = this.write(encodeDataHeader(stream.id, 0, fin));
      } else {
        for (let off = 0; off < data.length; off += MAX_DATA_FRAME) {
          const piece = data.subarray(off, off + MAX_DATA_FRAME);
          const last = off + MAX_DATA_FRAME >= data.length;
          this.write(encodeDataHeader(stream.id, piece.length, fin && last));
          ok = this.write(piece);
        }
      }
      if (ok) callback();
      else this.drainWaiters.push(callback);
    },
    sendRst: (stream, status) => this.sendRst(stream.id, status),
    wantsData: (stream) => {
      if (this.pausedBy.delete(stream) && this.pausedBy.size === 0 && !this.finalized) this.socket.resume();
    },
    forget: (stream) => {
      if (this.streams.get(stream.id) === stream) this.streams.delete(stream.id);
      this.host.wantsData(stream);
      if (this.streams.size === 0 && this.goAwayReceived && !this.closing) this.shutdown(undefined);
    },
    alive: () => !this.finalized && !this.socket.destroyed && !this.socket.writableEnded,
  };

  // ---- ending

  /** A session error (draft 3.1, 2.4.1): GOAWAY with the status, then the socket ends. */
  private sessionError(status: number, reason: string): void {
    if (this.finalized) return;
    this.closeReason ??= reason;
    this.closing = true;
    for (const stream of [...this.streams.values()]) stream.abort(RstStatus.CANCEL, false);
    this.sendGoAway(status);
    this.endSocket();
  }

  /** The peer is done (TCP FIN, or GOAWAY with no streams left): end our side too. */
  private shutdown(reason: string | undefined): void {
    if (this.finalized) return;
    this.closeReason ??= reason;
    this.closing = true;
    for (const stream of [...this.streams.values()]) stream.abort(RstStatus.CANCEL, false);
    this.endSocket();
  }

  private endSocket(): void {
    clearTimeout(this.idleTimer);
    if (!this.socket.writableEnded) this.socket.end();
    this.socket.resume(); // keep reading so the peer's FIN (and 'close') can arrive
    if (this.closeTimer === undefined && !this.finalized) {
      this.closeTimer = setTimeout(() => this.socket.destroy(), this.closeTimeoutMs);
    }
  }

  private finalize(): void {
    if (this.finalized) return;
    this.finalized = true;
    this.closing = true;
    clearTimeout(this.idleTimer);
    clearTimeout(this.closeTimer);
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onClose);
    this.socket.off('drain', this.onDrain);
    // 'error' stays subscribed: a late socket error must not become an uncaught exception.
    for (const stream of [...this.streams.values()]) stream.abort(RstStatus.CANCEL, false);
    this.streams.clear();
    this.pausedBy.clear();
    const closedErr = new Error('SPDY connection closed');
    this.runDrainWaiters(closedErr);
    for (const [id, ping] of this.pings) {
      clearTimeout(ping.timer);
      ping.reject(new Error(`SPDY connection closed before PING ${id} was answered`));
    }
    this.pings.clear();
    this.emit('close', this.closeReason);
    this.resolveClosed();
  }

  private armIdleTimer(): void {
    if (this.idleTimeoutMs <= 0) return;
    const check = (): void => {
      if (this.closing || this.finalized) return;
      const idleFor = Date.now() - this.lastActivity;
      if (idleFor >= this.idleTimeoutMs) {
        this.closeReason ??= `idle for ${this.idleTimeoutMs} ms`;
        void this.close();
      } else {
        this.idleTimer = setTimeout(check, this.idleTimeoutMs - idleFor);
      }
    };
    this.idleTimer = setTimeout(check, this.idleTimeoutMs);
  }
}

interface StreamHost {
  sendReply(stream: SpdyStream, headers: HeadersInput): void;
  sendData(stream: SpdyStream, data: Buffer, fin: boolean, callback: (err?: Error) => void): void;
  sendRst(stream: SpdyStream, status: number): void;
  /** The stream's reader wants more: the socket may be read again. */
  wantsData(stream: SpdyStream): void;
  /** The stream is closed on the wire; drop it from the connection. */
  forget(stream: SpdyStream): void;
  alive(): boolean;
}

/**
 * One stream the peer opened. Readable side: the peer's DATA, ending at its FIN. Writable side: DATA
 * frames to the peer; end() sends FIN. Events besides Duplex's: 'reset' (status) when the peer resets
 * the stream (it is then destroyed without an error), 'headers' (HeaderValues) for a HEADERS frame.
 * A stream destroyed by the connection going away closes without 'end'.
 */
export class SpdyStream extends Duplex {
  readonly id: number;
  /** The SYN_STREAM's headers, names lowercase; several values of one name joined by ", ". */
  readonly headers: Readonly<Record<string, string>>;
  /** The same headers with every value kept apart. */
  readonly headerValues: HeaderValues;
  readonly priority: number;
  /** @internal bytes received and not yet granted back with WINDOW_UPDATE. */
  unacked = 0;

  private replied = false;
  private localFinished: boolean;
  private remoteFinishedFlag = false;
  private wireClosed = false;
  private resetStatus: number | undefined;

  /** @internal created by SpdyConnection only. */
  constructor(
    private readonly host: StreamHost,
    frame: SynStreamFrame,
    headers: HeaderValues,
    highWaterMark: number,
  ) {
    super({ allowHalfOpen: true, readableHighWaterMark: highWaterMark, decodeStrings: true });
    this.id = frame.streamId;
    this.priority = frame.priority;
    this.headerValues = headers;
    const flat: Record<string, string> = Object.create(null) as Record<string, string>;
    for (const [name, values] of headers) flat[name] = values.join(', ');
    this.headers = flat;
    // A unidirectional stream may not be written to by this side (draft 3.1, 2.6.1).
    this.localFinished = frame.unidirectional;
  }

  /** True once the peer sent FIN (or reset the stream). */
  get remoteFinished(): boolean {
    return this.remoteFinishedFlag;
  }

  /** The RST_STREAM status, once the stream was reset by either side. */
  get resetCode(): number | undefined {
    return this.resetStatus;
  }

  /** Accepts the stream with SYN_REPLY. Once only; later calls do nothing. */
  reply(headers: HeadersInput = {}): void {
    if (this.replied || this.wireClosed || !this.host.alive()) return;
    this.replied = true;
    this.host.sendReply(this, headers);
  }

  /** Resets the stream (RST_STREAM) and destroys it. */
  reset(status: number = RstStatus.CANCEL): void {
    this.abort(status, true);
  }

  /** @internal the peer's FIN arrived. */
  remoteEnd(): void {
    if (this.remoteFinishedFlag) return;
    this.remoteFinishedFlag = true;
    this.push(null);
    this.maybeWireClosed();
  }

  /** @internal the peer reset the stream. */
  peerReset(status: number): void {
    if (this.wireClosed) return;
    this.resetStatus = status;
    this.markWireClosed();
    this.emit('reset', status);
    this.destroy();
  }

  /** @internal ends the stream at once; with `sendRst`, tells the peer with RST_STREAM. */
  abort(status: number, sendRst: boolean): void {
    if (!this.wireClosed) {
      this.resetStatus = status;
      if (sendRst && this.host.alive()) this.host.sendRst(this, status);
      this.markWireClosed();
    }
    this.destroy();
  }

  override _read(): void {
    this.host.wantsData(this);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.localFinished || this.wireClosed) {
      callback(new Error(`SPDY stream ${this.id} is closed for writing`));
      return;
    }
    this.reply();
    this.host.sendData(this, chunk, false, callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (this.localFinished || this.wireClosed) {
      callback();
      return;
    }
    this.reply();
    this.localFinished = true;
    this.host.sendData(this, Buffer.alloc(0), true, (err) => {
      this.maybeWireClosed();
      callback(err);
    });
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // Destroyed by its user before both sides finished: the peer must learn the stream is gone.
    if (!this.wireClosed) {
      this.resetStatus = RstStatus.CANCEL;
      if (this.host.alive()) this.host.sendRst(this, RstStatus.CANCEL);
      this.markWireClosed();
    }
    callback(error);
  }

  private maybeWireClosed(): void {
    if (this.localFinished && this.remoteFinishedFlag) this.markWireClosed();
  }

  private markWireClosed(): void {
    if (this.wireClosed) return;
    this.wireClosed = true;
    this.host.forget(this);
  }
}
