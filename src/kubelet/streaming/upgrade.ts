// The HTTP/1.1 side of a streaming upgrade, before any frame: protocol negotiation through
// X-Stream-Protocol-Version as client-go's httpstream.Handshake does it (the first protocol of the
// client's list that the server speaks wins), and the raw answers written to a socket the HTTP server
// has handed over (101 Switching Protocols, or an error status that ends the connection).
import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';

export const PROTOCOL_VERSION_HEADER = 'x-stream-protocol-version';

/** Values of a header that may be repeated and comma-separated. */
export function headerList(req: IncomingMessage, name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i]!.toLowerCase() !== name) continue;
    for (const v of req.rawHeaders[i + 1]!.split(',')) if (v.trim()) out.push(v.trim());
  }
  return out;
}

export type Negotiation = { ok: true; protocol: string } | { ok: false; status: number; message: string; headers?: Record<string, readonly string[]> };

/** client-go's Handshake: the client's order decides; no header at all is the legacy unversioned protocol (""). */
export function negotiate(clientProtocols: readonly string[], serverProtocols: readonly string[], allowLegacy: boolean): Negotiation {
  if (clientProtocols.length === 0) {
    if (allowLegacy) return { ok: true, protocol: '' };
    return { ok: false, status: 400, message: `unable to upgrade: header X-Stream-Protocol-Version does not exist in request` };
  }
  const found = clientProtocols.find((p) => serverProtocols.includes(p));
  if (found) return { ok: true, protocol: found };
  return {
    ok: false, status: 403,
    message: `unable to upgrade: unable to negotiate protocol: client supports [${clientProtocols.join(' ')}], server accepts [${serverProtocols.join(' ')}]`,
    headers: { 'X-Accepted-Stream-Protocol-Versions': [...serverProtocols] },
  };
}

/** An HTTP answer written straight to a socket taken over by an upgrade, which is then ended. */
export function rawResponse(
  socket: Duplex, status: number, body: string, contentType = 'text/plain; charset=utf-8', headers: Record<string, readonly string[]> = {},
): void {
  const lines = [
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}`,
    `Content-Type: ${contentType}`,
    `Content-Length: ${Buffer.byteLength(body)}`,
    'X-Content-Type-Options: nosniff',
    'Connection: close',
  ];
  for (const [k, vs] of Object.entries(headers)) for (const v of vs) lines.push(`${k}: ${v}`);
  if (socket.writable) socket.end(`${lines.join('\r\n')}\r\n\r\n${body}`);
  else socket.destroy();
}

/** Answers an upgrade request with an HTTP error (the message as a line of text) and ends the socket. */
export function rejectUpgrade(socket: Duplex, status: number, message: string, headers: Record<string, readonly string[]> = {}): void {
  rawResponse(socket, status, `${message}\n`, undefined, headers);
}

/** Writes the 101 answer; from here on the socket carries the new protocol. */
export function acceptUpgrade(socket: Duplex, upgrade: string, headers: Record<string, string> = {}): void {
  const lines = ['HTTP/1.1 101 Switching Protocols', 'Connection: Upgrade', `Upgrade: ${upgrade}`];
  for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
  socket.write(`${lines.join('\r\n')}\r\n\r\n`);
}

export function isWebSocketUpgrade(req: IncomingMessage): boolean {
  return (req.headers.upgrade ?? '').toLowerCase() === 'websocket';
}

export function isSpdyUpgrade(req: IncomingMessage): boolean {
  return (req.headers.upgrade ?? '').toLowerCase().startsWith('spdy/3.1');
}
