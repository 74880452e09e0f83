// `exec` and `attach` over a WebSocket, as the kubelet serves them to direct clients and to an API
// server with ExtendWebSocketsToKubelet: one WebSocket whose messages each start with a channel byte —
// 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize (k8s.io/apimachinery pkg/util/remotecommand
// constants.go). In the base64 protocols the channel is an ASCII digit and the rest is base64 text
// (k8s.io/streaming pkg/httpstream/wsstream conn.go). v5 adds the client's close signal, a binary
// message [255, channel] (e.g. stdin's EOF; client-go tools/remotecommand websocket.go, stream.Close);
// before v5 stdin ends when the connection does. Protocol choice follows wsstream's handshake: the
// first protocol in the client's list that is supported; none offered means channel.k8s.io.
import type { IncomingMessage } from 'node:http';
import { Readable, Writable, type Duplex } from 'node:stream';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { ResizeParser } from './resize.ts';
import type { RemoteCommandProtocol, RemoteCommandStreams, StatusObject, TerminalSize } from './remote-command.ts';
import type { WantedStreams } from './spdy-remote-command.ts';
import { headerList, rejectUpgrade } from './upgrade.ts';

export const CHANNEL = { stdin: 0, stdout: 1, stderr: 2, error: 3, resize: 4, close: 255 } as const;

const VERSIONS = ['v5.', 'v4.', 'v3.', 'v2.', ''] as const;

/** Subprotocols accepted, newest first: each version in binary and base64 form ("v4.base64.channel.k8s.io"). */
export const WEBSOCKET_REMOTE_COMMAND_SUBPROTOCOLS: readonly string[] = VERSIONS.flatMap((v) => [`${v}channel.k8s.io`, `${v}base64.channel.k8s.io`]);

/** A frame bigger than this closes the connection (1009): client-go writes 32 KiB at a time. */
const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;
/** How long finish() waits for the client to answer the close handshake before dropping the socket. */
const CLOSE_TIMEOUT_MS = 5000;

export interface WebSocketProtocolChoice {
  /** The Sec-WebSocket-Protocol answered; '' when the client offered none. */
  subprotocol: string;
  protocol: RemoteCommandProtocol;
  base64: boolean;
}

/** The subprotocol for a client's offer (in its order), or null when none of them is spoken here. */
export function chooseWebSocketProtocol(offered: readonly string[]): WebSocketProtocolChoice | null {
  if (offered.length === 0) return { subprotocol: '', protocol: 'channel.k8s.io', base64: false };
  const subprotocol = offered.find((p) => WEBSOCKET_REMOTE_COMMAND_SUBPROTOCOLS.includes(p));
  if (subprotocol === undefined) return null;
  const base64 = subprotocol.includes('base64.');
  return { subprotocol, protocol: subprotocol.replace('base64.', '') as RemoteCommandProtocol, base64 };
}

/** One message for a channel, in the negotiated encoding. */
export function encodeChannelMessage(channel: number, data: Uint8Array, base64: boolean): Buffer | string {
  if (base64) return String.fromCharCode(48 + channel) + Buffer.from(data).toString('base64');
  const message = Buffer.allocUnsafe(data.length + 1);
  message[0] = channel;
  message.set(data, 1);
  return message;
}

export type ChannelMessage = { kind: 'data'; channel: number; data: Buffer } | { kind: 'close'; channel: number } | { kind: 'invalid'; reason: string } | { kind: 'empty' };

/** Reads one client message (wsstream's conn.handle). The close signal exists in binary v5 only. */
export function decodeChannelMessage(message: Buffer, base64: boolean, closeSignal: boolean): ChannelMessage {
  if (message.length === 0) return { kind: 'empty' };
  if (closeSignal && message[0] === CHANNEL.close) {
    if (message.length !== 2) return { kind: 'invalid', reason: `close signal of ${message.length - 1} bytes, not 1` };
    return { kind: 'close', channel: message[1]! };
  }
  if (base64) return { kind: 'data', channel: message[0]! - 48, data: Buffer.from(message.toString('latin1', 1), 'base64') };
  return { kind: 'data', channel: message[0]!, data: message.subarray(1) };
}

export class WebSocketSetupError extends Error {
  override name = 'WebSocketSetupError';
}

function asBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/**
 * Upgrades the request to a WebSocket speaking the negotiated channel protocol and returns its streams.
 * Rejects with WebSocketSetupError, the socket answered or closed, when no offered subprotocol is spoken
 * (403, like wsstream) or the request is not a valid WebSocket upgrade (400, from ws).
 */
export async function acceptWebSocketRemoteCommand(req: IncomingMessage, socket: Duplex, head: Buffer, wanted: WantedStreams): Promise<RemoteCommandStreams> {
  const offered = headerList(req, 'sec-websocket-protocol');
  const choice = chooseWebSocketProtocol(offered);
  if (!choice) {
    const message = `requested protocol(s) are not supported: [${offered.join(' ')}]; supports [${WEBSOCKET_REMOTE_COMMAND_SUBPROTOCOLS.join(' ')}]`;
    rejectUpgrade(socket, 403, message);
    throw new WebSocketSetupError(message);
  }
  const ws = await upgrade(req, socket, head, choice.subprotocol);
  return new WebSocketSession(ws, choice, wanted).streams;
}

function upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, subprotocol: string): Promise<WebSocket> {
  const server = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    maxPayload: MAX_MESSAGE_BYTES,
    handleProtocols: () => subprotocol || false,
  });
  return new Promise((resolve, reject) => {
    // ws answers a bad handshake itself (400) and destroys the socket without calling back.
    const onClose = (): void => reject(new WebSocketSetupError('not a valid WebSocket upgrade request'));
    socket.once('close', onClose);
    server.handleUpgrade(req, socket, head, (ws) => {
      socket.off('close', onClose);
      server.close();
      resolve(ws);
    });
  });
}

/** The channels of one upgraded WebSocket, as RemoteCommandStreams. */
class WebSocketSession {
  readonly streams: RemoteCommandStreams;
  private readonly stdin: Readable | null;
  private readonly stdout: Writable | null;
  private readonly stderr: Writable | null;
  private readonly resizeListeners: ((size: TerminalSize) => void)[] = [];
  private readonly resize = new ResizeParser((size) => this.resizeListeners.forEach((l) => l(size)));
  private resizeClosed = false;
  private finishing = false;
  private closed = false;
  private resolveGone!: () => void;
  private readonly closedPromise: Promise<void>;

  constructor(
    private readonly ws: WebSocket,
    private readonly choice: WebSocketProtocolChoice,
    wanted: WantedStreams,
  ) {
    const gone = new Promise<void>((resolve) => (this.resolveGone = resolve));
    this.closedPromise = new Promise<void>((resolve) => ws.once('close', () => resolve()));
    this.stdin = wanted.stdin ? new Readable({ read: () => this.resumeSocket() }) : null;
    // A reader that gives up on stdin must not leave the socket paused for every other channel.
    this.stdin?.once('close', () => this.resumeSocket());
    this.stdout = wanted.stdout ? this.channelWriter(CHANNEL.stdout) : null;
    this.stderr = wanted.stderr ? this.channelWriter(CHANNEL.stderr) : null;

    ws.on('message', (data, isBinary) => this.onMessage(asBuffer(data), isBinary));
    ws.on('error', () => {
      // The socket failed; 'close' follows and is what the session acts on.
    });
    ws.once('close', () => this.onClose());

    // The kubelet announces an open connection with an empty message on the lowest writable channel.
    const first = wanted.stdout ? CHANNEL.stdout : wanted.stderr ? CHANNEL.stderr : CHANNEL.error;
    this.send(first, Buffer.alloc(0));

    this.streams = {
      protocol: choice.protocol,
      stdin: this.stdin,
      stdout: this.stdout,
      stderr: this.stderr,
      tty: wanted.tty,
      onResize: (listener) => {
        this.resizeListeners.push(listener);
      },
      finish: (result) => this.finish(result),
      gone,
    };
  }

  private get closeSignal(): boolean {
    return this.choice.protocol === 'v5.channel.k8s.io' && !this.choice.base64;
  }

  private send(channel: number, data: Uint8Array, callback?: (err?: Error) => void): void {
    if (this.closed || this.ws.readyState !== this.ws.OPEN) {
      callback?.(new Error('the WebSocket is closed'));
      return;
    }
    this.ws.send(encodeChannelMessage(channel, data, this.choice.base64), { binary: !this.choice.base64 }, callback);
  }

  /** A Writable whose every write is one message; a write completes once ws has handed it to the socket. */
  private channelWriter(channel: number): Writable {
    return new Writable({
      write: (chunk: Buffer, _encoding, callback) => {
        if (chunk.length === 0) return callback();
        this.send(channel, chunk, (err) => callback(err && !this.closed ? err : null));
      },
    });
  }

  private onMessage(message: Buffer, _isBinary: boolean): void {
    // Text and binary messages are read alike, as x/net/websocket's Message.Receive does for wsstream.
    const decoded = decodeChannelMessage(message, this.choice.base64, this.closeSignal);
    switch (decoded.kind) {
      case 'empty':
        return;
      case 'invalid':
        this.ws.close(1002, decoded.reason.slice(0, 120));
        return;
      case 'close':
        if (decoded.channel > CHANNEL.resize) {
          this.ws.close(1002, `close signal for channel ${decoded.channel}`);
          return;
        }
        if (decoded.channel === CHANNEL.stdin) this.endStdin();
        if (decoded.channel === CHANNEL.resize) this.resizeClosed = true;
        return;
      case 'data':
        if (decoded.channel === CHANNEL.stdin) {
          if (this.stdin && !this.stdin.readableEnded && !this.stdin.destroyed && !this.stdin.push(decoded.data)) this.ws.pause();
        } else if (decoded.channel === CHANNEL.resize && !this.resizeClosed) {
          this.resize.push(decoded.data);
        }
        // Anything else is for a channel the client may not write to: ignored, as wsstream does.
        return;
    }
  }

  private endStdin(): void {
    if (this.stdin && !this.stdin.readableEnded && !this.stdin.destroyed) this.stdin.push(null);
    this.resumeSocket();
  }

  private resumeSocket(): void {
    if (this.ws.isPaused) this.ws.resume();
  }

  private onClose(): void {
    this.closed = true;
    // The connection was stdin's only end before v5 (wsstream closes every channel pipe with the connection).
    this.endStdin();
    for (const writer of [this.stdout, this.stderr]) if (writer && !writer.destroyed) writer.destroy();
    this.resizeListeners.length = 0;
    if (!this.finishing) this.resolveGone();
  }

  private async finish(result: StatusObject): Promise<void> {
    if (this.finishing) return this.closedPromise;
    this.finishing = true;
    // Everything already written to stdout and stderr goes before the status.
    await Promise.all([this.stdout, this.stderr].filter((w) => w !== null).map(endWritable));
    const status = this.statusBytes(result);
    if (status) await new Promise<void>((resolve) => this.send(CHANNEL.error, status, () => resolve()));
    if (this.ws.readyState === this.ws.OPEN || this.ws.readyState === this.ws.CONNECTING) this.ws.close(1000);
    const timer = setTimeout(() => this.ws.terminate(), CLOSE_TIMEOUT_MS);
    await this.closedPromise;
    clearTimeout(timer);
  }

  /** v4 and later: the Status as JSON; before: its message, and nothing on success (kubelet's v1WriteStatusFunc). */
  private statusBytes(result: StatusObject): Buffer | null {
    const protocol = this.choice.protocol;
    if (protocol === 'v4.channel.k8s.io' || protocol === 'v5.channel.k8s.io') return Buffer.from(JSON.stringify(result));
    if (result.status === 'Success') return null;
    return Buffer.from(result.message ?? 'error');
  }
}

function endWritable(w: Writable): Promise<void> {
  if (w.writableFinished || w.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    w.once('finish', () => resolve());
    w.once('close', () => resolve());
    w.once('error', () => resolve());
    if (!w.writableEnded) w.end();
  });
}
