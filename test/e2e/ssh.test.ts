// The SSH fallback (src/agent/ssh/) against a real guest: the Linux test guest under QEMU, booted once
// for this file with dropbear and without the agent (vmlet.ssh=on vmlet.agent=off), its port 22
// forwarded to a loopback port picked here. Exec semantics (exit codes, hostile argv, stdin, tty and
// resize, signals), one-line failures (wrong password, changed host key), and installing the real agent
// over SSH, which then answers on the virtio-serial channel.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, before, test } from 'node:test';
import { ensureAgentBundle } from '../../src/agent/bundle.ts';
import { timeTrueOverSsh } from '../../src/agent/ssh/bench.ts';
import { SshConnection, SshError, waitForSsh, type SshConnectOptions, type SshExec } from '../../src/agent/ssh/client.ts';
import { installAgentOverSsh, uploadFile } from '../../src/agent/ssh/install.ts';
import { createFixtureDir, freePort, removeFixtureDir } from '../harness/processes.ts';
import { bootTestGuest, type BootedGuest } from '../guest/boot.ts';
import { ensureTestGuest } from '../guest/build.ts';

let vm: BootedGuest | undefined;
let dir: string | undefined;
let port: number;
let admin: SshConnection;

const target = (overrides: Partial<SshConnectOptions> = {}): SshConnectOptions => ({
  host: '127.0.0.1',
  port,
  credentials: { username: 'admin', password: 'admin' },
  hostKeyFile: join(dir!, 'ssh-host-key.json'),
  timeoutMs: 20_000, // TCG: key exchange in the guest is slow
  ...overrides,
});

before(async () => {
  const guest = await ensureTestGuest((msg) => console.log(`test guest: ${msg}`));
  dir = await createFixtureDir('vmlet-ssh-e2e-');
  port = await freePort();
  vm = await bootTestGuest({
    guest: guest.dir,
    extraCmdline: 'vmlet.ssh=on vmlet.agent=off',
    extraArgs: ['-nic', `user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:${port}-:22`],
  });
  try {
    // Until dropbear listens, QEMU's forward accepts and hangs up; waitForSsh retries that.
    admin = await waitForSsh({ ...target(), totalTimeoutMs: 150_000 });
    console.log(`boot to first SSH login: ${((performance.now() - vm.startedAt) / 1000).toFixed(2)} s`);
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${await readFile(vm.consoleLog, 'utf8').catch(() => '')}`);
  }
}, { timeout: 240_000 });

after(async () => {
  admin?.close();
  await vm?.stop();
  if (dir) await removeFixtureDir(dir);
});

/** Collects a stream until `pattern` shows up in it (or it ends), returning everything so far. */
function readUntil(stream: NodeJS.ReadableStream, pattern: RegExp, timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => done(new Error(`no ${pattern} within ${timeoutMs} ms; got ${JSON.stringify(text)}`)), timeoutMs);
    const onData = (b: Buffer): void => {
      text += b.toString();
      if (pattern.test(text)) done();
    };
    const onEnd = (): void => done(new Error(`stream ended before ${pattern}; got ${JSON.stringify(text)}`));
    const done = (err?: Error): void => {
      clearTimeout(timer);
      stream.removeListener('data', onData);
      stream.removeListener('end', onEnd);
      if (err) reject(err);
      else resolve(text);
    };
    stream.on('data', onData);
    stream.on('end', onEnd);
  });
}

test('the first connection pinned dropbear\'s ed25519 key, as OpenSSH would print it', { timeout: 120_000 }, async (t) => {
  assert.equal(admin.hostKey.keyType, 'ssh-ed25519');
  assert.match(admin.hostKey.fingerprint, /^SHA256:[A-Za-z0-9+/]{43}$/);
  assert.match(admin.serverSoftware, /^dropbear_2022\.83/);
  const pin = JSON.parse(await readFile(join(dir!, 'ssh-host-key.json'), 'utf8')) as { fingerprint: string };
  assert.equal(pin.fingerprint, admin.hostKey.fingerprint);
  t.diagnostic(`host key ${admin.hostKey.fingerprint}, server ${admin.serverSoftware}`);
});

test('exit codes: true is 0, sh -c "exit 7" is 7, a missing program is 127', { timeout: 120_000 }, async () => {
  assert.equal((await admin.run({ argv: ['true'] })).exitCode, 0);
  const seven = await admin.run({ argv: ['sh', '-c', 'exit 7'] });
  assert.deepEqual([seven.exitCode, seven.signal], [7, null]);
  assert.equal((await admin.run({ argv: ['no-such-program-vmlet'] })).exitCode, 127);
  assert.equal((await admin.run({ shell: 'exit 5' })).exitCode, 5);
});

test('argv with quotes, $HOME, backticks, a newline, an empty string and non-ASCII arrives intact', { timeout: 120_000 }, async () => {
  const args = [`it's`, '"double"', '$HOME', '`id`', '$(id)', 'line one\nline two', '', 'h\u00e9llo \u2713 \u{1f680}', '\\', '*', ' lead', 'a;b|c&d', '-n'];
  const r = await admin.run({ argv: ['printf', '%s\\0', ...args] });
  assert.equal(r.exitCode, 0, r.stderr.toString());
  const got = r.stdout.toString('utf8').split('\0');
  assert.equal(got.pop(), '', 'output ends with a NUL');
  assert.deepEqual(got, args);
  // Bytes that are not UTF-8 too.
  const raw = Buffer.from([0xff, 0x27, 0x0a, 0x80, 0x24]);
  const rr = await admin.run({ argv: ['printf', '%s', raw] });
  assert.deepEqual(rr.stdout, raw);
});

test('env and cwd: values with quotes and $ arrive as written; HOME is the admin user\'s', { timeout: 120_000 }, async () => {
  const r = await admin.run({
    argv: ['sh', '-c', 'printf "%s|%s|%s|%s" "$GREETING" "$EMPTY" "$(pwd)" "$HOME"'],
    env: { GREETING: "it's $HOME `id`\nbye", EMPTY: '' },
    cwd: '/tmp',
  });
  assert.equal(r.stdout.toString(), "it's $HOME `id`\nbye||/tmp|/home/admin");
  assert.equal((await admin.run({ argv: ['id', '-un'] })).stdout.toString(), 'admin\n');
  assert.notEqual((await admin.run({ argv: ['true'], cwd: '/no/such/dir' })).exitCode, 0);
});

test('stdin: 300 KB through cat and wc -c, ended with EOF', { timeout: 120_000 }, async () => {
  const data = randomBytes(150_000).toString('hex');
  const cat = await admin.run({ argv: ['cat'], input: data });
  assert.equal(cat.stdout.toString(), data);
  const wc = await admin.run({ argv: ['wc', '-c'], input: data });
  assert.equal(wc.stdout.toString().trim(), String(data.length));
});

test('tty: a /dev/pts terminal of the requested size, resized on request', { timeout: 120_000 }, async () => {
  const p = await admin.exec({ argv: ['sh', '-c', 'tty; stty size; read x; stty size'], tty: { rows: 33, cols: 101 }, stdin: true });
  assert.equal(p.stderr, null, 'a terminal has one output stream');
  const first = await readUntil(p.stdout, /\b33 101\r?\n/);
  assert.match(first, /^\/dev\/pts\/\d+\r?\n/);
  await p.resize(40, 120);
  p.stdin!.write('\n');
  const rest = await readUntil(p.stdout, /\b40 120\r?\n/);
  assert.match(rest, /40 120/);
  assert.deepEqual(await p.exited, { exitCode: 0, signal: null });
});

test('signals: TERM reaches the program after stdin has ended; the exit says so', { timeout: 120_000 }, async () => {
  const p: SshExec = await admin.exec({ argv: ['sleep', '600'] });
  p.stdout.resume();
  p.stderr?.resume();
  // Without stdin the channel's EOF was sent at once: the signal must still go out.
  await new Promise((r) => setTimeout(r, 500));
  await p.signal('TERM');
  assert.deepEqual(await p.exited, { exitCode: 143, signal: 'SIGTERM' });
});

test('a wrong password fails in one line', { timeout: 120_000 }, async () => {
  const err = await SshConnection.connect(target({ credentials: { username: 'admin', password: 'wrong' } })).then(
    () => assert.fail('logged in with a wrong password'),
    (e: unknown) => e as SshError,
  );
  assert.ok(err instanceof SshError);
  assert.equal(err.reason, 'auth');
  assert.match(err.message, new RegExp(`^ssh to 127\\.0\\.0\\.1:${port} as admin: authentication failed \\(tried password(, keyboard-interactive)?; the server offers [a-z, -]+\\)$`));
});

test('a host key other than the pinned one is refused, naming both fingerprints', { timeout: 120_000 }, async () => {
  // A pin from "another VM" in this VM's file: as if the guest's key changed since first use.
  const pinFile = join(dir!, 'other-pin.json');
  const other = 'SHA256:' + randomBytes(32).toString('base64').replace(/=+$/, '');
  await writeFile(pinFile, JSON.stringify({ fingerprint: other, keyType: 'ssh-ed25519', address: 'elsewhere', pinnedAt: '2026-01-01T00:00:00Z' }));
  const err = await SshConnection.connect(target({ hostKeyFile: pinFile })).then(
    () => assert.fail('connected despite a different pinned key'),
    (e: unknown) => e as SshError,
  );
  assert.ok(err instanceof SshError);
  assert.equal(err.reason, 'host-key-changed');
  assert.ok(err.message.includes(other) && err.message.includes(admin.hostKey.fingerprint), err.message);
  assert.ok(!err.message.includes('\n'));
  // The real pin still lets a new connection in.
  const again = await SshConnection.connect(target());
  assert.equal(again.hostKey.newlyPinned, false);
  again.close();
});

test('benchmark hook: true over a reused connection vs a new connection each time', { timeout: 120_000 }, async (t) => {
  const timings = await timeTrueOverSsh(target(), 3);
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  assert.equal(timings.reusedMs.length, 3);
  assert.equal(timings.newConnectionMs.length, 3);
  t.diagnostic(`true over SSH (TCG guest): reused connection median ${median(timings.reusedMs).toFixed(0)} ms, ` +
    `new connection median ${median(timings.newConnectionMs).toFixed(0)} ms`);
});

test('uploads over SFTP and over `cat >` (told not to use SFTP), checked by SHA-256 on the guest', { timeout: 120_000 }, async () => {
  const local = join(dir!, 'payload.bin');
  const data = randomBytes(300_000);
  await writeFile(local, data);
  for (const via of ['sftp', 'cat'] as const) {
    const remote = `/tmp/payload-${via}`;
    assert.equal(await uploadFile(admin, local, remote, { via, mode: 0o640 }), via);
    const back = await admin.run({ argv: ['cat', remote] });
    assert.ok(back.stdout.equals(data), `${via}: the file on the guest differs`);
    assert.equal((await admin.run({ argv: ['stat', '-c', '%a', remote] })).stdout.toString().trim(), '640');
  }
});

test('installs the real agent over SSH (setsid), which then answers on virtio-serial', { timeout: 180_000 }, async (t) => {
  const bundlePath = await ensureAgentBundle();
  // As admin the install is refused: no root and no sudo in this guest.
  await assert.rejects(installAgentOverSsh(admin, { bundlePath }), /as admin: cannot install the vmlet agent: the login \(uid 1000\) is not root/);
  const root = await SshConnection.connect(target({ credentials: { username: 'root', password: 'root' } }));
  try {
    const result = await installAgentOverSsh(root, { bundlePath, log: (m) => t.diagnostic(m) });
    assert.equal(result.facts.os, 'Linux');
    assert.equal(result.facts.arch, 'x86_64');
    assert.equal(result.upload, 'sftp');
    assert.equal(result.start, 'setsid');
    assert.ok(result.pid && result.pid > 1);
  } finally {
    root.close();
  }
  // The agent outlived the SSH session that started it, and speaks the protocol on the channel.
  const client = await vm!.connectAgent(60_000);
  try {
    t.diagnostic(`agent hello: ${JSON.stringify(client.hello)}`);
    const r = await client.run({ argv: ['id', '-u'] });
    assert.equal(r.stdout, '0\n');
  } finally {
    client.close();
  }
});
