// Authentication: WWW-Authenticate parsing, scope merging, and the Bearer token dance against a fake
// registry and a fake token server (unit-level fakes; the real registry in token mode is in
// test/e2e/registry-token.test.ts).
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { after, test } from 'node:test';
import { mergeScopes, parseChallenges } from '../../../src/images/registry/auth.ts';
import { RegistryClient } from '../../../src/images/registry/client.ts';
import type { Credentials } from '../../../src/images/registry/credentials.ts';
import { RegistryError } from '../../../src/images/registry/errors.ts';
import { listenLocal } from '../helpers/local-http.ts';

const closers: (() => Promise<void>)[] = [];
after(async () => {
  await Promise.all(closers.map((c) => c()));
});

async function serve(handler: (req: IncomingMessage, res: ServerResponse, body: string) => void): Promise<{ host: string; requests: { req: IncomingMessage; body: string }[] }> {
  const requests: { req: IncomingMessage; body: string }[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      requests.push({ req, body });
      handler(req, res, body);
    });
  });
  const { port, close } = await listenLocal(server);
  closers.push(close);
  return { host: `127.0.0.1:${port}`, requests };
}

test('WWW-Authenticate: several challenges, quoted values with commas and escapes, bare values', () => {
  assert.deepEqual(
    parseChallenges('Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push"'),
    [{ scheme: 'bearer', params: { realm: 'https://auth.example.com/token', service: 'registry.example.com', scope: 'repository:a/b:pull,push' } }],
  );
  assert.deepEqual(parseChallenges(['Basic realm="x \\"y\\""', 'Bearer realm=https://t/token, error=invalid_token']), [
    { scheme: 'basic', params: { realm: 'x "y"' } },
    { scheme: 'bearer', params: { realm: 'https://t/token', error: 'invalid_token' } },
  ]);
  assert.deepEqual(parseChallenges('Basic realm="a", Bearer realm="b"').map((c) => c.scheme), ['basic', 'bearer']);
  assert.deepEqual(parseChallenges(undefined), []);
});

test('scopes on one repository merge into one action list; a mount source keeps its own pull scope', () => {
  assert.deepEqual(mergeScopes(['repository:app:push', 'repository:app:pull', 'repository:base:pull', 'repository:app:pull']), [
    'repository:app:pull,push',
    'repository:base:pull',
  ]);
});

/**
 * A fake registry that wants Bearer tokens from a fake token server. Tokens are "tok-<n>:<scopes>";
 * the registry accepts a token that covers the scope it needs and that has not been revoked.
 */
async function bearerRegistry(opts: { users?: Record<string, string>; expiresIn?: number } = {}) {
  let issued = 0;
  const revoked = new Set<string>();
  const tokenServer = await serve((req, res, body) => {
    const url = new URL(req.url ?? '/', 'http://x');
    let scopes = url.searchParams.getAll('scope');
    let user: string | undefined;
    if (req.method === 'POST') {
      const form = new URLSearchParams(body);
      if (form.get('grant_type') !== 'refresh_token' || form.get('refresh_token') !== 'refresh-123') {
        res.writeHead(401);
        return res.end('{}');
      }
      scopes = (form.get('scope') ?? '').split(' ');
      user = 'oauth';
    } else if (req.headers.authorization) {
      const [name, password] = Buffer.from(req.headers.authorization.replace(/^Basic /, ''), 'base64').toString().split(':');
      if (opts.users?.[name!] !== password) {
        res.writeHead(401, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'bad password' }] }));
      }
      user = name;
    }
    issued += 1;
    // Anonymous users may pull, never push.
    const granted = user ? scopes : scopes.map((s) => s.replace(/:[^:]*$/, ':pull'));
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(issued % 2 ? { token: `tok-${issued}:${granted.join(' ')}`, expires_in: opts.expiresIn ?? 300 } : { access_token: `tok-${issued}:${granted.join(' ')}` }));
  });
  const registry = await serve((req, res) => {
    const need = req.method === 'GET' || req.method === 'HEAD' ? 'repository:app:pull' : 'repository:app:pull,push';
    const token = req.headers.authorization?.replace(/^Bearer /, '') ?? '';
    const ok = token && !revoked.has(token) && token.split(':').length > 1 && token.slice(token.indexOf(':') + 1).split(' ').some((s) => s === need || (need.endsWith(':pull') && s.startsWith('repository:app:')));
    if (!ok) {
      res.writeHead(401, {
        'www-authenticate': `Bearer realm="http://${tokenServer.host}/token",service="fake-registry",scope="${need}"`,
        'content-type': 'application/json',
      });
      return res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
    }
    res.writeHead(200, { 'content-length': 3, 'docker-content-digest': 'x' });
    res.end(req.method === 'HEAD' ? undefined : 'abc');
  });
  return { tokenServer, registry, revoke: (t: string) => revoked.add(t), issued: () => issued };
}

function clientFor(host: string, creds?: Credentials): RegistryClient {
  const c = new RegistryClient({
    plainHttpRegistries: [host],
    credentials: creds ? { get: async () => creds } : undefined,
    retry: { attempts: 2, initialDelayMs: 5 },
  });
  closers.push(() => c.close());
  return c;
}

const BLOB = { digest: `sha256:${'b'.repeat(64)}`, size: 3 };

test('Bearer (fake token server): anonymous pull gets a token for the scope, and it is reused', async () => {
  const { registry, tokenServer, issued } = await bearerRegistry();
  const c = clientFor(registry.host);
  assert.deepEqual(await c.headBlob(`${registry.host}/app:1`, BLOB.digest), { digest: BLOB.digest, size: 3 });
  assert.deepEqual(await c.headBlob(`${registry.host}/app:1`, BLOB.digest), { digest: BLOB.digest, size: 3 });
  assert.equal(issued(), 1, 'one token for two requests with the same scope');
  const tokenUrl = new URL(tokenServer.requests[0]!.req.url ?? '', 'http://x');
  assert.equal(tokenUrl.searchParams.get('service'), 'fake-registry');
  assert.deepEqual(tokenUrl.searchParams.getAll('scope'), ['repository:app:pull']);
  assert.equal(tokenServer.requests[0]!.req.headers.authorization, undefined);
  assert.equal(registry.requests.length, 3, 'one 401 to learn the challenge, then two authorized requests');
});

test('Bearer (fake token server): the token request carries Basic credentials; a push scope is its own token', async () => {
  const { registry, tokenServer } = await bearerRegistry({ users: { alice: 'pw' } });
  const c = clientFor(registry.host, { username: 'alice', password: 'pw' });
  await c.headBlob(`${registry.host}/app:1`, BLOB.digest);
  const put = await c.putManifest(`${registry.host}/app:1`, Buffer.from('{}'), 'application/vnd.oci.image.manifest.v1+json').catch((e: unknown) => e);
  // The fake answers 200 where a registry answers 201: what matters here is that the PUT got through auth.
  assert.ok(put instanceof RegistryError && put.status === 200, String(put));
  assert.equal(tokenServer.requests[0]!.req.headers.authorization, `Basic ${Buffer.from('alice:pw').toString('base64')}`);
  const scopes = tokenServer.requests.map((r) => new URL(r.req.url ?? '', 'http://x').searchParams.getAll('scope').join(' '));
  assert.deepEqual(scopes, ['repository:app:pull', 'repository:app:pull,push']);
});

test('Bearer (fake token server): a token refused later is replaced once; refused again is Unauthorized', async () => {
  const { registry, revoke, issued } = await bearerRegistry();
  const c = clientFor(registry.host);
  await c.headBlob(`${registry.host}/app:1`, BLOB.digest);
  revoke(`tok-1:repository:app:pull`);
  await c.headBlob(`${registry.host}/app:1`, BLOB.digest);
  assert.equal(issued(), 2, 'a fresh token after the 401');

  // Anonymous push: the token server grants pull only, so the retry with a fresh token fails too.
  await assert.rejects(c.putManifest(`${registry.host}/app:1`, Buffer.from('{}'), 'application/vnd.oci.image.manifest.v1+json'), (err: unknown) => {
    assert.ok(err instanceof RegistryError);
    assert.equal(err.reason, 'Unauthorized');
    assert.match(err.message, new RegExp(`^push ${registry.host}/app:1 manifest sha256:[a-f0-9]{64}: registry answered 401 Unauthorized \\(UNAUTHORIZED: authentication required\\); no credentials for ${registry.host}$`));
    return true;
  });
});

test('Bearer (fake token server): wrong credentials are Unauthorized with the token server named', async () => {
  const { registry, tokenServer } = await bearerRegistry({ users: { alice: 'pw' } });
  const c = clientFor(registry.host, { username: 'alice', password: 'wrong' });
  await assert.rejects(c.headBlob(`${registry.host}/app:1`, BLOB.digest), (err: unknown) =>
    err instanceof RegistryError && err.reason === 'Unauthorized' && err.message.includes(`token server http://${tokenServer.host} answered 401 Unauthorized (UNAUTHORIZED: bad password)`),
  );
});

test('Bearer (fake token server): an identity token is exchanged with a refresh_token grant (POST)', async () => {
  const { registry, tokenServer } = await bearerRegistry();
  const c = clientFor(registry.host, { identityToken: 'refresh-123' });
  await c.headBlob(`${registry.host}/app:1`, BLOB.digest);
  const post = tokenServer.requests[0]!;
  assert.equal(post.req.method, 'POST');
  const form = new URLSearchParams(post.body);
  assert.equal(form.get('grant_type'), 'refresh_token');
  assert.equal(form.get('service'), 'fake-registry');
  assert.equal(form.get('scope'), 'repository:app:pull');
});

test('Bearer (fake token server): an expired token is fetched again before it is sent', async () => {
  // expires_in 1 s minus the early-renewal margin: expired by the second request.
  const { registry, issued } = await bearerRegistry({ expiresIn: 1 });
  const c = clientFor(registry.host);
  await c.headBlob(`${registry.host}/app:1`, BLOB.digest);
  await new Promise((r) => setTimeout(r, 1000));
  await c.headBlob(`${registry.host}/app:1`, BLOB.digest);
  assert.equal(issued(), 2);
  assert.equal(registry.requests.length, 3, 'no 401 for the second request: the token was renewed first');
});
