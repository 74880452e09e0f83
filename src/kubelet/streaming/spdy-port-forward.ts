// `kubectl port-forward` over SPDY/3.1 (`portforward.k8s.io`): one connection carries any number of
// forwarded connections, each a pair of streams with the same `requestid` header — `error` and `data`
// — and a `port` header. When both are open, the port in the pod is dialled and bytes are copied both
// ways; a failure is reported on the error stream as the kubelet does ({"closeConnection", "message"}).
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { createWebSocketStream, WebSocketServer } from 'ws';
import { SpdyConnection, type SpdyStream } from '../spdy/connection.ts';
import { acceptUpgrade, headerList, negotiate, PROTOCOL_VERSION_HEADER, rejectUpgrade } from './upgrade.ts';

export const PORT_FORWARD_PROTOCOLS = ['portforward.k8s.io'] as const;

export interface PortForwardOptions {
  /** Opens a connection to the port in the pod. */
  dial(port: number): Promise<Duplex>;
  /** Named in error messages, as the kubelet names the pod. */
  podName: string;
  podUid: string;
  streamCreationTimeoutMs?: number;
  idleTimeoutMs?: number;
  log?(msg: string, fields?: Record<string, unknown>): void;
}

interface Pair {
  error?: SpdyStream;
  data?: SpdyStream;
  timer: NodeJS.Timeout;
}

/** Validates a stream's headers as the kubelet's httpStreamReceived does; a string is the reason to refuse it. */
export function checkPortForwardHeaders(h: Record<string, string>): { port: number; type: 'error' | 'data' } | string {
  const portText = h.port ?? '';
  if (!portText) return '"port" header is required';
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) return `unable to parse "${portText}" as a port`;
  const port = Number(portText);
  if (port < 1) return `port "${portText}" must be > 0`;
  const type = h.streamtype ?? '';
  if (!type) return '"streamType" header is required';
  if (type !== 'error' && type !== 'data') return `invalid stream type "${type}"`;
  return { port, type };
}

/** Serves one port-forward connection until the client closes it. Resolves when it is closed. */
export function serveSpdyPortForward(req: IncomingMessage, socket: Duplex, head: Buffer, opts: PortForwardOptions): Promise<void> {
  const n = negotiate(headerList(req, PROTOCOL_VERSION_HEADER), PORT_FORWARD_PROTOCOLS, false);
  if (!n.ok) {
    rejectUpgrade(socket, n.status, n.message, n.headers);
    return Promise.resolve();
  }
  acceptUpgrade(socket, 'SPDY/3.1', { 'X-Stream-Protocol-Version': n.protocol });
  return runPortForward(new SpdyConnection(socket, { head, ...(opts.idleTimeoutMs ? { idleTimeoutMs: opts.idleTimeoutMs } : {}) }), opts);
}

/**
 * `kubectl port-forward` over a WebSocket (KEP-4006): the same SPDY/3.1 session, tunnelled in binary
 * WebSocket messages under the subprotocol `SPDY/3.1+portforward.k8s.io` — what client-go's tunneling
 * dialer sends, and what an API server with ExtendWebSocketsToKubelet passes through to the kubelet.
 */
export function serveWebSocketPortForward(req: IncomingMessage, socket: Duplex, head: Buffer, opts: PortForwardOptions): Promise<void> {
  const offered = headerList(req, 'sec-websocket-protocol');
  if (!offered.includes(TUNNEL_PROTOCOL)) {
    rejectUpgrade(socket, 400, 'unable to upgrade: no tunneling spdy protocols provided');
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    socket.once('close', () => resolve()); // a handshake ws refuses ends here
    // "SPDY/3.1+portforward.k8s.io" is not an RFC 7230 token ('/' is a separator), so ws refuses it as a
    // subprotocol; gorilla/websocket and Go's API server accept it. ws is handed the request without the
    // header, and the chosen protocol is added to its 101 answer.
    delete req.headers['sec-websocket-protocol'];
    const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
    wss.on('headers', (headers) => headers.push(`Sec-WebSocket-Protocol: ${TUNNEL_PROTOCOL}`));
    wss.on('error', () => undefined);
    wss.handleUpgrade(req, socket, head, (ws) => {
      const tunnel = createWebSocketStream(ws);
      tunnel.on('error', () => undefined);
      void runPortForward(new SpdyConnection(tunnel, { ...(opts.idleTimeoutMs ? { idleTimeoutMs: opts.idleTimeoutMs } : {}) }), opts).then(() => {
        ws.close(1000);
        wss.close();
        resolve();
      });
    });
  });
}

export const TUNNEL_PROTOCOL = 'SPDY/3.1+portforward.k8s.io';

/** The port-forward session on an established SPDY connection; resolves when the connection closed. */
function runPortForward(conn: SpdyConnection, opts: PortForwardOptions): Promise<void> {
  const pairs = new Map<string, Pair>();
  const open = new Set<Duplex>();
  const log = (msg: string, fields?: Record<string, unknown>) => opts.log?.(msg, fields);

  conn.on('stream', (s: SpdyStream) => {
    s.on('error', () => undefined);
    const checked = checkPortForwardHeaders(s.headers);
    if (typeof checked === 'string') {
      log('port-forward stream refused', { reason: checked });
      s.reset();
      return;
    }
    s.reply();
    // Old clients send no request id: the kubelet pairs error stream N with data stream N+2.
    const requestId = s.headers.requestid || String(checked.type === 'error' ? s.id : s.id - 2);
    let pair = pairs.get(requestId);
    if (!pair) {
      const timer = setTimeout(() => {
        const p = pairs.get(requestId);
        pairs.delete(requestId);
        p?.error?.end(`(request=${requestId}) timed out waiting for streams`);
        p?.data?.end();
      }, opts.streamCreationTimeoutMs ?? 30_000);
      pair = { timer };
      pairs.set(requestId, pair);
    }
    if (pair[checked.type]) {
      const msg = `error processing stream for request ${requestId}: ${checked.type} stream already assigned`;
      pair.error?.write(msg);
      s.reset();
      return;
    }
    pair[checked.type] = s;
    if (pair.error && pair.data) {
      clearTimeout(pair.timer);
      pairs.delete(requestId);
      void forward(pair.error, pair.data, checked.port);
    }
  });

  const forward = async (error: SpdyStream, data: SpdyStream, port: number): Promise<void> => {
    let target: Duplex;
    try {
      target = await opts.dial(port);
    } catch (err) {
      const message = `error forwarding port ${port} to pod ${opts.podName}, uid ${opts.podUid}: ${(err as Error).message}`;
      log('port-forward failed', { port, err: (err as Error).message });
      error.end(JSON.stringify({ closeConnection: false, message }));
      data.end();
      return;
    }
    open.add(target);
    target.on('error', () => undefined);
    data.pipe(target);
    target.pipe(data);
    await new Promise<void>((resolve) => {
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        open.delete(target);
        if (error.writable) error.end();
        resolve();
      };
      target.once('close', () => {
        if (data.writable) data.end();
        finish();
      });
      data.once('close', () => {
        target.destroy();
        finish();
      });
    });
  };

  return new Promise((resolve) => {
    conn.once('close', () => {
      for (const p of pairs.values()) clearTimeout(p.timer);
      pairs.clear();
      for (const t of open) t.destroy();
      open.clear();
      resolve();
    });
  });
}
