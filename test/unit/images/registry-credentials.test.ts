// Where registry logins come from: Kubernetes pull secrets (kubelet's matching), then docker's
// config.json with its credential helpers (run for real: tiny docker-credential-* scripts on a private PATH).
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { CredentialStore, type PullSecret } from '../../../src/images/registry/credentials.ts';
import { RegistryError } from '../../../src/images/registry/errors.ts';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'vmlet-creds-'));
  dirs.push(d);
  return d;
}

const b64 = (s: string): string => Buffer.from(s).toString('base64');

function dockerConfigJsonSecret(auths: Record<string, unknown>, name = 'regcred'): PullSecret {
  return { metadata: { name, namespace: 'default' }, type: 'kubernetes.io/dockerconfigjson', data: { '.dockerconfigjson': b64(JSON.stringify({ auths })) } };
}

/** A docker config.json in a temp dir, and a PATH holding the given helper scripts. */
function dockerConfig(config: unknown, helpers: Record<string, string> = {}): { file: string; env: NodeJS.ProcessEnv } {
  const dir = tempDir();
  const file = path.join(dir, 'config.json');
  writeFileSync(file, JSON.stringify(config));
  const bin = path.join(dir, 'bin');
  writeFileSync(path.join(dir, '.keep'), '');
  for (const [name, script] of Object.entries(helpers)) {
    const f = path.join(dir, `docker-credential-${name}`);
    writeFileSync(f, `#!/bin/sh\n${script}\n`);
    chmodSync(f, 0o755);
  }
  return { file, env: { PATH: `${dir}:${bin}:/usr/bin:/bin` } };
}

test('a dockerconfigjson pull secret gives auth (base64 user:pass), username/password and identitytoken', async () => {
  const store = new CredentialStore({
    dockerConfigPath: null,
    pullSecrets: [
      dockerConfigJsonSecret({
        'registry.example.com': { auth: b64('alice:pa:ss') },
        'https://other.example.com/v2/': { username: 'bob', password: 'pw' },
        'token.example.com': { identitytoken: 'refresh-me' },
      }),
    ],
  });
  assert.deepEqual(await store.get('registry.example.com', 'a/b'), { username: 'alice', password: 'pa:ss' });
  assert.deepEqual(await store.get('other.example.com', 'x'), { username: 'bob', password: 'pw' });
  assert.deepEqual(await store.get('token.example.com', 'x'), { identityToken: 'refresh-me' });
  assert.equal(await store.get('unknown.example.com', 'x'), undefined);
});

test('pull secret keys match like the kubelet: globs, exact ports, path prefixes, most specific first, Docker Hub aliases', async () => {
  const store = new CredentialStore({
    dockerConfigPath: null,
    pullSecrets: [
      dockerConfigJsonSecret({
        '*.example.com': { username: 'glob', password: '1' },
        'registry.example.com:5000': { username: 'port', password: '2' },
        'registry.example.com:5000/team': { username: 'team', password: '3' },
        'https://index.docker.io/v1/': { username: 'hub', password: '4' },
      }),
    ],
  });
  assert.equal((await store.get('a.example.com', 'x'))?.username, 'glob');
  assert.equal(await store.get('a.b.example.com', 'x'), undefined, 'a glob covers one label');
  assert.equal(await store.get('a.example.com:5000', 'x'), undefined, 'a key without port matches no port');
  assert.equal((await store.get('registry.example.com:5000', 'other/x'))?.username, 'port');
  assert.equal((await store.get('registry.example.com:5000', 'team/x'))?.username, 'team');
  assert.equal((await store.get('registry.example.com:5000', 'teamx'))?.username, 'port', 'a path matches whole components');
  assert.equal((await store.get('registry-1.docker.io', 'library/ubuntu'))?.username, 'hub');
});

test('a legacy dockercfg secret is read; a secret of another type or with bad JSON is refused with its name', async () => {
  const legacy = new CredentialStore({
    dockerConfigPath: null,
    pullSecrets: [{ type: 'kubernetes.io/dockercfg', data: { '.dockercfg': b64(JSON.stringify({ 'old.example.com': { auth: b64('u:p') } })) } }],
  });
  assert.deepEqual(await legacy.get('old.example.com', 'x'), { username: 'u', password: 'p' });

  const refused = (secret: PullSecret, why: RegExp): void =>
    assert.throws(
      () => new CredentialStore({ dockerConfigPath: null, pullSecrets: [secret] }),
      (err: unknown) => err instanceof RegistryError && err.reason === 'InvalidCredentials' && why.test(err.message),
    );
  refused({ metadata: { name: 'opaque' }, type: 'Opaque', data: { '.dockerconfigjson': b64('{}') } }, /secret opaque has type "Opaque"/);
  refused({ metadata: { name: 'broken' }, type: 'kubernetes.io/dockerconfigjson', data: { '.dockerconfigjson': b64('{not json') } }, /secret broken: \.dockerconfigjson is not valid/);
  refused({ type: 'kubernetes.io/dockerconfigjson', data: { '.dockerconfigjson': b64(JSON.stringify({ auths: { h: { auth: b64('nocolon') } } })) } }, /not base64 of "username:password"/);
  refused({ type: 'kubernetes.io/dockerconfigjson', data: {} }, /no "\.dockerconfigjson" data/);
});

test('pull secrets win over the docker config; the docker config matches hosts with or without https:// and path', async () => {
  const { file } = dockerConfig({ auths: { 'https://registry.example.com/v1/': { auth: b64('fromfile:1') }, 'registry.example.com:5000': { auth: b64('five:2') } } });
  const store = new CredentialStore({ dockerConfigPath: file });
  assert.equal((await store.get('registry.example.com', 'x'))?.username, 'fromfile');
  assert.equal((await store.get('registry.example.com:5000', 'x'))?.username, 'five');
  const withSecret = store.withPullSecrets([dockerConfigJsonSecret({ 'registry.example.com': { auth: b64('fromsecret:1') } })]);
  assert.equal((await withSecret.get('registry.example.com', 'x'))?.username, 'fromsecret');
  assert.equal((await withSecret.get('registry.example.com:5000', 'x'))?.username, 'five', 'other hosts still come from the file');
  assert.equal(await new CredentialStore({ dockerConfigPath: path.join(tempDir(), 'absent.json') }).get('registry.example.com', 'x'), undefined);
});

test('credHelpers and credsStore run docker-credential-<name> get with the server URL on stdin', async () => {
  // The helper answers with what it read on stdin, so the test sees the server URL docker would pass.
  const echo = 'read url; printf \'{"ServerURL":"%s","Username":"user-for-%s","Secret":"s3cret"}\' "$url" "$url"';
  const { file, env } = dockerConfig(
    { credsStore: 'store', credHelpers: { 'registry.example.com:5000': 'test' }, auths: { 'fallback.example.com': { auth: b64('file:pw') } } },
    { test: echo, store: 'read url; case "$url" in *docker.io*) echo \'{"Username":"<token>","Secret":"idtok"}\';; *) echo "credentials not found in native keychain"; exit 1;; esac' },
  );
  const store = new CredentialStore({ dockerConfigPath: file, helperEnv: env });
  assert.deepEqual(await store.get('registry.example.com:5000', 'x'), { username: 'user-for-registry.example.com:5000', password: 's3cret' });
  assert.deepEqual(await store.get('registry-1.docker.io', 'library/ubuntu'), { identityToken: 'idtok' }, 'Hub is asked as https://index.docker.io/v1/; "<token>" means an identity token');
  assert.deepEqual(await store.get('fallback.example.com', 'x'), { username: 'file', password: 'pw' }, 'a credsStore without the login falls back to auths');
});

test('a missing, failing or hanging credential helper is a CredentialHelperFailed error that names it', async () => {
  const { file, env } = dockerConfig(
    { credHelpers: { 'missing.example.com': 'nope', 'failing.example.com': 'fail', 'hanging.example.com': 'hang', 'garbage.example.com': 'garbage' } },
    { fail: 'echo "keychain locked" >&2; exit 3', hang: 'sleep 30', garbage: 'echo not-json' },
  );
  const store = new CredentialStore({ dockerConfigPath: file, helperEnv: env, helperTimeoutMs: 300 });
  const failsWith = async (host: string, why: RegExp): Promise<void> => {
    await assert.rejects(store.get(host, 'x'), (err: unknown) => err instanceof RegistryError && err.reason === 'CredentialHelperFailed' && why.test(err.message));
  };
  await failsWith('missing.example.com', /docker-credential-nope for missing\.example\.com: not found on PATH/);
  await failsWith('failing.example.com', /docker-credential-fail .*exited with 3: keychain locked/);
  await failsWith('hanging.example.com', /docker-credential-hang .*no answer within 300 ms/);
  await failsWith('garbage.example.com', /other than JSON/);
});
