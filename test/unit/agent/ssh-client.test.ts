// The SSH client (src/agent/ssh/client.ts) against an ssh2 Server on loopback (port picked by the OS):
// host key pinning on first use and refusal of a different key, one-line errors for a wrong password,
// a refused port and a server that never speaks, and exec through a real /bin/sh on this host.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import ssh2, { type Connection } from 'ssh2';
import { SshConnection, SshError, type SshConnectOptions } from '../../../src/agent/ssh/client.ts';
import { fingerprint, readPin } from '../../../src/agent/ssh/host-key.ts';
import { freePort } from '../../harness/processes.ts';
import { ed25519Key } from '../helpers/ssh-key.ts';

interface TestServer {
  port: number;
  fingerprint: string;
  close(): Promise<void>;
}

/**
 * An SSH server that lets admin/admin in and runs exec requests with /bin/sh -c on this host. With
 * 'keyboard-interactive' it offers only that method and asks for the password as PAM does (macOS).
 */
async function startServer(auth: 'password' | 'keyboard-interactive' = 'password'): Promise<TestServer> {
  const key = ed25519Key();
  const parsed = utils.parseKey(key.public);
  if (parsed instanceof Error) throw parsed;
  const connections = new Set<Connection>();
  const server = new Server({ hostKeys: [key.private] }, (client) => {
    connections.add(client);
    client.on('error', () => {});
    client.on('close', () => connections.delete(client));
    client.on('authentication', (ctx) => {
      if (auth === 'password') {
        if (ctx.method === 'password' && ctx.username === 'admin' && ctx.password === 'admin') ctx.accept();
        else ctx.reject(['password', 'publickey']);
      } else if (ctx.method === 'keyboard-interactive' && ctx.username === 'admin') {
        ctx.prompt([{ prompt: 'Password:', echo: false }], (answers) => (answers[0] === 'admin' ? ctx.accept() : ctx.reject(['keyboard-interactive'])));
      } else {
        ctx.reject(['keyboard-interactive']);
      }
    });
    client.on('session', (accept) => {
      const session = accept();
      session.on('exec', (acceptExec, _reject, info) => {
        const channel = acceptExec();
        const child = spawn('/bin/sh', ['-c', info.command], { stdio: 'pipe' });
        child.stdout.pipe(channel, { end: false });
        child.stderr.pipe(channel.stderr, { end: false });
        channel.pipe(child.stdin);
        session.on('signal', (_a, _r, sig: { name: string }) => child.kill(`SIG${sig.name}` as NodeJS.Signals));
        child.on('close', (code, signal) => {
          if (signal) channel.exit(signal.replace(/^SIG/, ''), false, '');
          else channel.exit(code ?? 255);
          channel.end();
        });
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    port,
    fingerprint: fingerprint(parsed.getPublicSSH()),
    close: () =>
      new Promise((resolve) => {
        for (const c of connections) c.end();
        server.close(() => resolve());
      }),
  };
}

const { Server, utils } = ssh2;

let dir: string;
let serverA: TestServer;
let serverB: TestServer;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmlet-ssh-unit-'));
  serverA = await startServer();
  serverB = await startServer();
});

after(async () => {
  await serverA.close();
  await serverB.close();
  await rm(dir, { recursive: true, force: true });
});

const opts = (port: number, pin: string, password = 'admin'): SshConnectOptions => ({
  host: '127.0.0.1',
  port,
  credentials: { username: 'admin', password },
  hostKeyFile: join(dir, pin),
  timeoutMs: 5000,
});

const failure = async (p: Promise<unknown>): Promise<SshError> => {
  const err = await p.then(
    () => assert.fail('expected the connection to fail'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof SshError, `not an SshError: ${String(err)}`);
  assert.ok(!err.message.includes('\n'), `one line: ${err.message}`);
  return err;
};

test('the first connection pins the host key; the same key passes; a different key is refused', async () => {
  const first = await SshConnection.connect(opts(serverA.port, 'pin-a.json'));
  try {
    assert.equal(first.hostKey.newlyPinned, true);
    assert.equal(first.hostKey.fingerprint, serverA.fingerprint);
    assert.match(first.hostKey.fingerprint, /^SHA256:[A-Za-z0-9+/]{43}$/);
    assert.equal((await readPin(join(dir, 'pin-a.json')))?.fingerprint, serverA.fingerprint);
  } finally {
    first.close();
  }
  const again = await SshConnection.connect(opts(serverA.port, 'pin-a.json'));
  assert.equal(again.hostKey.newlyPinned, false);
  again.close();

  // Server B has another key: a VM whose key changed under the same pin file.
  const err = await failure(SshConnection.connect(opts(serverB.port, 'pin-a.json')));
  assert.equal(err.reason, 'host-key-changed');
  assert.equal(err.retryable, false);
  assert.ok(err.message.includes(serverA.fingerprint), err.message);
  assert.ok(err.message.includes(serverB.fingerprint), err.message);
  assert.match(err.message, new RegExp(`^ssh to 127\\.0\\.0\\.1:${serverB.port} as admin: host key changed: `));
  // The pin is left as it was.
  assert.equal((await readPin(join(dir, 'pin-a.json')))?.fingerprint, serverA.fingerprint);
});

test('a wrong password fails in one line naming what was tried', async () => {
  const err = await failure(SshConnection.connect(opts(serverA.port, 'pin-auth.json', 'wrong')));
  assert.equal(err.reason, 'auth');
  assert.equal(
    err.message,
    `ssh to 127.0.0.1:${serverA.port} as admin: authentication failed (tried password; the server offers password, publickey)`,
  );
});

test('a server that only offers keyboard-interactive (PAM, as macOS can be) gets the password', async () => {
  const kbd = await startServer('keyboard-interactive');
  try {
    const conn = await SshConnection.connect(opts(kbd.port, 'pin-kbd.json'));
    assert.equal((await conn.run({ argv: ['true'] })).exitCode, 0);
    conn.close();
    const err = await failure(SshConnection.connect(opts(kbd.port, 'pin-kbd.json', 'wrong')));
    assert.equal(err.message, `ssh to 127.0.0.1:${kbd.port} as admin: authentication failed (tried password, keyboard-interactive; the server offers keyboard-interactive)`);
  } finally {
    await kbd.close();
  }
});

test('a closed port is "connection refused"; a silent server times out within the bound', async () => {
  const port = await freePort();
  const refused = await failure(SshConnection.connect(opts(port, 'pin-refused.json')));
  assert.equal(refused.reason, 'refused');
  assert.equal(refused.message, `ssh to 127.0.0.1:${port} as admin: connection refused (is the SSH server running?)`);

  // A TCP server that accepts and never sends an SSH greeting.
  const accepted = new Set<Socket>();
  const silent: TcpServer = createTcpServer((s) => accepted.add(s));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const silentPort = (silent.address() as { port: number }).port;
  try {
    const err = await failure(SshConnection.connect({ ...opts(silentPort, 'pin-silent.json'), timeoutMs: 300 }));
    assert.equal(err.reason, 'timeout');
    assert.match(err.message, /no SSH session within 0\.3 s/);
    // The client gave up for real: the server sees the connection end (and a socket left open would
    // keep this test process from exiting).
    const [conn] = accepted;
    assert.ok(conn);
    if (!conn.closed) await new Promise((resolve) => conn.once('close', resolve).resume());
  } finally {
    for (const s of accepted) s.destroy();
    silent.close();
  }
});

test('exec: exit codes, stdin to EOF, env, cwd, stderr, signals', async () => {
  const conn = await SshConnection.connect(opts(serverA.port, 'pin-exec.json'));
  try {
    assert.equal((await conn.run({ argv: ['true'] })).exitCode, 0);
    assert.deepEqual(await conn.run({ argv: ['sh', '-c', 'exit 7'] }).then((r) => [r.exitCode, r.signal]), [7, null]);
    assert.equal((await conn.run({ shell: 'exit 3' })).exitCode, 3);
    const wc = await conn.run({ argv: ['wc', '-c'], input: Buffer.alloc(100_000, 'x') });
    assert.equal(wc.stdout.toString().trim(), '100000');
    // Without stdin: true the program sees end-of-file at once rather than waiting.
    assert.equal((await conn.run({ argv: ['cat'] })).stdout.length, 0);
    const env = await conn.run({ argv: ['sh', '-c', 'printf "%s|%s" "$A" "$(pwd)"; echo err >&2'], env: { A: "it's $HOME" }, cwd: '/tmp' });
    assert.equal(env.stdout.toString(), "it's $HOME|/tmp");
    assert.equal(env.stderr.toString(), 'err\n');

    // (ssh2's Server drops channel requests after EOF, so stdin stays open here; the e2e test against
    // dropbear signals after EOF.)
    const sleeper = await conn.exec({ argv: ['sleep', '60'], stdin: true });
    await assert.rejects(sleeper.signal('NOPE'), /unknown signal NOPE/);
    sleeper.stdout.resume();
    sleeper.stderr?.resume();
    await sleeper.signal('SIGTERM');
    assert.deepEqual(await sleeper.exited, { exitCode: 143, signal: 'SIGTERM' });
  } finally {
    conn.close();
  }
});

test('the pin file is written whole (JSON with the fingerprint and key type)', async () => {
  const pin = JSON.parse(await readFile(join(dir, 'pin-a.json'), 'utf8')) as Record<string, string>;
  assert.equal(pin.keyType, 'ssh-ed25519');
  assert.equal(pin.address, `127.0.0.1:${serverA.port}`);
});
