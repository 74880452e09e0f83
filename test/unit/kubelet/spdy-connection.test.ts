// SpdyConnection (server role) over real TCP sockets on 127.0.0.1, driven by a scripted client built in
// this file from the same pure parts (frames.ts, header-block.ts) — it sends exactly the frames a test
// wants, including wrong ones, and records every frame the server sends.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { SpdyConnection, type SpdyConnectionOptions, type SpdyStream } from '../../../src/kubelet/spdy/connection.ts';
import {
  GoAwayStatus,
  RstStatus,
  SpdyFrameParser,
  encodeData,
  encodeGoAway,
  encodePing,
  encodeRstStream,
  encodeSettings,
  encodeSynStream,
  encodeWindowUpdate,
  SettingId,
  type SpdyFrame,
} from '../../../src/kubelet/spdy/frames.ts';
import { HeaderCompressor, HeaderDecompressor, type HeaderValues } from '../../../src/kubelet/spdy/header-block.ts';

type Received = SpdyFrame & { headers?: HeaderValues };

/** The client end: opens streams, sends frames, and records what the server sends. */
class TestClient {
  readonly frames: Received[] = [];
  readonly parseErrors: string[] = [];
  private readonly compressor = new HeaderCompressor();
  private readonly decompressor = new HeaderDecompressor();
  private readonly parser: SpdyFrameParser;
  private nextId = 1;
  private waiters: (() => void)[] = [];
  ended = false;

  constructor(readonly socket: Socket) {
    this.parser = new SpdyFrameParser({
      onFrame: (frame) => {
        const received: Received = { ...frame };
        if ('headerBlock' in frame) received.headers = this.decompressor.decompress(frame.headerBlock);
        this.frames.push(received);
        this.wake();
      },
      onError: (e) => this.parseErrors.push(e.reason),
    });
    socket.on('data', (chunk: Buffer) => this.parser.push(chunk));
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  open(headers: Record<string, string>, options: { fin?: boolean; id?: number } = {}): number {
    const id = options.id ?? this.nextId;
    if (id % 2 === 1) this.nextId = Math.max(this.nextId, id + 2);
    this.socket.write(encodeSynStream({ streamId: id, headerBlock: this.compressor.compress(headers), fin: options.fin }));
    return id;
  }

  send(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Waits until a received frame satisfies `match`; returns it. */
  async waitFor(match: (f: Received) => boolean, what: string, timeoutMs = 3000): Promise<Received> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.frames.find(match);
      if (found) return found;
      if (this.ended) assert.fail(`connection closed while waiting for ${what}; got ${this.describe()}`);
      if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}; got ${this.describe()}`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
  }

  async waitClosed(timeoutMs = 3000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      if (Date.now() > deadline) assert.fail(`socket still open; got ${this.describe()}`);
      await sleep(10);
    }
  }

  /** Every DATA byte received on a stream, once its FIN arrived. */
  async dataUntilFin(id: number): Promise<Buffer> {
    await this.waitFor((f) => f.type === 'data' && f.streamId === id && f.fin, `FIN on stream ${id}`, 10_000);
    return Buffer.concat(this.frames.flatMap((f) => (f.type === 'data' && f.streamId === id ? [f.data] : [])));
  }

  describe(): string {
    return this.frames.map((f) => `${f.type}${'streamId' in f ? `(${f.streamId})` : ''}`).join(' ') || 'nothing';
  }
}

interface Pair {
  client: TestClient;
  server: SpdyConnection;
  serverSocket: Socket;
  streams: SpdyStream[];
  nextStream(): Promise<SpdyStream>;
  done(): Promise<void>;
}

async function pair(options: SpdyConnectionOptions & { listen?: boolean } = {}): Promise<Pair> {
  const tcp = createServer();
  await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
  const { port } = tcp.address() as { port: number };
  const accepted = once(tcp, 'connection') as Promise<[Socket]>;
  const clientSocket = connect(port, '127.0.0.1');
  await once(clientSocket, 'connect');
  const [serverSocket] = await accepted;
  const server = new SpdyConnection(serverSocket, options);
  const streams: SpdyStream[] = [];
  const pending: ((s: SpdyStream) => void)[] = [];
  if (options.listen !== false) {
    server.on('stream', (s) => {
      streams.push(s);
      pending.shift()?.(s);
    });
  }
  return {
    client: new TestClient(clientSocket),
    server,
    serverSocket,
    streams,
    nextStream: () =>
      new Promise((resolve, reject) => {
        const taken = streams.filter((s) => !handedOut.has(s));
        const ready = taken[0];
        if (ready) {
          handedOut.add(ready);
          resolve(ready);
          return;
        }
        const timer = setTimeout(() => reject(new Error('no stream arrived')), 3000);
        pending.push((s) => {
          clearTimeout(timer);
          handedOut.add(s);
          resolve(s);
        });
      }),
    done: async () => {
      clientSocket.destroy();
      server.destroy();
      await server.closed;
      await new Promise((resolve) => tcp.close(resolve));
    },
  };
}
const handedOut = new WeakSet<SpdyStream>();

/** Resolves when the stream has emitted 'close' (at once if it already has). */
async function closedOf(stream: SpdyStream): Promise<void> {
  if (!stream.closed) await closedOf(stream);
}

/** The readable side to its end. (Not `for await`: that destroys the stream, writable side too.) */
async function readAll(stream: SpdyStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => parts.push(chunk));
  await once(stream, 'end');
  return Buffer.concat(parts);
}

test('a stream the client opens arrives with its headers, is replied to, and carries data both ways to FIN', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    const id = p.client.open({ StreamType: 'stdin', port: '8080' });
    const stream = await p.nextStream();
    assert.equal(stream.id, id);
    assert.deepEqual({ ...stream.headers }, { streamtype: 'stdin', port: '8080' });
    stream.reply({ 'x-answer': 'yes' });
    const reply = await p.client.waitFor((f) => f.type === 'syn_reply', 'SYN_REPLY');
    assert.deepEqual(reply.headers, new Map([['x-answer', ['yes']]]));

    p.client.send(encodeData(id, Buffer.from('hello ')));
    p.client.send(encodeData(id, Buffer.from('world'), true));
    assert.equal((await readAll(stream)).toString(), 'hello world');

    stream.end(Buffer.from('bye'));
    assert.equal((await p.client.dataUntilFin(id)).toString(), 'bye');
    await closedOf(stream);
    assert.equal(p.server.openStreams, 0, 'a stream closed both ways leaves the connection');
  } finally {
    await p.done();
  }
});

test('writing before reply() sends SYN_REPLY first, since spdystream drops DATA on unreplied streams', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    const id = p.client.open({ streamtype: 'stdout' });
    const stream = await p.nextStream();
    stream.write('early');
    await p.client.waitFor((f) => f.type === 'data' && f.streamId === id, 'DATA');
    const kinds = p.client.frames.filter((f) => 'streamId' in f && f.streamId === id).map((f) => f.type);
    assert.deepEqual(kinds.slice(0, 2), ['syn_reply', 'data']);
  } finally {
    await p.done();
  }
});

test('a SYN_STREAM with FIN gives a stream whose readable side has already ended', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    p.client.open({ streamtype: 'error' }, { fin: true });
    const stream = await p.nextStream();
    assert.equal((await readAll(stream)).length, 0);
    assert.equal(stream.remoteFinished, true);
  } finally {
    await p.done();
  }
});

test('the client’s PINGs are echoed and the server’s own PINGs (even ids) resolve with the round trip', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    p.client.send(encodePing(1));
    await p.client.waitFor((f) => f.type === 'ping' && f.id === 1, 'PING 1 echoed');
    const rtt = p.server.ping();
    const ping = await p.client.waitFor((f) => f.type === 'ping' && f.id % 2 === 0, 'server PING');
    assert.equal(ping.type === 'ping' && ping.id, 2);
    p.client.send(encodePing(2));
    assert.ok((await rtt) >= 0);
    // An even PING the server did not send is ignored (draft 3.1, 2.6.5).
    p.client.send(encodePing(100));
    p.client.send(encodePing(3));
    await p.client.waitFor((f) => f.type === 'ping' && f.id === 3, 'PING 3 echoed');
    assert.equal(p.client.frames.filter((f) => f.type === 'ping' && f.id === 100).length, 0);
  } finally {
    await p.done();
  }
});

test('an unanswered server PING rejects on its timeout', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    await assert.rejects(p.server.ping(50), /unanswered/);
  } finally {
    await p.done();
  }
});

test('a client RST_STREAM emits reset with its status and destroys the stream', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    const id = p.client.open({ streamtype: 'data' });
    const stream = await p.nextStream();
    const reset = once(stream, 'reset');
    p.client.send(encodeRstStream(id, RstStatus.CANCEL));
    assert.deepEqual(await reset, [RstStatus.CANCEL]);
    await closedOf(stream);
    assert.equal(stream.destroyed, true);
    assert.equal(p.server.openStreams, 0);
  } finally {
    await p.done();
  }
});

test('stream.reset() sends RST_STREAM with the status; destroying a stream early sends CANCEL', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    const a = p.client.open({ streamtype: 'a' });
    (await p.nextStream()).reset(RstStatus.REFUSED_STREAM);
    const rstA = await p.client.waitFor((f) => f.type === 'rst_stream' && f.streamId === a, 'RST a');
    assert.equal(rstA.type === 'rst_stream' && rstA.status, RstStatus.REFUSED_STREAM);

    const b = p.client.open({ streamtype: 'b' });
    (await p.nextStream()).destroy();
    const rstB = await p.client.waitFor((f) => f.type === 'rst_stream' && f.streamId === b, 'RST b');
    assert.equal(rstB.type === 'rst_stream' && rstB.status, RstStatus.CANCEL);
    assert.equal(p.server.openStreams, 0);
  } finally {
    await p.done();
  }
});

test('SYN_STREAMs with an even id or the id of an open stream are reset with PROTOCOL_ERROR', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    p.client.open({ streamtype: 'even' }, { id: 2 });
    const rst2 = await p.client.waitFor((f) => f.type === 'rst_stream' && f.streamId === 2, 'RST 2');
    assert.equal(rst2.type === 'rst_stream' && rst2.status, RstStatus.PROTOCOL_ERROR);

    const id = p.client.open({ streamtype: 'first' });
    const first = await p.nextStream();
    p.client.open({ streamtype: 'again' }, { id });
    const rst = await p.client.waitFor((f) => f.type === 'rst_stream' && f.streamId === id, 'RST duplicate');
    assert.equal(rst.type === 'rst_stream' && rst.status, RstStatus.PROTOCOL_ERROR);
    await closedOf(first);
    assert.equal(p.streams.length, 1, 'the duplicate never became a stream');
    assert.equal(p.server.openStreams, 0);

    // The connection still works afterwards.
    p.client.open({ streamtype: 'later' }, { id: 7 });
    assert.equal((await p.nextStream()).id, 7);
  } finally {
    await p.done();
  }
});

test('a SYN_STREAM with a lower id than an earlier one is a session error: GOAWAY PROTOCOL_ERROR, socket closed', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    p.client.open({ streamtype: 'x' }, { id: 5 });
    const stream = await p.nextStream();
    const closed = once(p.server, 'close');
    p.client.open({ streamtype: 'y' }, { id: 3 });
    const goaway = await p.client.waitFor((f) => f.type === 'goaway', 'GOAWAY');
    assert.deepEqual(goaway, { type: 'goaway', lastGoodStreamId: 5, status: GoAwayStatus.PROTOCOL_ERROR });
    const [reason] = (await closed) as [string];
    assert.match(reason, /SYN_STREAM 3 after 5/);
    assert.equal(stream.destroyed, true);
    await p.client.waitClosed();
  } finally {
    await p.done();
  }
});

test('a control frame of another SPDY version gets GOAWAY PROTOCOL_ERROR and the socket is closed', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    const closed = once(p.server, 'close');
    p.client.send(Buffer.from('80020001000000160000000100000000', 'hex')); // a SPDY/2 SYN_STREAM
    const goaway = await p.client.waitFor((f) => f.type === 'goaway', 'GOAWAY');
    assert.equal(goaway.type === 'goaway' && goaway.status, GoAwayStatus.PROTOCOL_ERROR);
    const [reason] = (await closed) as [string];
    assert.match(reason, /version 2/);
    await p.client.waitClosed();
  } finally {
    await p.done();
  }
});

test('plain HTTP bytes read as DATA for a stream that never existed, answered with INVALID_STREAM', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    // "GET " is a DATA header for stream 0x47455420; the text after it is its payload.
    p.client.send(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    const rst = await p.client.waitFor((f) => f.type === 'rst_stream', 'RST_STREAM');
    assert.deepEqual(rst, { type: 'rst_stream', streamId: 0x47455420, status: RstStatus.INVALID_STREAM });
    assert.equal(p.server.openStreams, 0);
  } finally {
    await p.done();
  }
});

test('a header block that does not continue the zlib stream is a session error', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    p.client.send(encodeSynStream({ streamId: 1, headerBlock: Buffer.from('not zlib at all') }));
    const goaway = await p.client.waitFor((f) => f.type === 'goaway', 'GOAWAY');
    assert.equal(goaway.type === 'goaway' && goaway.status, GoAwayStatus.PROTOCOL_ERROR);
    await p.client.waitClosed();
    assert.equal(p.streams.length, 0);
  } finally {
    await p.done();
  }
});

test('when the client disconnects mid-stream every stream is destroyed and the socket listeners are released', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    const a = p.client.open({ streamtype: 'a' });
    p.client.open({ streamtype: 'b' });
    const [sa, sb] = [await p.nextStream(), await p.nextStream()];
    p.client.send(encodeData(a, Buffer.from('partial')));
    sa.resume();
    sb.resume();
    const ended = { a: false, b: false };
    sa.on('end', () => (ended.a = true));
    sb.on('end', () => (ended.b = true));
    const closed = once(p.server, 'close');
    await sleep(20);
    p.client.socket.destroy();
    await closed;
    await p.server.closed;
    assert.equal(sa.destroyed && sb.destroyed, true);
    assert.deepEqual(ended, { a: false, b: false }, 'a cut connection is not a clean end');
    assert.equal(p.server.openStreams, 0);
    assert.equal(p.serverSocket.listenerCount('data'), 0);
    assert.equal(p.serverSocket.listenerCount('drain'), 0);
    await assert.rejects(p.server.ping(), /closed/);
    assert.equal(sa.write('late'), false, 'writes after the connection closed fail');
  } finally {
    await p.done();
  }
});

test('close() lets ended streams flush, resets the others, and sends GOAWAY last', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    const a = p.client.open({ streamtype: 'done' });
    const b = p.client.open({ streamtype: 'open' });
    const [sa, sb] = [await p.nextStream(), await p.nextStream()];
    sa.end(Buffer.alloc(300_000, 1));
    sb.resume();
    const closing = p.server.close();
    await p.client.waitClosed();
    await closing;
    const order = p.client.frames.map((f) => `${f.type}${'streamId' in f ? f.streamId : ''}${f.type === 'data' && f.fin ? 'fin' : ''}`);
    const finA = order.indexOf(`data${a}fin`);
    const rstB = order.indexOf(`rst_stream${b}`);
    assert.ok(finA >= 0, `FIN on the ended stream: ${order.join(' ')}`);
    assert.ok(rstB >= 0, 'RST on the open stream');
    assert.equal(order.at(-1), 'goaway', 'GOAWAY is the last frame');
    assert.equal((await p.client.dataUntilFin(a)).length, 300_000);
    const goaway = p.client.frames.at(-1);
    assert.deepEqual(goaway, { type: 'goaway', lastGoodStreamId: b, status: GoAwayStatus.OK });
    assert.equal(sb.destroyed, true);
  } finally {
    await p.done();
  }
});

test('a GOAWAY from the client closes the connection once its last stream is done', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    const id = p.client.open({ streamtype: 'last' });
    const stream = await p.nextStream();
    const goaway = once(p.server, 'goaway');
    p.client.send(encodeGoAway(0));
    await goaway;
    // New streams after the peer's GOAWAY are refused.
    p.client.open({ streamtype: 'too-late' });
    await p.client.waitFor((f) => f.type === 'rst_stream' && f.status === RstStatus.REFUSED_STREAM, 'REFUSED_STREAM');
    assert.equal(p.client.ended, false);
    stream.end('last words');
    p.client.send(encodeData(id, Buffer.alloc(0), true));
    stream.resume();
    assert.equal((await p.client.dataUntilFin(id)).toString(), 'last words');
    await p.client.waitClosed();
  } finally {
    await p.done();
  }
});

test('SETTINGS and WINDOW_UPDATE from the client are accepted and change nothing', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    p.client.send(encodeSettings([{ id: SettingId.INITIAL_WINDOW_SIZE, flags: 0, value: 1 }]));
    p.client.send(encodeWindowUpdate(0, 1000));
    const id = p.client.open({ streamtype: 'x' });
    const stream = await p.nextStream();
    p.client.send(encodeWindowUpdate(id, 5));
    // Not held to the 1-byte window the client announced (spdystream never sends WINDOW_UPDATE).
    stream.end(Buffer.alloc(200_000, 2));
    assert.equal((await p.client.dataUntilFin(id)).length, 200_000);
  } finally {
    await p.done();
  }
});

test('received data is granted back with WINDOW_UPDATE for the stream and the session', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    const id = p.client.open({ streamtype: 'upload' });
    const stream = await p.nextStream();
    stream.resume();
    p.client.send(encodeData(id, Buffer.alloc(40_000)));
    await p.client.waitFor((f) => f.type === 'window_update' && f.streamId === id, 'stream WINDOW_UPDATE');
    await p.client.waitFor((f) => f.type === 'window_update' && f.streamId === 0, 'session WINDOW_UPDATE');
  } finally {
    await p.done();
  }
});

test('a stream nobody reads pauses the socket, and reading resumes it without losing bytes', { timeout: 8000 }, async () => {
  const p = await pair({ streamHighWaterMark: 64 * 1024 });
  try {
    const id = p.client.open({ streamtype: 'upload' });
    const stream = await p.nextStream();
    const total = 4 * 1024 * 1024;
    for (let off = 0; off < total; off += 32 * 1024) p.client.send(encodeData(id, Buffer.alloc(32 * 1024, off / (32 * 1024)), off + 32 * 1024 >= total));
    await sleep(200);
    assert.equal(p.serverSocket.isPaused(), true, 'socket paused while the stream is full');
    assert.ok(stream.readableLength < 1024 * 1024, `buffered ${stream.readableLength}`);
    const received = await readAll(stream);
    assert.equal(received.length, total);
    for (let off = 0; off < total; off += 32 * 1024) assert.equal(received[off], (off / (32 * 1024)) & 0xff);
  } finally {
    await p.done();
  }
});

test('a stream’s writes wait for the socket to drain when the client does not read', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    const id = p.client.open({ streamtype: 'download' });
    const stream = await p.nextStream();
    p.client.socket.pause();
    const chunk = Buffer.alloc(256 * 1024, 3);
    let writes = 0;
    while (stream.write(chunk)) {
      writes++;
      if (writes > 400) assert.fail('writes never pushed back');
    }
    await sleep(100);
    assert.ok(stream.writableLength > 0, 'the stream holds what the socket could not take');
    stream.end();
    p.client.socket.resume();
    assert.equal((await p.client.dataUntilFin(id)).length, (writes + 1) * chunk.length);
  } finally {
    await p.done();
  }
});

test('streams are refused with REFUSED_STREAM when nobody listens or too many are open', { timeout: 8000 }, async () => {
  const unheard = await pair({ listen: false });
  try {
    const id = unheard.client.open({ streamtype: 'x' });
    const rst = await unheard.client.waitFor((f) => f.type === 'rst_stream' && f.streamId === id, 'RST');
    assert.equal(rst.type === 'rst_stream' && rst.status, RstStatus.REFUSED_STREAM);
  } finally {
    await unheard.done();
  }
  const full = await pair({ maxConcurrentStreams: 2 });
  try {
    full.client.open({ n: '1' });
    full.client.open({ n: '2' });
    const third = full.client.open({ n: '3' });
    const rst = await full.client.waitFor((f) => f.type === 'rst_stream' && f.streamId === third, 'RST third');
    assert.equal(rst.type === 'rst_stream' && rst.status, RstStatus.REFUSED_STREAM);
    assert.equal(full.server.openStreams, 2);
  } finally {
    await full.done();
  }
});

test('DATA for a stream that never existed is answered with INVALID_STREAM, once', { timeout: 8000 }, async () => {
  const p = await pair();
  try {
    p.client.send(encodeData(9, Buffer.from('a')));
    p.client.send(encodeData(9, Buffer.from('b')));
    p.client.send(encodePing(1));
    await p.client.waitFor((f) => f.type === 'ping', 'PING');
    const rsts = p.client.frames.filter((f) => f.type === 'rst_stream');
    assert.deepEqual(rsts, [{ type: 'rst_stream', streamId: 9, status: RstStatus.INVALID_STREAM }]);
  } finally {
    await p.done();
  }
});

test('the idle timeout closes a connection without frames, with GOAWAY', { timeout: 8000 }, async () => {
  const p = await pair({ idleTimeoutMs: 150 });
  try {
    const closed = once(p.server, 'close');
    p.client.send(encodePing(1)); // activity postpones the timeout
    await sleep(100);
    assert.equal(p.client.ended, false);
    const [reason] = (await closed) as [string];
    assert.match(reason, /idle/);
    await p.client.waitFor((f) => f.type === 'goaway', 'GOAWAY');
  } finally {
    await p.done();
  }
});

test('bytes read with the upgrade request (head) are parsed before the socket’s', { timeout: 8000 }, async () => {
  const tcp = createServer();
  await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
  const { port } = tcp.address() as { port: number };
  const accepted = once(tcp, 'connection') as Promise<[Socket]>;
  const clientSocket = connect(port, '127.0.0.1');
  await once(clientSocket, 'connect');
  const [serverSocket] = await accepted;
  const compressor = new HeaderCompressor();
  const head = encodeSynStream({ streamId: 1, headerBlock: compressor.compress({ streamtype: 'error' }) });
  const server = new SpdyConnection(serverSocket, { head });
  const stream = await new Promise<SpdyStream>((resolve) => server.on('stream', resolve));
  assert.equal(stream.headers.streamtype, 'error');
  clientSocket.destroy();
  await server.closed;
  await new Promise((resolve) => tcp.close(resolve));
});
