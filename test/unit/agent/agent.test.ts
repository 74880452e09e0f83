// The real vmlet-agent bundle, run on this host against a unix socket (and TCP with mutual TLS), driven
// through AgentClient: what the guest agent does for vmlet, without a VM.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { ensureAgentBundle } from '../../../src/agent/bundle.ts';
import { AgentClient, AgentError, type MainExitEvent } from '../../../src/agent/host/client.ts';
import { encodeFrame, FrameType } from '../../../src/agent/protocol/frames.ts';
import { INITIAL_WINDOW } from '../../../src/agent/protocol/messages.ts';
import { CertificateAuthority, writeCertificate } from '../../harness/pki.ts';
import { createFixtureDir, removeFixtureDir, spawnTracked, stopProcess, waitFor } from '../../harness/processes.ts';
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

test('the agent answers HELLO with its version, capabilities and boot id, and ping with its uptime', async () => {
  assert.equal(client.hello.version, 1);
  assert.ok(client.hello.capabilities.includes('exec'));
  assert.match(client.hello.bootId, /^[0-9a-f-]{36}$/);
  const pong = await client.ping();
  assert.equal(pong.agentVersion, client.hello.agentVersion);
  assert.ok(pong.agentUptimeSeconds >= 0);
});

test('exec reports stdout, stderr and the exit code', async () => {
  const r = await client.run({ argv: ['sh', '-c', 'echo out; echo err >&2; exit 3'] });
  assert.deepEqual(r, { exitCode: 3, signal: null, stdout: 'out\n', stderr: 'err\n' });
  assert.equal((await client.run({ shell: 'exit 0' })).exitCode, 0);
});

test('exec runs with the given env and working dir, and a clean base environment', async () => {
  const r = await client.run({ argv: ['sh', '-c', 'echo "$GREETING|$PWD|$PATH|${AGENT_SECRET:-unset}"'], env: { GREETING: 'hi there' }, cwd: '/tmp' });
  assert.equal(r.stdout, 'hi there|/tmp|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|unset\n');
});

test('exec as a user given by uid:gid runs with those ids', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('needs root to switch users');
  const r = await client.run({ argv: ['sh', '-c', 'echo $(id -u):$(id -g)'], user: '65534:65533' });
  assert.equal(r.stdout, '65534:65533\n');
});

test('a command that cannot start fails the exec with StartFailed and a one-line reason', async () => {
  await assert.rejects(client.exec({ argv: ['no-such-command-xyz'] }), (err: AgentError) => {
    assert.equal(err.reason, 'StartFailed');
    assert.equal(err.message, 'exec no-such-command-xyz: executable file not found in $PATH');
    return true;
  });
  await assert.rejects(client.exec({ argv: ['true'], cwd: '/no/such/dir' }), { reason: 'StartFailed', message: 'working directory /no/such/dir does not exist or is not a directory' });
  await assert.rejects(client.exec({ argv: ['true'], user: 'no-such-user' }), { reason: 'NotFound', message: 'no user "no-such-user" in /etc/passwd' });
});

test('stdin reaches the process, EOF included, several MiB of it under flow control', async () => {
  const input = Buffer.alloc(5 * 1024 * 1024 + 17);
  for (let i = 0; i < input.length; i++) input[i] = (i * 7 + (i >> 12)) & 0xff;
  const p = await client.exec({ argv: ['sha256sum'], stdin: true });
  p.stdin!.end(input);
  const out = await collect(p.stdout);
  assert.equal(out.toString().split(' ')[0], createHash('sha256').update(input).digest('hex'));
  assert.deepEqual(await p.exited, { exitCode: 0, signal: null });
});

test('a signal ends the process; the exit is 128 + the signal number, with the signal named', async () => {
  const p = await client.exec({ argv: ['sleep', '1000'] });
  await p.signal('SIGTERM');
  assert.deepEqual(await p.exited, { exitCode: 143, signal: 'SIGTERM' });
  const q = await client.exec({ argv: ['sleep', '1000'] });
  await q.signal('KILL');
  assert.deepEqual(await q.exited, { exitCode: 137, signal: 'SIGKILL' });
  await assert.rejects(q.signal('SIGNOPE'), { reason: 'NotFound' }); // the exec is over
});

test('an exec whose output is not read holds one window, and other execs go on meanwhile', async () => {
  const busy = await client.exec({ argv: ['head', '-c', String(256 * 1024 * 1024), '/dev/zero'] });
  // Nobody reads busy.stdout; give the agent every chance to overrun it.
  for (let i = 0; i < 20; i++) assert.equal((await client.run({ argv: ['echo', String(i)] })).stdout, `${i}\n`);
  // At most the window the agent may fill, plus what the stream buffers before it stops granting more.
  const bound = INITIAL_WINDOW + busy.stdout.readableHighWaterMark;
  assert.ok(busy.stdout.readableLength <= bound, `${busy.stdout.readableLength} bytes buffered, over ${bound}`);
  let total = 0;
  for await (const chunk of busy.stdout) total += (chunk as Buffer).length;
  assert.equal(total, 256 * 1024 * 1024);
  assert.deepEqual(await busy.exited, { exitCode: 0, signal: null });
});

test('a main process logs stdout and stderr in the CRI format, rotated by size, and its exit is pushed', async () => {
  const exits: MainExitEvent[] = [];
  client.on('main-exit', (e: MainExitEvent) => exits.push(e));
  const exited = new Promise<MainExitEvent>((resolve) => client.on('main-exit', (e: MainExitEvent) => e.id === 'rot' && resolve(e)));
  const status = await client.startMain({
    id: 'rot', argv: ['sh', '-c', 'i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo "line $i"; done; echo oops >&2; exit 4'],
    log: { maxBytes: 2048, maxFiles: 3 },
  });
  assert.equal(status.state, 'running');
  const exit = await exited;
  assert.equal(exit.exitCode, 4);
  assert.deepEqual(await client.mainStatus('rot').then((s) => [s.state, s.exit?.exitCode, s.pid]), ['exited', 4, null]);
  const files = (await readdir(agent.logDir)).filter((f) => f.startsWith('rot.log')).sort();
  assert.deepEqual(files, ['rot.log', 'rot.log.1', 'rot.log.2']);
  for (const f of files) {
    const text = await readFile(join(agent.logDir, f), 'utf8');
    assert.ok(text.length <= 2048, `${f} is ${text.length} bytes`);
    for (const line of text.trimEnd().split('\n')) assert.match(line, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) F .+$/);
  }
  // All that is kept, in order, ending with the last lines; the oldest were rotated away.
  const all = (await collect(await client.logs('rot'))).toString().trimEnd().split('\n');
  assert.deepEqual(all.slice(-3), ['line 299', 'line 300', 'oops']);
  assert.ok(!all.includes('line 1'));
  assert.deepEqual((await collect(await client.logs('rot', { tailLines: 2 }))).toString(), 'line 300\noops\n');
  const stamped = (await collect(await client.logs('rot', { tailLines: 1, timestamps: true }))).toString();
  assert.match(stamped, /^\d{4}-\d\d-\d\dT[\d:.]+Z oops\n$/);
  assert.equal((await collect(await client.logs('rot', { sinceTime: new Date(Date.now() + 3600_000) }))).length, 0);
});

test('following a main process log streams new lines and ends when it exits', async () => {
  const fifo = join(agent.dir, 'go');
  await writeFile(fifo, '');
  // It logs one line, waits for the test to have its follower attached, logs another and exits.
  await client.startMain({ id: 'follow', argv: ['sh', '-c', `echo first; while [ -e ${fifo} ]; do sleep 0.05; done; echo second`] });
  const logs = await client.logs('follow', { follow: true });
  const seen: string[] = [];
  const firstSeen = new Promise<void>((resolve) => logs.on('data', (d: Buffer) => {
    seen.push(d.toString());
    if (seen.join('').includes('first\n')) resolve();
  }));
  await firstSeen;
  await import('node:fs/promises').then((fs) => fs.rm(fifo));
  await new Promise((resolve) => logs.on('end', resolve));
  assert.equal(seen.join(''), 'first\nsecond\n');
});

test('a main process can be stopped (SIGTERM, then SIGKILL after the grace period) and restarted', async () => {
  // It ignores SIGTERM, so the grace period decides.
  await client.startMain({ id: 'stubborn', argv: ['sh', '-c', 'trap "" TERM; echo up; while :; do sleep 1; done'] });
  await assert.rejects(client.startMain({ id: 'stubborn', argv: ['true'] }), { reason: 'AlreadyExists' });
  const stopped = await client.stopMain('stubborn', { graceMs: 300 });
  assert.deepEqual([stopped.state, stopped.exit?.signal], ['exited', 'SIGKILL']);
  const restarted = await client.restartMain('stubborn', { graceMs: 300 });
  assert.deepEqual([restarted.state, restarted.restarts], ['running', 1]);
  // A log per run, as the kubelet keeps it: the restarted run's own, and the one before as `previous`.
  await waitFor('the second run\'s "up"', async () => {
    const text = (await collect(await client.logs('stubborn'))).toString();
    return text === 'up\n' ? true : undefined;
  }, { timeoutMs: 10_000, intervalMs: 50 });
  assert.equal((await collect(await client.logs('stubborn', { previous: true }))).toString(), 'up\n');
  assert.equal((await client.stopMain('stubborn', { signal: 'SIGKILL' })).exit?.exitCode, 137);
  await assert.rejects(client.mainStatus('nope'), { reason: 'NotFound', message: 'no main process "nope"' });
});

test('a new host (after a stale half frame) takes over: main processes keep running, the old connection is closed', async () => {
  const old = await agent.connect();
  const started = await old.startMain({ id: 'survivor', argv: ['sleep', '1000'] });
  const oldClosed = new Promise((resolve) => old.once('close', resolve));
  const socket = await agent.rawConnect();
  // Half of a DATA frame and some garbage, as a previous host might have left on the channel.
  socket.write(Buffer.concat([Buffer.from('stale'), encodeFrame(FrameType.Data, 3, Buffer.alloc(500), 0).subarray(0, 100)]));
  const fresh = await AgentClient.connect(socket, { retryMs: 200 });
  try {
    assert.ok(await oldClosed);
    const status = await fresh.mainStatus('survivor');
    assert.deepEqual([status.state, status.pid], ['running', started.pid]);
    assert.equal((await fresh.run({ argv: ['echo', 'ok'] })).stdout, 'ok\n');
    await fresh.stopMain('survivor', { graceMs: 2000 });
  } finally {
    fresh.close();
  }
  // The suite's own client was replaced too: reconnect for the tests that follow.
  client = await agent.connect();
});

test('stats and info read /proc and statfs', async () => {
  const s = await client.stats();
  assert.ok(s.cpu.cpus >= 1 && s.cpu.usageSeconds > 0);
  assert.ok(s.memory.totalBytes > s.memory.availableBytes && s.memory.availableBytes > 0);
  assert.equal(s.filesystems[0]?.path, '/');
  assert.ok(s.filesystems[0].capacityBytes > 0);
  const info = await client.info();
  assert.equal(info.node, process.version);
  assert.ok(info.uptimeSeconds > 0);
});

test('mount refuses a relative path and an unknown type with InvalidArgument', async () => {
  await assert.rejects(client.mount({ tag: 'x', mountPath: 'rel/dir' }), { reason: 'InvalidArgument', message: 'mountPath must be absolute (got "rel/dir")' });
  await assert.rejects(client.mount({ tag: 'x', mountPath: '/mnt/x', fsType: 'nfs' as 'virtiofs' }), { reason: 'InvalidArgument' });
});

test('shutdown stops main processes with SIGTERM, answers, and the agent exits', async () => {
  const own = await startHostAgent();
  try {
    const c = await own.connect();
    await c.startMain({ id: 'web', argv: ['sleep', '1000'] });
    await c.shutdown({ graceMs: 5000 });
    assert.deepEqual(await own.proc.exited, { code: 0, signal: null });
  } finally {
    await own.stop();
  }
});

test('over TCP the agent requires a client certificate from its CA, and refuses others', async () => {
  const dir = await createFixtureDir('vmlet-agent-tls-');
  const ca = await CertificateAuthority.create('agent-ca');
  const other = await CertificateAuthority.create('someone-else');
  const server = await writeCertificate(dir, 'agent', await ca.issueServingCert(['127.0.0.1']));
  const good = await ca.issueClientCert('vmlet');
  const bad = await other.issueClientCert('vmlet');
  await writeFile(join(dir, 'ca.pem'), ca.cert);
  const proc = spawnTracked('vmlet-agent-tls', process.execPath, [
    await ensureAgentBundle(), '--tcp', '127.0.0.1:0', '--tls-cert', server.certFile, '--tls-key', server.keyFile,
    '--tls-ca', join(dir, 'ca.pem'), '--log-dir', join(dir, 'logs'), '--shutdown', 'exit',
  ], { logFile: join(dir, 'agent.log') });
  try {
    const port = await waitFor('the agent to listen', async () => {
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(await readFile(join(dir, 'agent.log'), 'utf8'));
      return m ? Number(m[1]) : undefined;
    }, { timeoutMs: 15_000, intervalMs: 50, process: proc });
    const dial = (pem: { cert: string; key: string } | undefined) => new Promise<import('node:tls').TLSSocket>((resolve, reject) => {
      const s = tlsConnect({ host: '127.0.0.1', port, ca: ca.cert, servername: '127.0.0.1', ...(pem ?? {}) });
      s.once('secureConnect', () => resolve(s)).once('error', reject);
    });
    const c = await AgentClient.connect(await dial(good));
    assert.equal((await c.run({ argv: ['echo', 'over tls'] })).stdout, 'over tls\n');
    c.close();
    for (const pem of [bad, undefined]) {
      // TLS 1.3 finishes the client's side of the handshake first; the refusal arrives as an alert.
      const refused = await dial(pem).then(
        (s) => AgentClient.connect(s, { timeoutMs: 5000 }).then(() => 'connected', (e: AgentError) => e.reason),
        () => 'refused',
      );
      assert.notEqual(refused, 'connected');
    }
    assert.match(await readFile(join(dir, 'agent.log'), 'utf8'), /TLS client refused/);
  } finally {
    await stopProcess(proc, 2000);
    await removeFixtureDir(dir);
  }
});

async function collect(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}
