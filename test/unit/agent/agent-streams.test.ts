// What the kubelet API needs of the agent beyond exec: port.connect (kubectl port-forward), main.attach
// with stdin (kubectl attach), and logs of the previous run, limited by bytes, of one output stream. The
// real agent bundle runs on this host over a unix socket; the guest's "loopback servers" are real TCP
// servers on 127.0.0.1 with ports the OS picked.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Duplex, Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { AgentClient, AgentError, type MainExitEvent } from '../../../src/agent/host/client.ts';
import { waitFor } from '../../harness/processes.ts';
import { startHostAgent, type HostAgent } from './agent-host.ts';

let agent: HostAgent;
let client: AgentClient;

before(async () => {
  agent = await startHostAgent();
  client = await agent.connect();
});
after(async () => {
  await agent?.stop();
});

// ---------- port.connect ----------

interface TestServer {
  server: Server;
  port: number;
  sockets: Set<Socket>;
  close(): Promise<void>;
}

async function listen(onConnection: (s: Socket) => void, opts: { allowHalfOpen?: boolean } = {}): Promise<TestServer> {
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: opts.allowHalfOpen ?? false }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onConnection(s);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    server, sockets, port: (server.address() as AddressInfo).port,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Sockets the agent process holds open (its listener and our session included). */
async function agentSockets(): Promise<number> {
  const dir = `/proc/${agent.proc.pid}/fd`;
  let n = 0;
  for (const fd of await readdir(dir)) if ((await readlink(join(dir, fd)).catch(() => '')).startsWith('socket:')) n++;
  return n;
}

async function waitForAgentSockets(count: number): Promise<void> {
  await waitFor(`the agent to hold ${count} sockets again`, async () => ((await agentSockets()) === count ? true : undefined), { timeoutMs: 5000, intervalMs: 20 });
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('the agent offers port-connect, attach and the new log options', () => {
  for (const c of ['port-connect', 'attach', 'main.stdin', 'logs.previous', 'logs.limit-bytes', 'logs.stream']) {
    assert.ok(client.hello.capabilities.includes(c), c);
  }
});

test('port.connect: 8 MiB each way through an echo server, checksummed, with flow control', async () => {
  let serverGot = createHash('sha256');
  let serverBytes = 0;
  const echo = await listen((s) => {
    serverGot = createHash('sha256');
    s.on('data', (d: Buffer) => {
      serverGot.update(d);
      serverBytes += d.length;
    });
    s.pipe(s);
  });
  const baseline = await agentSockets();
  try {
    const data = randomBytes(8 * 1024 * 1024);
    const conn = await client.connectPort(echo.port);
    const received = collect(conn);
    // Write in pieces so the host's credit runs out and comes back many times.
    for (let at = 0; at < data.length; at += 100_000) {
      if (!conn.write(data.subarray(at, at + 100_000))) await once(conn, 'drain');
    }
    conn.end();
    const back = await received;
    assert.equal(back.length, data.length);
    assert.equal(sha(back), sha(data));
    assert.equal(serverBytes, data.length);
    assert.equal(serverGot.digest('hex'), sha(data));
    if (!conn.closed) await once(conn, 'close');
    await waitForAgentSockets(baseline);
  } finally {
    await echo.close();
  }
});

test('port.connect: concurrent connections on one session keep their bytes apart', async () => {
  const echo = await listen((s) => s.pipe(s));
  try {
    const payloads = Array.from({ length: 8 }, (_, i) => randomBytes(512 * 1024 + i * 1000));
    const results = await Promise.all(payloads.map(async (p) => {
      const conn = await client.connectPort(echo.port);
      const back = collect(conn);
      conn.end(p);
      return back;
    }));
    results.forEach((r, i) => assert.equal(sha(r), sha(payloads[i]!), `connection ${i}`));
    // And the session still answers requests in between.
    assert.equal((await client.run({ argv: ['echo', 'ok'] })).stdout, 'ok\n');
  } finally {
    await echo.close();
  }
});

test('port.connect: a refused port is ConnectFailed; hosts other than the loopback and bad ports are refused', async () => {
  const gone = await listen(() => {});
  const port = gone.port;
  await gone.close();
  await assert.rejects(client.connectPort(port), (err: AgentError) => {
    assert.equal(err.reason, 'ConnectFailed');
    assert.equal(err.message, `connect ECONNREFUSED 127.0.0.1:${port}`);
    return true;
  });
  await assert.rejects(client.connectPort(80, { host: '10.0.0.1' as '::1' }), { reason: 'InvalidArgument' });
  await assert.rejects(client.connectPort(0), { reason: 'InvalidArgument' });
  await assert.rejects(client.connectPort(70000), { reason: 'InvalidArgument' });
});

test('port.connect: ::1 is the other loopback it reaches', async (t) => {
  const server = createServer((s) => s.end('over v6\n'));
  const up = await new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(0, '::1', () => resolve(true));
  });
  if (!up) return t.skip('no IPv6 loopback here');
  try {
    const conn = await client.connectPort((server.address() as AddressInfo).port, { host: '::1' });
    conn.end();
    assert.equal((await collect(conn)).toString(), 'over v6\n');
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});

test('port.connect: the host half-closes, the guest server answers after the EOF, then both sides close', async () => {
  const srv = await listen((s) => {
    let n = 0;
    s.on('data', (d: Buffer) => (n += d.length));
    s.on('end', () => s.end(`got ${n} bytes\n`));
  }, { allowHalfOpen: true });
  const baseline = await agentSockets();
  try {
    const conn = await client.connectPort(srv.port);
    const answer = collect(conn);
    conn.write(Buffer.alloc(300_000, 1));
    conn.end();
    assert.equal((await answer).toString(), 'got 300000 bytes\n');
    if (!conn.closed) await once(conn, 'close');
    assert.equal(conn.errored, null);
    await waitForAgentSockets(baseline);
  } finally {
    await srv.close();
  }
});

test('port.connect: the guest server ends first; the host may still send until it ends too', async () => {
  let serverGot = '';
  let serverEnd!: () => void;
  const serverEnded = new Promise<void>((resolve) => (serverEnd = resolve));
  const srv = await listen((s) => {
    s.end('banner\n'); // its side is done at once
    s.on('data', (d: Buffer) => (serverGot += d.toString()));
    s.on('end', () => serverEnd());
  }, { allowHalfOpen: true });
  try {
    const conn = await client.connectPort(srv.port);
    // (Not `for await`: an async iterator destroys the stream when the readable side ends.)
    let banner = '';
    conn.on('data', (d: Buffer) => (banner += d.toString()));
    await once(conn, 'end');
    assert.equal(banner, 'banner\n');
    conn.end('late words');
    await serverEnded;
    assert.equal(serverGot, 'late words');
    if (!conn.closed) await once(conn, 'close');
    assert.equal(conn.errored, null);
  } finally {
    await srv.close();
  }
});

test('port.connect: a connection reset in the guest destroys the stream with ConnectFailed', async () => {
  const srv = await listen((s) => {
    s.write('x');
    setTimeout(() => s.resetAndDestroy(), 50);
  });
  try {
    const conn = await client.connectPort(srv.port);
    conn.resume();
    const [err] = await once(conn, 'error') as [AgentError];
    assert.equal(err.reason, 'ConnectFailed');
    assert.match(err.message, /^the connection to 127\.0\.0\.1:\d+ in the guest broke: read ECONNRESET$/);
  } finally {
    await srv.close();
  }
});

test('port.connect: the host destroying a connection mid-transfer closes the guest socket; nothing leaks in the agent', async () => {
  let sent = 0;
  const serverClosed: Promise<void>[] = [];
  const srv = await listen((s) => {
    serverClosed.push(new Promise((resolve) => s.on('close', () => resolve())));
    const chunk = Buffer.alloc(64 * 1024, 7);
    const pump = (): void => {
      while (!s.destroyed && s.write(chunk)) sent += chunk.length;
    };
    s.on('drain', pump);
    pump();
  });
  const baseline = await agentSockets();
  try {
    const conns: Duplex[] = [];
    for (let i = 0; i < 3; i++) conns.push(await client.connectPort(srv.port));
    assert.equal(await agentSockets(), baseline + 3);
    // Read some of each, then abandon it; the server keeps writing all along.
    for (const conn of conns) {
      let got = 0;
      await new Promise<void>((resolve) => conn.on('data', (d: Buffer) => {
        got += d.length;
        if (got > 3 * 1024 * 1024) resolve();
      }));
      conn.destroy();
    }
    await Promise.all(serverClosed);
    assert.equal(srv.sockets.size, 0);
    await waitForAgentSockets(baseline);
    assert.ok(sent > 9 * 1024 * 1024);
    // The session is fine afterwards.
    assert.equal((await client.run({ argv: ['echo', 'still here'] })).stdout, 'still here\n');
  } finally {
    await srv.close();
  }
});

test('port.connect: a host that goes away takes its connections with it', async () => {
  const srv = await listen((s) => s.pipe(s));
  const baseline = await agentSockets();
  try {
    const other = await agent.connect();
    const conn = await other.connectPort(srv.port);
    conn.on('error', () => {});
    conn.write('hello');
    await waitFor('the server connection', async () => (srv.sockets.size === 1 ? true : undefined), { timeoutMs: 2000, intervalMs: 10 });
    other.close();
    await waitFor('the guest socket to close', async () => (srv.sockets.size === 0 ? true : undefined), { timeoutMs: 5000, intervalMs: 10 });
    // `other` replaced the suite's session (one host at a time): connect again.
    client = await agent.connect();
    await waitForAgentSockets(baseline);
  } finally {
    await srv.close();
  }
});

test('an agent without a capability is NotSupported on the host; an unknown op is NotSupported from the agent', async () => {
  const real = client.hello.capabilities;
  client.hello.capabilities = real.filter((c) => c !== 'port-connect' && c !== 'attach' && c !== 'logs.previous');
  try {
    await assert.rejects(client.connectPort(80), { reason: 'NotSupported', message: /lacks the capability "port-connect"/ });
    await assert.rejects(client.attachMain('x'), { reason: 'NotSupported' });
    await assert.rejects(client.logs('x', { previous: true }), { reason: 'NotSupported' });
  } finally {
    client.hello.capabilities = real;
  }
  await assert.rejects(client.request('no.such.op' as 'ping', {}), { reason: 'NotSupported', message: 'unknown op "no.such.op"' });
});

// ---------- main.attach ----------

/** Reads `stream` into a string as it comes. */
function gather(stream: Readable | null): { text: () => string; until: (s: string) => Promise<void> } {
  let text = '';
  const waiters: (() => void)[] = [];
  stream?.on('data', (d: Buffer) => {
    text += d.toString();
    for (const w of waiters.splice(0)) w();
  });
  return {
    text: () => text,
    until: async (s) => {
      const deadline = Date.now() + 10_000;
      while (!text.includes(s)) {
        if (Date.now() > deadline) throw new Error(`never saw ${JSON.stringify(s)}; got ${JSON.stringify(text)}`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 100);
        });
      }
    },
  };
}

test('attach sees the output written after attaching, raw, on stdout and stderr, and ends with the exit', async () => {
  const go = join(agent.dir, 'attach-go');
  const stop = join(agent.dir, 'attach-stop');
  await client.startMain({
    id: 'att', shell: `echo before; while [ ! -e ${go} ]; do sleep 0.02; done; printf 'partial'; echo ' line'; echo err-after >&2; ` +
      `while [ ! -e ${stop} ]; do sleep 0.02; done; echo bye; exit 5`,
  });
  await waitFor('"before" in the log', async () => ((await collect(await client.logs('att'))).toString() === 'before\n' ? true : undefined), { timeoutMs: 5000, intervalMs: 20 });
  const a = await client.attachMain('att');
  const b = await client.attachMain('att'); // a second attacher at the same time
  assert.equal(a.stdin, null);
  const [aOut, aErr, bOut] = [gather(a.stdout), gather(a.stderr), gather(b.stdout)];
  await writeFile(go, '');
  await aOut.until('partial line\n');
  await aErr.until('err-after\n');
  await bOut.until('partial line\n');
  await writeFile(stop, '');
  assert.deepEqual(await a.exited, { exitCode: 5, signal: null });
  assert.deepEqual(await b.exited, { exitCode: 5, signal: null });
  assert.equal(aOut.text(), 'partial line\nbye\n'); // nothing from before the attach
  assert.equal(aErr.text(), 'err-after\n');
  assert.equal(bOut.text(), 'partial line\nbye\n');
  await assert.rejects(a.resize(24, 80), { reason: 'NotSupported' });
  await assert.rejects(client.attachMain('att'), { reason: 'InvalidArgument', message: 'main process "att" is not running' });
  await assert.rejects(client.attachMain('nope'), { reason: 'NotFound' });
});

test('attach with stdin: bytes reach the main process; without stdinOnce its stdin outlives an attach', async () => {
  await client.startMain({ id: 'reader', argv: ['sh', '-c', 'read x; echo "got $x"; read y; echo "got $y"; exit 3'], stdin: true });
  const first = await client.attachMain('reader', { stdin: true });
  assert.equal(first.stdinAttached, true);
  const out1 = gather(first.stdout);
  first.stdin!.write('one\n');
  await out1.until('got one\n');
  first.stdin!.end(); // not stdinOnce: the process's stdin stays open
  first.close();
  await assert.rejects(first.exited, { reason: 'Disconnected' });
  const second = await client.attachMain('reader', { stdin: true });
  const out2 = gather(second.stdout);
  second.stdin!.write('two\n');
  assert.deepEqual(await second.exited, { exitCode: 3, signal: null });
  assert.equal(out2.text(), 'got two\n');
  assert.equal((await collect(await client.logs('reader'))).toString(), 'got one\ngot two\n');
});

test('attach with stdinOnce: the first attacher\'s EOF closes the process\'s stdin; so does its detach', async () => {
  await client.startMain({ id: 'once', argv: ['sh', '-c', 'cat; echo cat-done'], stdin: true, stdinOnce: true });
  const a = await client.attachMain('once', { stdin: true });
  const out = gather(a.stdout);
  a.stdin!.write('hello\n');
  await out.until('hello\n');
  a.stdin!.end();
  assert.deepEqual(await a.exited, { exitCode: 0, signal: null });
  assert.equal(out.text(), 'hello\ncat-done\n');

  const exited = new Promise<MainExitEvent>((resolve) => client.on('main-exit', (e: MainExitEvent) => e.id === 'once2' && resolve(e)));
  await client.startMain({ id: 'once2', argv: ['sh', '-c', 'cat >/dev/null; echo stdin-closed'], stdin: true, stdinOnce: true });
  const b = await client.attachMain('once2', { stdin: true });
  b.stdin!.write('data');
  b.close(); // the client went away: stdin closes with it
  assert.equal((await exited).exitCode, 0);
  assert.equal((await collect(await client.logs('once2'))).toString(), 'stdin-closed\n');
});

test('attach: a process without stdin takes no input; a main process cannot have a tty', async () => {
  await client.startMain({ id: 'nostdin', argv: ['sh', '-c', 'cat; echo eof-at-once; sleep 1000'] });
  const a = await client.attachMain('nostdin', { stdin: true });
  assert.equal(a.stdinAttached, false);
  a.stdin!.write('ignored\n'); // discarded by the agent, which still grants credit
  a.close();
  await waitFor('the log line', async () => ((await collect(await client.logs('nostdin'))).toString() === 'eof-at-once\n' ? true : undefined), { timeoutMs: 5000, intervalMs: 20 });
  await client.stopMain('nostdin', { graceMs: 1000 });
  await assert.rejects(client.request('main.start', { id: 'tty', argv: ['sh'], tty: { rows: 24, cols: 80 } }), { reason: 'NotSupported' });
});

test('attach: an attacher that does not read loses output; the process and its log do not wait for it', async () => {
  const go = join(agent.dir, 'flood-go');
  const total = 8 * 1024 * 1024;
  const exited = new Promise<MainExitEvent>((resolve) => client.on('main-exit', (e: MainExitEvent) => e.id === 'flood' && resolve(e)));
  await client.startMain({ id: 'flood', shell: `while [ ! -e ${go} ]; do sleep 0.02; done; head -c ${total} /dev/zero | tr '\\0' 'a'; echo` });
  const a = await client.attachMain('flood');
  await writeFile(go, '');
  assert.equal((await exited).exitCode, 0); // nobody read the attach meanwhile
  const got = (await collect(a.stdout)).length;
  const exit = await a.exited;
  assert.ok(exit.droppedBytes !== undefined && exit.droppedBytes > 0, JSON.stringify(exit));
  assert.equal(got + exit.droppedBytes, total + 1);
  assert.ok(got >= 1024 * 1024, `${got} bytes came through`);
  const logged = (await collect(await client.logs('flood'))).length;
  assert.equal(logged, total + 1);
});

// ---------- logs ----------

test('logs previous: a restart keeps the last run\'s log; starting an id again does too; none before', async () => {
  const counter = join(agent.dir, 'runs');
  await rm(counter, { force: true });
  const shell = `n=$(cat ${counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > ${counter}; echo "run $n"; echo "err $n" >&2; exec sleep 1000`;
  await client.startMain({ id: 'prev', shell });
  const current = async (want: string): Promise<void> => {
    await waitFor(JSON.stringify(want), async () => ((await collect(await client.logs('prev', { stream: 'stdout' }))).toString() === want ? true : undefined), { timeoutMs: 5000, intervalMs: 20 });
  };
  await current('run 1\n');
  await assert.rejects(client.logs('prev', { previous: true }), (err: AgentError) => {
    assert.equal(err.reason, 'NotFound');
    assert.equal(err.message, 'no previous run of main process "prev"');
    return true;
  });
  await client.restartMain('prev', { graceMs: 1000 });
  await current('run 2\n');
  const previous = (await collect(await client.logs('prev', { previous: true }))).toString();
  assert.ok(previous === 'run 1\nerr 1\n' || previous === 'err 1\nrun 1\n', previous);
  // follow on the previous run returns it and ends.
  assert.equal((await collect(await client.logs('prev', { previous: true, follow: true, stream: 'stderr' }))).toString(), 'err 1\n');
  await client.restartMain('prev', { graceMs: 1000 });
  await current('run 3\n');
  assert.equal((await collect(await client.logs('prev', { previous: true, stream: 'stdout' }))).toString(), 'run 2\n');
  // Stopped, then started again under the same id: a new run as well.
  await client.stopMain('prev', { graceMs: 1000 });
  await client.startMain({ id: 'prev', shell });
  await current('run 4\n');
  assert.equal((await collect(await client.logs('prev', { previous: true, stream: 'stdout' }))).toString(), 'run 3\n');
  assert.deepEqual((await readdir(agent.logDir)).filter((f) => f.startsWith('prev.')).sort(), ['prev.log', 'prev.log.previous']);
  await client.stopMain('prev', { graceMs: 1000 });
  await client.removeMain('prev');
  assert.deepEqual((await readdir(agent.logDir)).filter((f) => f.startsWith('prev.')), []);
});

test('logs stream: only the lines of stdout, or of stderr', async () => {
  const exited = new Promise<MainExitEvent>((resolve) => client.on('main-exit', (e: MainExitEvent) => e.id === 'split' && resolve(e)));
  await client.startMain({ id: 'split', shell: 'echo o1; echo e1 >&2; sleep 0.05; echo o2; echo e2 >&2' });
  await exited;
  assert.equal((await collect(await client.logs('split', { stream: 'stdout' }))).toString(), 'o1\no2\n');
  assert.equal((await collect(await client.logs('split', { stream: 'stderr' }))).toString(), 'e1\ne2\n');
  assert.equal((await collect(await client.logs('split', { stream: 'stderr', tailLines: 1 }))).toString(), 'e2\n');
});

test('logs limitBytes: cut at the byte, with a tail, with timestamps, and a follow ends at the limit', async () => {
  const exited = new Promise<MainExitEvent>((resolve) => client.on('main-exit', (e: MainExitEvent) => e.id === 'lim' && resolve(e)));
  await client.startMain({ id: 'lim', shell: 'for i in 1 2 3 4 5 6 7 8 9; do echo "line $i"; done' });
  await exited;
  assert.equal((await collect(await client.logs('lim', { limitBytes: 10 }))).toString(), 'line 1\nlin');
  assert.equal((await collect(await client.logs('lim', { limitBytes: 7 }))).toString(), 'line 1\n');
  assert.equal((await collect(await client.logs('lim', { limitBytes: 1000 }))).length, 63);
  assert.equal((await collect(await client.logs('lim', { tailLines: 2, limitBytes: 9 }))).toString(), 'line 8\nli');
  const stamped = (await collect(await client.logs('lim', { timestamps: true, limitBytes: 20 }))).toString();
  assert.equal(stamped.length, 20);
  assert.match(stamped, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d/);
  await assert.rejects(client.logs('lim', { limitBytes: 0 }), { reason: 'InvalidArgument' });
  await assert.rejects(client.logs('lim', { limitBytes: 1.5 }), { reason: 'InvalidArgument' });

  // Following a process that never stops: the stream ends when the limit is reached.
  await client.startMain({ id: 'ticker', shell: 'i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.02; done' });
  const follow = await client.logs('ticker', { follow: true, limitBytes: 100 });
  const started = Date.now();
  const text = (await collect(follow)).toString();
  assert.equal(text.length, 100);
  assert.ok(text.startsWith('tick 1\ntick 2\n'), text);
  assert.ok(Date.now() - started < 10_000);
  await client.stopMain('ticker', { graceMs: 1000 });
});

async function collect(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}
