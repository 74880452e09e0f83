// The Bearer token flow against the real registry: Debian's docker-registry started here in `auth: token`
// mode (the harness's startRegistry only does htpasswd), trusting a token server this test runs on
// 127.0.0.1. The token server checks Basic credentials and signs ES256 JWTs carrying its signing
// certificate (x5c), which the registry verifies against its rootcertbundle, scope by scope.
import assert from 'node:assert/strict';
import { createPrivateKey, randomBytes, sign, X509Certificate } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { stringify } from 'yaml';
import { request } from 'undici';
import { bufferSource, MediaType, RegistryClient, RegistryError, type Credentials } from '../../src/images/registry/index.ts';
import { CertificateAuthority } from '../harness/pki.ts';
import { createFixtureDir, freePort, removeFixtureDir, spawnTracked, stopProcess, waitFor, type TrackedProcess } from '../harness/processes.ts';
import { ensureTestDependencies } from '../harness/setup.ts';

const SERVICE = 'vmlet-test-registry';
const ISSUER = 'vmlet-test-token-issuer';
// Who may do what: pusher everything, reader pull only; anonymous may pull public/* only.
const USERS: Record<string, { password: string; actions: string[] }> = {
  pusher: { password: 'push-pass', actions: ['pull', 'push'] },
  reader: { password: 'read-pass', actions: ['pull'] },
};

interface TokenRequest {
  user: string;
  scopes: string[];
}

let dir: string | undefined;
let registryProcess: TrackedProcess | undefined;
let tokenServer: Server | undefined;
let registryHost = '';
const tokenRequests: TokenRequest[] = [];
const clients: RegistryClient[] = [];

/** A compact JWS (ES256) with the signer's certificate in x5c, as distribution's token auth expects. */
function jwt(claims: object, signer: { key: string; cert: string }): string {
  const b64url = (data: Buffer | string): string => Buffer.from(data).toString('base64url');
  const x5c = [new X509Certificate(signer.cert).raw.toString('base64')];
  const signingInput = `${b64url(JSON.stringify({ typ: 'JWT', alg: 'ES256', x5c }))}.${b64url(JSON.stringify(claims))}`;
  const signature = sign('sha256', Buffer.from(signingInput), { key: createPrivateKey(signer.key), dsaEncoding: 'ieee-p1363' });
  return `${signingInput}.${b64url(signature)}`;
}

async function startTokenServer(signer: { key: string; cert: string }): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://token');
    let user = 'anonymous';
    if (req.headers.authorization) {
      const [name = '', password] = Buffer.from(req.headers.authorization.replace(/^Basic /, ''), 'base64').toString().split(':');
      if (USERS[name]?.password !== password) {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'invalid username or password' }] }));
        return;
      }
      user = name;
    }
    const scopes = url.searchParams.getAll('scope');
    tokenRequests.push({ user, scopes });
    const access = scopes.flatMap((scope) => {
      const [type, name = '', actions = ''] = scope.split(':');
      const allowed = user === 'anonymous' ? (name.startsWith('public/') ? ['pull'] : []) : USERS[user]!.actions;
      const granted = actions.split(',').filter((a) => allowed.includes(a));
      return granted.length ? [{ type, name, actions: granted }] : [];
    });
    const now = Math.floor(Date.now() / 1000);
    const token = jwt({ iss: ISSUER, sub: user, aud: url.searchParams.get('service'), exp: now + 300, nbf: now - 10, iat: now, jti: randomBytes(8).toString('hex'), access }, signer);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token, expires_in: 300, issued_at: new Date().toISOString() }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('token server: no address');
  return { server, url: `http://127.0.0.1:${address.port}/token` };
}

before(async () => {
  const binaries = await ensureTestDependencies();
  dir = await createFixtureDir('vmlet-registry-token-');
  const signer = await CertificateAuthority.create('vmlet-test-token-signer');
  const bundle = join(dir, 'token-signer.crt');
  await writeFile(bundle, signer.cert);
  const token = await startTokenServer(signer);
  tokenServer = token.server;
  registryHost = `127.0.0.1:${await freePort()}`;
  const configFile = join(dir, 'config.yml');
  await writeFile(
    configFile,
    stringify({
      version: 0.1,
      log: { level: 'info', formatter: 'text' },
      storage: { filesystem: { rootdirectory: join(dir, 'data') } },
      http: { addr: registryHost, secret: randomBytes(16).toString('hex') },
      auth: { token: { realm: token.url, service: SERVICE, issuer: ISSUER, rootcertbundle: bundle } },
    }),
  );
  // REGISTRY_* variables would override the config file field by field.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_')));
  registryProcess = spawnTracked('docker-registry (token)', binaries.registry, ['serve', configFile], { logFile: join(dir, 'registry.log'), env });
  await waitFor(
    `token-auth registry on ${registryHost} to challenge with Bearer`,
    async () => {
      const res = await request(`http://${registryHost}/v2/`);
      await res.body.dump();
      return res.statusCode === 401 && String(res.headers['www-authenticate']).startsWith('Bearer ') ? true : undefined;
    },
    { timeoutMs: 30_000, process: registryProcess },
  );
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  if (registryProcess) await stopProcess(registryProcess);
  await new Promise<void>((resolve) => (tokenServer ? tokenServer.close(() => resolve()) : resolve()));
  if (dir) await removeFixtureDir(dir);
});

function client(creds?: Credentials): RegistryClient {
  const c = new RegistryClient({ plainHttpRegistries: [registryHost], credentials: creds && { get: async () => creds }, retry: { attempts: 2, initialDelayMs: 20 } });
  clients.push(c);
  return c;
}

const PUSHER = { username: 'pusher', password: USERS.pusher!.password };
const READER = { username: 'reader', password: USERS.reader!.password };

/** Pushes a one-layer image; returns its manifest digest. */
async function pushImage(c: RegistryClient, ref: string): Promise<string> {
  const config = await c.pushBlob(ref, bufferSource(Buffer.from('{"os":"linux","architecture":"amd64"}')));
  const layer = await c.pushBlob(ref, bufferSource(randomBytes(20_000)));
  const manifest = {
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    config: { mediaType: MediaType.OciConfig, digest: config.digest, size: config.size },
    layers: [{ mediaType: MediaType.OciLayerTarGzip, digest: layer.digest, size: layer.size }],
  };
  return (await c.putManifest(ref, Buffer.from(JSON.stringify(manifest)), MediaType.OciManifest)).digest;
}

test('the real registry in token mode: Basic credentials buy a Bearer token per scope, reused across requests', async () => {
  const before = tokenRequests.length;
  const c = client(PUSHER);
  const digest = await pushImage(c, `${registryHost}/team/app:1`);
  assert.equal((await c.getManifest(`${registryHost}/team/app:1`)).digest, digest);
  const asked = tokenRequests.slice(before);
  assert.ok(asked.every((r) => r.user === 'pusher'));
  // One token for everything the push did, one for the pull: not one per request.
  assert.deepEqual(asked.map((r) => r.scopes.join(' ')), ['repository:team/app:pull,push', 'repository:team/app:pull']);
});

test('a user granted pull only can pull but is refused a push: Unauthorized after one fresh-token retry', async () => {
  await pushImage(client(PUSHER), `${registryHost}/team/readonly:1`);
  const c = client(READER);
  assert.ok((await c.getManifest(`${registryHost}/team/readonly:1`)).digest.startsWith('sha256:'));
  const before = tokenRequests.length;
  await assert.rejects(c.pushBlob(`${registryHost}/team/readonly:1`, bufferSource(randomBytes(10))), (err: unknown) => {
    assert.ok(err instanceof RegistryError);
    assert.equal(err.reason, 'Unauthorized');
    assert.match(err.message, /^push .*team\/readonly:1 blob sha256:[a-f0-9]{64}: registry answered 401 Unauthorized \(UNAUTHORIZED: authentication required\); the credentials were refused or lack access$/);
    return true;
  });
  assert.equal(tokenRequests.length - before, 2, 'the token it had, then one fresh token, then give up');
});

test('a cross-repository mount asks one token for <to>:pull,push and <from>:pull, and mounts', async () => {
  const c = client(PUSHER);
  const source = bufferSource(randomBytes(30_000));
  await c.pushBlob(`${registryHost}/team/base:1`, source);
  const before = tokenRequests.length;
  assert.equal((await c.pushBlob(`${registryHost}/team/derived:1`, source, { mountFrom: ['team/base'] })).outcome, 'mounted');
  const scopes = tokenRequests.slice(before).map((r) => r.scopes.join(' '));
  assert.ok(scopes.includes('repository:team/base:pull repository:team/derived:pull,push'), scopes.join(' | '));
});

test('anonymous: a public repository is pulled with an anonymous token; a private one is Unauthorized', async () => {
  const digest = await pushImage(client(PUSHER), `${registryHost}/public/base:1`);
  const anonymous = client();
  assert.equal((await anonymous.getManifest(`${registryHost}/public/base:1`)).digest, digest);
  assert.equal(tokenRequests.at(-1)?.user, 'anonymous');
  await assert.rejects(anonymous.getManifest(`${registryHost}/team/app:1`), (err: unknown) =>
    err instanceof RegistryError && err.reason === 'Unauthorized' && err.message.endsWith(`no credentials for ${registryHost}`),
  );
});

test('wrong credentials are refused by the token server, named in the message', async () => {
  await assert.rejects(client({ username: 'pusher', password: 'wrong' }).getManifest(`${registryHost}/team/app:1`), (err: unknown) =>
    err instanceof RegistryError && err.reason === 'Unauthorized' && /token server http:\/\/127\.0\.0\.1:\d+ answered 401 Unauthorized \(UNAUTHORIZED: invalid username or password\)/.test(err.message),
  );
});
