// Manifests against a fake registry: the Accept list, the size limit, digests verified over the exact
// bytes, media types (generic Content-Type, schema 1 refused), platform selection from an index, and
// the plain-HTTP fallback for loopback registries.
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { after, test } from 'node:test';
import { RegistryClient } from '../../../src/images/registry/client.ts';
import { digestOf } from '../../../src/images/registry/digest.ts';
import { RegistryError } from '../../../src/images/registry/errors.ts';
import { MediaType } from '../../../src/images/registry/media-types.ts';
import { selectManifest } from '../../../src/images/registry/platform.ts';
import type { ImageIndex } from '../../../src/images/registry/types.ts';
import { listenLocal } from '../helpers/local-http.ts';

const closers: (() => Promise<void>)[] = [];
after(async () => {
  await Promise.all(closers.map((c) => c()));
});

type Route = (req: IncomingMessage, res: ServerResponse) => void;

async function serve(routes: Record<string, Route>): Promise<{ host: string; requests: IncomingMessage[] }> {
  const requests: IncomingMessage[] = [];
  const server = createServer((req, res) => {
    requests.push(req);
    const route = routes[req.url ?? ''];
    if (route) return route(req, res);
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ errors: [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown' }] }));
  });
  const { port, close } = await listenLocal(server);
  closers.push(close);
  return { host: `127.0.0.1:${port}`, requests };
}

function client(host: string | undefined, extra: ConstructorParameters<typeof RegistryClient>[0] = {}): RegistryClient {
  const c = new RegistryClient({ plainHttpRegistries: host ? [host] : [], retry: { attempts: 2, initialDelayMs: 5 }, ...extra });
  closers.push(() => c.close());
  return c;
}

const send = (bytes: Buffer | string, headers: Record<string, string | number> = {}): Route => (_req, res) => {
  res.writeHead(200, { 'content-length': Buffer.byteLength(bytes), ...headers });
  res.end(bytes);
};

const DESC = (n: number) => ({ mediaType: 'application/vnd.cirruslabs.tart.disk.v2', digest: `sha256:${String(n).repeat(64).slice(0, 64)}`, size: n });
const manifestBytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config: { ...DESC(1), mediaType: 'application/vnd.cirruslabs.tart.config.v1' }, layers: [DESC(2)] }));
const manifestDigest = digestOf(manifestBytes);

function index(entries: { platform?: { os: string; architecture: string; variant?: string }; digest?: string; size?: number }[]): ImageIndex {
  return {
    schemaVersion: 2,
    mediaType: MediaType.OciIndex,
    manifests: entries.map((e, i) => ({ mediaType: MediaType.OciManifest, digest: e.digest ?? `sha256:${String(i + 3).repeat(64)}`, size: e.size ?? 1, platform: e.platform })),
  };
}

test('a manifest is requested with the OCI and Docker Accept list and returned as the bytes served, digest computed', async () => {
  const { host, requests } = await serve({ '/v2/vm/manifests/1': send(manifestBytes, { 'content-type': MediaType.OciManifest, 'docker-content-digest': manifestDigest }) });
  const m = await client(host).getManifest(`${host}/vm:1`);
  assert.ok(m.bytes.equals(manifestBytes));
  assert.deepEqual([m.mediaType, m.digest, m.size], [MediaType.OciManifest, manifestDigest, manifestBytes.length]);
  assert.equal(
    requests[0]!.headers.accept,
    'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json',
  );
});

test('a manifest fetched by digest whose bytes hash differently is DigestMismatch; a tag whose served digest disagrees too', async () => {
  const tampered = Buffer.from(manifestBytes.toString().replace('"size":2', '"size":3'));
  const { host } = await serve({
    [`/v2/vm/manifests/${manifestDigest}`]: send(tampered, { 'content-type': MediaType.OciManifest }),
    '/v2/vm/manifests/lying': send(manifestBytes, { 'content-type': MediaType.OciManifest, 'docker-content-digest': digestOf(tampered) }),
  });
  const c = client(host);
  await assert.rejects(c.getManifest(`${host}/vm@${manifestDigest}`), (err: unknown) =>
    err instanceof RegistryError && err.reason === 'DigestMismatch' && err.message === `pull ${host}/vm@${manifestDigest}: manifest content has digest ${digestOf(tampered)}, not ${manifestDigest}`,
  );
  await assert.rejects(c.getManifest(`${host}/vm:lying`), (err: unknown) => err instanceof RegistryError && err.reason === 'DigestMismatch');
});

test('a manifest over the size limit is refused, whether its Content-Length says so or not', async () => {
  const big = Buffer.alloc(5000, ' ');
  const { host } = await serve({
    '/v2/vm/manifests/declared': send(big, { 'content-type': MediaType.OciManifest }),
    '/v2/vm/manifests/streamed': (_req, res) => {
      res.writeHead(200, { 'content-type': MediaType.OciManifest });
      res.write(big.subarray(0, 2500));
      res.end(big.subarray(2500));
    },
  });
  const c = client(host, { maxManifestBytes: 4096 });
  for (const tag of ['declared', 'streamed']) {
    await assert.rejects(c.getManifest(`${host}/vm:${tag}`), (err: unknown) =>
      err instanceof RegistryError && err.reason === 'ManifestTooLarge' && /over the 4096-byte limit/.test(err.message),
    );
  }
});

test('media type: a generic Content-Type falls back to the manifest\'s own mediaType; schema 1 is UnsupportedMediaType', async () => {
  const schema1 = JSON.stringify({ schemaVersion: 1, name: 'vm', tag: 'old', fsLayers: [] });
  const { host } = await serve({
    '/v2/vm/manifests/generic': send(manifestBytes, { 'content-type': 'application/json' }),
    '/v2/vm/manifests/old': send(schema1, { 'content-type': MediaType.DockerSchema1Signed }),
    '/v2/vm/manifests/missing-type': send(JSON.stringify({ schemaVersion: 2, manifests: [] }), { 'content-type': 'text/plain' }),
  });
  const c = client(host);
  assert.equal((await c.getManifest(`${host}/vm:generic`)).mediaType, MediaType.OciManifest);
  assert.equal((await c.getManifest(`${host}/vm:missing-type`)).mediaType, MediaType.OciIndex, 'an index is recognized by its shape');
  await assert.rejects(c.getManifest(`${host}/vm:old`), (err: unknown) => err instanceof RegistryError && err.reason === 'UnsupportedMediaType');
  await assert.rejects(c.getManifest(`${host}/vm:nope`), (err: unknown) =>
    err instanceof RegistryError && err.reason === 'ManifestUnknown' && err.message === `pull ${host}/vm:nope: registry answered 404 Not Found (MANIFEST_UNKNOWN: manifest unknown)`,
  );
});

test('platform selection: os/architecture with normalized names, an exact variant first, arm64 meaning v8', () => {
  const idx = index([
    { platform: { os: 'linux', architecture: 'arm', variant: 'v6' } },
    { platform: { os: 'linux', architecture: 'arm', variant: 'v7' } },
    { platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    { platform: { os: 'linux', architecture: 'amd64' } },
    { platform: { os: 'darwin', architecture: 'arm64' } },
    { platform: { os: 'unknown', architecture: 'unknown' } },
  ]);
  const pick = (os: string, architecture: string, variant?: string): number =>
    idx.manifests.indexOf(selectManifest(idx, { os, architecture, variant })!);
  assert.equal(pick('linux', 'x86_64'), 3);
  assert.equal(pick('linux', 'aarch64'), 2);
  assert.equal(pick('linux', 'arm64', 'v8'), 2);
  assert.equal(pick('linux', 'arm'), 1, 'arm means v7 unless told');
  assert.equal(pick('linux', 'arm', 'v6'), 0);
  assert.equal(pick('macos', 'arm64'), 4);
  assert.equal(pick('windows', 'amd64'), -1);
});

test('resolveImage follows an index to the platform\'s manifest, and names the platforms it has when none fits', async () => {
  const idx = Buffer.from(JSON.stringify(index([
    { platform: { os: 'linux', architecture: 'amd64' }, digest: `sha256:${'e'.repeat(64)}` },
    { platform: { os: 'darwin', architecture: 'arm64' }, digest: manifestDigest, size: manifestBytes.length },
  ])));
  const { host } = await serve({
    '/v2/vm/manifests/multi': send(idx, { 'content-type': MediaType.OciIndex }),
    [`/v2/vm/manifests/${manifestDigest}`]: send(manifestBytes, { 'content-type': MediaType.OciManifest }),
  });
  const c = client(host);
  const r = await c.resolveImage(`${host}/vm:multi`, { os: 'darwin', architecture: 'arm64' });
  assert.equal(r.ref.toString(), `${host}/vm:multi@${manifestDigest}`);
  assert.equal(r.manifest.layers[0]!.mediaType, 'application/vnd.cirruslabs.tart.disk.v2');
  assert.equal(r.index?.raw.digest, digestOf(idx));
  assert.deepEqual(r.platform, { os: 'darwin', architecture: 'arm64' });
  await assert.rejects(c.resolveImage(`${host}/vm:multi`, { os: 'linux', architecture: 'riscv64' }), (err: unknown) =>
    err instanceof RegistryError && err.reason === 'PlatformNotFound' && err.message.endsWith(`no manifest for linux/riscv64 in index ${digestOf(idx)} (it has: linux/amd64, darwin/arm64)`),
  );
});

test('a loopback registry in plain HTTP is found without configuration; with the fallback off the TLS error says why', async () => {
  const { host } = await serve({ '/v2/': (_req, res) => res.end('{}'), '/v2/vm/manifests/1': send(manifestBytes, { 'content-type': MediaType.OciManifest }) });
  assert.equal((await client(undefined).getManifest(`${host}/vm:1`)).digest, manifestDigest);
  await assert.rejects(client(undefined, { allowLoopbackPlainHttp: false }).getManifest(`${host}/vm:1`), (err: unknown) =>
    err instanceof RegistryError && err.reason === 'ConnectionFailed' && /TLS handshake failed \(ERR_SSL_WRONG_VERSION_NUMBER\); is it a plain-HTTP registry\?/.test(err.message),
  );
});
