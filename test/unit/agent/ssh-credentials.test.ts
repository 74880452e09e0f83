// SSH credentials from configuration and from Kubernetes Secrets (src/agent/ssh/credentials.ts).
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import ssh2 from 'ssh2';
import { authMethods, credentialsFromSecret, loadSshCredentials } from '../../../src/agent/ssh/credentials.ts';
import { ed25519Key } from '../helpers/ssh-key.ts';

const b64 = (s: string): string => Buffer.from(s).toString('base64');
const meta = { name: 'mac-login', namespace: 'ci' };
const key = ed25519Key();

test('kubernetes.io/basic-auth: username and password, base64-decoded from data', () => {
  const creds = credentialsFromSecret({ type: 'kubernetes.io/basic-auth', metadata: meta, data: { username: b64('admin'), password: b64("p@ss w'rd é") } });
  assert.deepEqual(creds, { username: 'admin', password: "p@ss w'rd é" });
  assert.deepEqual(authMethods(creds), ['password', 'keyboard-interactive']);
  // stringData (as written, before the API server folds it into data) and a default user name.
  assert.deepEqual(credentialsFromSecret({ type: 'kubernetes.io/basic-auth', stringData: { password: 'x' } }, 'admin'), { username: 'admin', password: 'x' });
});

test('kubernetes.io/ssh-auth: ssh-privatekey, optional username and passphrase keys', () => {
  const creds = credentialsFromSecret({ type: 'kubernetes.io/ssh-auth', metadata: meta, data: { 'ssh-privatekey': b64(key.private), username: b64('runner') } });
  assert.equal(creds.username, 'runner');
  assert.equal(creds.privateKey?.toString(), key.private);
  assert.deepEqual(authMethods(creds), ['publickey']);
  assert.equal(credentialsFromSecret({ type: 'kubernetes.io/ssh-auth', data: { 'ssh-privatekey': b64(key.private) } }, 'admin').username, 'admin');
});

test('secrets that cannot log in fail in one line naming the secret', () => {
  const cases: [Parameters<typeof credentialsFromSecret>[0], RegExp][] = [
    [{ type: 'Opaque', metadata: meta, data: {} }, /^secret ci\/mac-login: type Opaque is not an SSH credential; use kubernetes.io\/basic-auth or kubernetes.io\/ssh-auth$/],
    [{ type: 'kubernetes.io/basic-auth', metadata: meta, data: { username: b64('admin') } }, /^secret ci\/mac-login: type kubernetes.io\/basic-auth but no password$/],
    [{ type: 'kubernetes.io/basic-auth', metadata: meta, data: { password: b64('x') } }, /but no username$/],
    [{ type: 'kubernetes.io/basic-auth', metadata: meta, data: { username: '!!not base64!!', password: b64('x') } }, /data\.username is not valid base64$/],
    [{ type: 'kubernetes.io/ssh-auth', metadata: meta, data: { username: b64('a') } }, /but no ssh-privatekey$/],
    [{ type: 'kubernetes.io/ssh-auth', metadata: meta, data: { 'ssh-privatekey': b64(key.private) } }, /names no user; add a "username" key or configure one$/],
    [{ type: 'kubernetes.io/ssh-auth', metadata: meta, data: { username: b64('a'), 'ssh-privatekey': b64('hello') } }, /ssh-privatekey: not a usable private key/],
    [{ type: 'kubernetes.io/ssh-auth', metadata: meta, data: { username: b64('a'), 'ssh-privatekey': b64(key.public) } }, /ssh-privatekey: holds a public key, not a private key$/],
  ];
  for (const [secret, want] of cases) {
    assert.throws(() => credentialsFromSecret(secret), (err: Error) => {
      assert.match(err.message, want);
      assert.ok(!err.message.includes('\n'));
      return true;
    });
  }
});

test('configuration: a key file is read and checked; a missing one is named', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlet-ssh-creds-'));
  try {
    await writeFile(join(dir, 'id'), key.private);
    const creds = await loadSshCredentials({ username: 'admin', privateKeyFile: join(dir, 'id'), password: 'admin' });
    assert.deepEqual(authMethods(creds), ['publickey', 'password', 'keyboard-interactive']);
    await assert.rejects(loadSshCredentials({ username: 'admin', privateKeyFile: join(dir, 'nope') }), new RegExp(`^Error: ssh private key ${dir}/nope: no such file$`));
    await assert.rejects(loadSshCredentials({ username: 'admin' }), /ssh settings: neither a password nor a private key/);
    const encrypted = ssh2.utils.generateKeyPairSync('ed25519', { passphrase: 'secret', cipher: 'aes256-ctr', rounds: 16 });
    await writeFile(join(dir, 'enc'), encrypted.private);
    await assert.rejects(loadSshCredentials({ username: 'admin', privateKeyFile: join(dir, 'enc') }), /the key is encrypted and no passphrase was given/);
    const ok = await loadSshCredentials({ username: 'admin', privateKeyFile: join(dir, 'enc'), passphrase: 'secret' });
    assert.ok(ok.privateKey);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
