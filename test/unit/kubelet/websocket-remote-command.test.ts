// acceptWebSocketRemoteCommand with a real `ws` client against a local HTTP server on 127.0.0.1: channel
// numbering, subprotocol choice, the v5 close signal, resize messages, the base64 variants, status on
// the error channel per version, backpressure both ways, and a client that goes away.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import type { Duplex } from 'node:stream';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocket, type RawData } from 'ws';
import { exitCodeStatus, successStatus, type RemoteCommandStreams, type TerminalSize } from '../../../src/kubelet/streaming/remote-command.ts';
import {
  acceptWebSocketRemoteCommand,
  chooseWebSocketProtocol,
  decodeChannelMessage,
  encodeChannelMessage,
  WebSocketSetupError,
} from '../../../src/kubelet/streaming/websocket-remote-command.ts';
import { listenLocal } from '../helpers/local-http.ts';

interface Received {
  data: Buffer;
  binary: boolean;
}

/** A kubelet-ish server: each upgrade becomes a session, wanted streams from the query string. */
async function serve(): Promise<{ url: (query: string) => string; next: () => Promise<RemoteCommandStreams>; failures: unknown[]; close: () => Promise<void> }> {
  const sessions: RemoteCommandStreams[] = [];
  const waiting: ((s: RemoteCommandStreams) => void)[] = [];
  const failures: unknown[] = [];
  const server = createServer((_req, res) => res.writeHead(400).end());
  const upgraded = new Set<Duplex>();
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    upgraded.add(socket);
    const q = new URL(req.url ?? '/', 'http://x').searchParams;
    const wanted = { stdin: q.has('stdin'), stdout: q.has('stdout'), stderr: q.has('stderr'), tty: q.has('tty') };
    acceptWebSocketRemoteCommand(req, socket, head, wanted).then(
      (s) => {
        const w = waiting.shift();
        if (w) w(s);
        else sessions.push(s);
      },
      (err: unknown) => failures.push(err),
    );
  });
  const { port, close } = await listenLocal(server);
  return {
    url: (query) => `ws://127.0.0.1:${port}/exec/ns/pod/c?${query}`,
    next: () => {
      const ready = sessions.shift();
      if (ready) return Promise.resolve(ready);
      return new Promise((resolve) => waiting.push(resolve));
    },
    failures,
    close: async () => {
      for (const socket of upgraded) socket.destroy(); // upgraded sockets are no longer the HTTP server's
      await close();
    },
  };
}

/** A client that records every message. */
async function client(url: string, protocols: string[]): Promise<{ ws: WebSocket; messages: Received[]; closed: Promise<[number, string]>; waitFor: (n: number) => Promise<void> }> {
  const ws = new WebSocket(url, protocols);
  const messages: Received[] = [];
  const closed = new Promise<[number, string]>((resolve) => ws.once('close', (code, reason) => resolve([code, reason.toString()])));
  ws.on('message', (data: RawData, binary: boolean) => messages.push({ data: Buffer.from(data as Buffer), binary }));
  await once(ws, 'open');
  return {
    ws,
    messages,
    closed,
    waitFor: async (n) => {
      const deadline = Date.now() + 5000;
      while (messages.length < n) {
        if (Date.now() > deadline) assert.fail(`waited for ${n} messages, got ${messages.length}`);
        await sleep(5);
      }
    },
  };
}

function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  stream.on('data', (c: Buffer) => parts.push(c));
  return once(stream, 'end').then(() => Buffer.concat(parts));
}

test('v5: the first message announces the connection, stdout and stderr arrive on channels 1 and 2, the Status on 3, then a normal close', async () => {
  const srv = await serve();
  try {
    const c = await client(srv.url('stdout&stderr'), ['v5.channel.k8s.io', 'v4.channel.k8s.io']);
    assert.equal(c.ws.protocol, 'v5.channel.k8s.io');
    const s = await srv.next();
    assert.equal(s.protocol, 'v5.channel.k8s.io');
    assert.equal(s.stdin, null);
    s.stdout!.write('out');
    s.stderr!.write(Buffer.from('err'));
    await s.finish(exitCodeStatus(['false'], 1));
    const [code] = await c.closed;
    assert.equal(code, 1000);
    assert.deepEqual(
      c.messages.map((m) => [m.data[0], m.data.subarray(1).toString(), m.binary]),
      [
        [1, '', true],
        [1, 'out', true],
        [2, 'err', true],
        [3, JSON.stringify(exitCodeStatus(['false'], 1)), true],
      ],
    );
    const status = JSON.parse(c.messages[3]!.data.subarray(1).toString()) as { reason: string; details: { causes: { message: string }[] } };
    assert.equal(status.reason, 'NonZeroExitCode');
    assert.equal(status.details.causes[0]!.message, '1');
  } finally {
    await srv.close();
  }
});

test('v5: stdin data arrives in order and the close signal [255, 0] ends stdin while the connection stays up', async () => {
  const srv = await serve();
  try {
    const c = await client(srv.url('stdin&stdout'), ['v5.channel.k8s.io']);
    const s = await srv.next();
    const stdin = readAll(s.stdin!);
    c.ws.send(Buffer.from([0, ...Buffer.from('hello ')]));
    c.ws.send(Buffer.from([0, ...Buffer.from('world')]));
    c.ws.send(Buffer.from([255, 0]));
    assert.equal((await stdin).toString(), 'hello world');
    assert.equal(c.ws.readyState, WebSocket.OPEN);
    s.stdout!.write('after stdin ended');
    await s.finish(successStatus());
    await c.closed;
    assert.equal(c.messages.at(-2)!.data.subarray(1).toString(), 'after stdin ended');
    assert.deepEqual(JSON.parse(c.messages.at(-1)!.data.subarray(1).toString()), { metadata: {}, status: 'Success' });
  } finally {
    await srv.close();
  }
});

test('resize messages on channel 4 are parsed, also when one is split across messages', async () => {
  const srv = await serve();
  try {
    const c = await client(srv.url('stdin&stdout&tty'), ['v5.channel.k8s.io']);
    const s = await srv.next();
    assert.equal(s.tty, true);
    const sizes: TerminalSize[] = [];
    s.onResize((size) => sizes.push(size));
    c.ws.send(Buffer.concat([Buffer.from([4]), Buffer.from('{"Width":80,"Height":24}\n')]));
    c.ws.send(Buffer.concat([Buffer.from([4]), Buffer.from('{"Width":100,')]));
    c.ws.send(Buffer.concat([Buffer.from([4]), Buffer.from('"Height":40}\n')]));
    const deadline = Date.now() + 3000;
    while (sizes.length < 2 && Date.now() < deadline) await sleep(5);
    assert.deepEqual(sizes, [{ cols: 80, rows: 24 }, { cols: 100, rows: 40 }]);
    await s.finish(successStatus());
  } finally {
    await srv.close();
  }
});

test('the base64 variant sends text messages with an ASCII channel digit and reads base64 stdin', async () => {
  const srv = await serve();
  try {
    const c = await client(srv.url('stdin&stdout'), ['v4.base64.channel.k8s.io']);
    assert.equal(c.ws.protocol, 'v4.base64.channel.k8s.io');
    const s = await srv.next();
    assert.equal(s.protocol, 'v4.channel.k8s.io');
    const stdin = readAll(s.stdin!);
    c.ws.send(`0${Buffer.from('abc\n').toString('base64')}`);
    s.stdout!.write('hi');
    await c.waitFor(2);
    // Before v5 there is no close signal: stdin ends with the connection.
    await s.finish(successStatus());
    assert.equal((await stdin).toString(), 'abc\n');
    await c.closed;
    assert.deepEqual(
      c.messages.map((m) => [m.data.toString(), m.binary]),
      [
        ['1', false],
        [`1${Buffer.from('hi').toString('base64')}`, false],
        [`3${Buffer.from(JSON.stringify(successStatus())).toString('base64')}`, false],
      ],
    );
  } finally {
    await srv.close();
  }
});

test('before v4 the error channel carries the message of a failure and nothing on success', async () => {
  const srv = await serve();
  try {
    const failed = await client(srv.url('stdout'), []); // no subprotocol: channel.k8s.io, as wsstream
    assert.equal(failed.ws.protocol, '');
    const s1 = await srv.next();
    assert.equal(s1.protocol, 'channel.k8s.io');
    await s1.finish(exitCodeStatus(['sh', '-c', 'exit 3'], 3));
    await failed.closed;
    assert.deepEqual(failed.messages.map((m) => m.data[0]), [1, 3]);
    assert.match(failed.messages[1]!.data.subarray(1).toString(), /^command terminated with non-zero exit code/);

    const ok = await client(srv.url('stdout'), ['v3.channel.k8s.io']);
    const s2 = await srv.next();
    assert.equal(s2.protocol, 'v3.channel.k8s.io');
    await s2.finish(successStatus());
    await ok.closed;
    assert.deepEqual(ok.messages.map((m) => m.data[0]), [1], 'no error message on success');
  } finally {
    await srv.close();
  }
});

test('the first subprotocol in the client’s list that is spoken wins; none spoken is 403', async () => {
  const srv = await serve();
  try {
    const c = await client(srv.url('stdout'), ['x.unknown', 'v4.channel.k8s.io', 'v5.channel.k8s.io']);
    assert.equal(c.ws.protocol, 'v4.channel.k8s.io');
    await (await srv.next()).finish(successStatus());

    const refused = new WebSocket(srv.url('stdout'), ['portforward.k8s.io']);
    refused.on('error', () => {}); // terminate() while connecting reports one
    const [, res] = (await once(refused, 'unexpected-response')) as [unknown, IncomingMessage];
    assert.equal(res.statusCode, 403);
    refused.terminate();
    assert.ok(srv.failures.some((f) => f instanceof WebSocketSetupError && /not supported/.test(f.message)));
  } finally {
    await srv.close();
  }
});

test('when the client disconnects, gone resolves, stdin ends and later writes fail quietly', async () => {
  const srv = await serve();
  try {
    const c = await client(srv.url('stdin&stdout&stderr'), ['v5.channel.k8s.io']);
    const s = await srv.next();
    const stdin = readAll(s.stdin!);
    c.ws.terminate();
    await s.gone;
    assert.equal((await stdin).length, 0);
    await new Promise<void>((resolve) => s.stdout!.write('late', () => resolve()));
    assert.equal(s.stdout!.destroyed, true);
    await s.finish(successStatus()); // finishing a gone session is harmless
  } finally {
    await srv.close();
  }
});

test('stdout writes wait while the client does not read, and everything arrives in order', async () => {
  const srv = await serve();
  try {
    const c = await client(srv.url('stdout'), ['v5.channel.k8s.io']);
    const s = await srv.next();
    c.ws.pause();
    const total = 128; // 32 MiB: more than the kernel buffers of a local connection hold
    let completed = 0;
    for (let i = 0; i < total; i++) s.stdout!.write(Buffer.alloc(256 * 1024, i % 256), () => completed++);
    await sleep(200);
    assert.ok(completed < total, `all ${total} writes completed while the client read nothing`);
    assert.ok(s.stdout!.writableLength > 0, 'the rest waits in the stream, not in ws');
    c.ws.resume();
    await s.finish(successStatus());
    await c.closed;
    assert.equal(completed, total);
    const data = c.messages.slice(1, -1);
    assert.equal(data.length, total);
    data.forEach((m, i) => {
      assert.equal(m.data[0], 1);
      assert.equal(m.data.length, 256 * 1024 + 1);
      assert.equal(m.data[1], i % 256);
    });
  } finally {
    await srv.close();
  }
});

test('stdin that nobody reads stops the socket being read, and reading it later gets every byte', async () => {
  const srv = await serve();
  try {
    const c = await client(srv.url('stdin&stdout'), ['v5.channel.k8s.io']);
    const s = await srv.next();
    const total = 4 * 1024 * 1024;
    for (let off = 0; off < total; off += 32 * 1024) c.ws.send(Buffer.concat([Buffer.from([0]), Buffer.alloc(32 * 1024, (off >> 15) & 0xff)]));
    c.ws.send(Buffer.from([255, 0]));
    await sleep(300);
    assert.ok(s.stdin!.readableLength < 1024 * 1024, `stdin holds ${s.stdin!.readableLength} bytes`);
    const data = await readAll(s.stdin!);
    assert.equal(data.length, total);
    for (let off = 0; off < total; off += 32 * 1024) assert.equal(data[off], (off >> 15) & 0xff);
    await s.finish(successStatus());
  } finally {
    await srv.close();
  }
});

test('a malformed v5 close signal closes the connection with 1002', async () => {
  const srv = await serve();
  try {
    const c = await client(srv.url('stdin'), ['v5.channel.k8s.io']);
    const s = await srv.next();
    c.ws.send(Buffer.from([255]));
    const [code] = await c.closed;
    assert.equal(code, 1002);
    await s.gone;
  } finally {
    await srv.close();
  }
});

test('an upgrade request that is not a valid WebSocket handshake is answered 400 and rejects', async () => {
  const srv = await serve();
  try {
    const { port } = new URL(srv.url('stdout'));
    const socket = connect(Number(port), '127.0.0.1');
    socket.end('GET /exec/ns/pod/c?stdout HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    const answer: Buffer[] = [];
    socket.on('data', (d: Buffer) => answer.push(d));
    await once(socket, 'close');
    assert.match(Buffer.concat(answer).toString(), /^HTTP\/1\.1 400 /);
    const deadline = Date.now() + 2000;
    while (srv.failures.length === 0 && Date.now() < deadline) await sleep(5);
    assert.ok(srv.failures[0] instanceof WebSocketSetupError);
  } finally {
    await srv.close();
  }
});

test('subprotocol choice and channel messages as pure parts', () => {
  assert.deepEqual(chooseWebSocketProtocol(['v5.base64.channel.k8s.io']), { subprotocol: 'v5.base64.channel.k8s.io', protocol: 'v5.channel.k8s.io', base64: true });
  assert.deepEqual(chooseWebSocketProtocol(['base64.channel.k8s.io']), { subprotocol: 'base64.channel.k8s.io', protocol: 'channel.k8s.io', base64: true });
  assert.deepEqual(chooseWebSocketProtocol(['v2.channel.k8s.io']), { subprotocol: 'v2.channel.k8s.io', protocol: 'v2.channel.k8s.io', base64: false });
  assert.equal(chooseWebSocketProtocol(['v6.channel.k8s.io']), null);

  assert.deepEqual(encodeChannelMessage(2, Buffer.from('x'), false), Buffer.from([2, 0x78]));
  assert.equal(encodeChannelMessage(1, Buffer.from('foo\n'), true), '1Zm9vCg==');
  assert.deepEqual(decodeChannelMessage(Buffer.from('0Zm9vCg=='), true, false), { kind: 'data', channel: 0, data: Buffer.from('foo\n') });
  assert.deepEqual(decodeChannelMessage(Buffer.from([255, 0]), false, true), { kind: 'close', channel: 0 });
  assert.equal(decodeChannelMessage(Buffer.from([255, 0, 1]), false, true).kind, 'invalid');
  assert.deepEqual(decodeChannelMessage(Buffer.from([255, 0]), false, false), { kind: 'data', channel: 255, data: Buffer.from([0]) }, 'no close signal before v5');
  assert.deepEqual(decodeChannelMessage(Buffer.alloc(0), false, true), { kind: 'empty' });
});
