// The registry client against the real registry (Debian's docker-registry, distribution 2.8): OCI
// images with Tart media types pushed and pulled back verified, monolithic and chunked uploads, blobs
// skipped and mounted, an index resolved per platform, tags, and logins over TLS with htpasswd from
// a pull secret and from a docker config with a credential helper.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  bufferSource,
  CredentialStore,
  MediaType,
  RegistryClient,
  RegistryError,
  type Descriptor,
  type ImageIndex,
  type ImageManifest,
  type RegistryClientOptions,
} from '../../src/images/registry/index.ts';
import { startRegistry, type Registry } from '../harness/registry.ts';
import { ensureTestDependencies } from '../harness/setup.ts';

const USER = { username: 'vmlet', password: 's3cret-pass' };
const TART_CONFIG = 'application/vnd.cirruslabs.tart.config.v1';
const TART_DISK = 'application/vnd.cirruslabs.tart.disk.v2';

let secure: Registry | undefined;
let plain: Registry | undefined;
const clients: RegistryClient[] = [];
const tempDirs: string[] = [];

before(async () => {
  const binaries = await ensureTestDependencies();
  const results = await Promise.allSettled([
    startRegistry({ tls: true, auth: USER, binaries }).then((r) => (secure = r)),
    startRegistry({ binaries }).then((r) => (plain = r)),
  ]);
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await Promise.all([secure?.stop(), plain?.stop()]);
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
});

function client(opts: RegistryClientOptions = {}): RegistryClient {
  const c = new RegistryClient({ retry: { attempts: 3, initialDelayMs: 50 }, ...opts });
  clients.push(c);
  return c;
}

async function collect(iterable: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of iterable) chunks.push(c);
  return Buffer.concat(chunks);
}

/** Pushes config + layers and an OCI manifest; returns the manifest, its bytes and the blobs. */
async function pushImage(c: RegistryClient, ref: string, layers: Buffer[], tags: string[] = []) {
  const config = Buffer.from(JSON.stringify({ os: 'darwin', arch: 'arm64', version: 1 }));
  const configDesc: Descriptor = { mediaType: TART_CONFIG, ...(await c.pushBlob(ref, bufferSource(config)).then(({ digest, size }) => ({ digest, size }))) };
  const layerDescs: Descriptor[] = [];
  for (const layer of layers) {
    const { digest, size } = await c.pushBlob(ref, bufferSource(layer));
    layerDescs.push({ mediaType: TART_DISK, digest, size, annotations: { 'org.cirruslabs.tart.uncompressed-size': String(layer.length) } });
  }
  const manifest: ImageManifest = { schemaVersion: 2, mediaType: MediaType.OciManifest, config: configDesc, layers: layerDescs };
  const bytes = Buffer.from(JSON.stringify(manifest));
  const pushed = await c.putManifest(ref, bytes, MediaType.OciManifest, tags);
  return { manifest, bytes, digest: pushed.digest, config };
}

test('an OCI image with Tart media types is pushed and pulled back byte for byte, digests verified', async () => {
  const r = plain!;
  const c = client();
  const layers = [randomBytes(300_000), randomBytes(70_000)];
  const ref = `${r.host}/tart/sequoia:1.0`;
  const pushed = await pushImage(c, ref, layers);

  const m = await c.getManifest(ref);
  assert.ok(m.bytes.equals(pushed.bytes), 'the manifest comes back as the exact bytes pushed');
  assert.equal(m.digest, pushed.digest);
  assert.equal(m.mediaType, MediaType.OciManifest);
  const byDigest = await c.getManifest(`${r.host}/tart/sequoia@${pushed.digest}`);
  assert.ok(byDigest.bytes.equals(pushed.bytes));

  const resolved = await c.resolveImage(ref, { os: 'darwin', architecture: 'arm64' });
  assert.equal(resolved.ref.digest, pushed.digest);
  assert.deepEqual(resolved.manifest.layers.map((l) => l.mediaType), [TART_DISK, TART_DISK]);
  for (const [i, layer] of resolved.manifest.layers.entries()) {
    assert.ok((await collect(c.downloadBlob(resolved.ref, layer))).equals(layers[i]!));
  }
  assert.ok((await c.readBlob(ref, resolved.manifest.config)).equals(pushed.config));
});

test('a blob larger than the chunk size goes up in PATCH chunks and reads back byte for byte', async () => {
  const r = plain!;
  const c = client();
  const blob = randomBytes(1024 * 1024 + 12_345);
  const progress: number[] = [];
  const result = await c.pushBlob(`${r.host}/chunked/vm:1`, bufferSource(blob), { chunkSize: 256 * 1024, onProgress: (b) => progress.push(b) });
  assert.equal(result.outcome, 'uploaded');
  assert.deepEqual(progress, [262144, 524288, 786432, 1048576, 1060921], 'one confirmed offset per chunk');
  assert.ok((await collect(c.downloadBlob(`${r.host}/chunked/vm:1`, result))).equals(blob));
  assert.deepEqual(await c.headBlob(`${r.host}/chunked/vm:1`, result.digest), { digest: result.digest, size: blob.length });
});

test('a blob the repository has is skipped; one in another repository is mounted; a failed mount falls back to upload', async () => {
  const r = plain!;
  const c = client();
  const source = bufferSource(randomBytes(50_000));
  assert.equal((await c.pushBlob(`${r.host}/mount/a:1`, source)).outcome, 'uploaded');
  assert.equal((await c.pushBlob(`${r.host}/mount/a:1`, source)).outcome, 'exists');
  assert.equal(await c.headBlob(`${r.host}/mount/b:1`, source.digest), undefined);
  assert.equal((await c.pushBlob(`${r.host}/mount/b:1`, source, { mountFrom: ['mount/a'] })).outcome, 'mounted');
  assert.deepEqual(await c.headBlob(`${r.host}/mount/b:1`, source.digest), { digest: source.digest, size: 50_000 });
  // The registry answers 202 to a mount from a repository without the blob: the upload goes on in that session.
  const fresh = bufferSource(randomBytes(1000));
  assert.equal((await c.pushBlob(`${r.host}/mount/c:1`, fresh, { mountFrom: ['mount/nothing-here'] })).outcome, 'uploaded');
  assert.ok((await collect(c.downloadBlob(`${r.host}/mount/c:1`, fresh))).length === 1000);
});

test('an OCI index with two platforms resolves to each platform\'s manifest; tags point at it and move', async () => {
  const r = plain!;
  const c = client();
  const repo = `${r.host}/multi/vm`;
  const mac = await pushImage(c, repo, [randomBytes(1000)]);
  const linux = await pushImage(c, repo, [randomBytes(2000)]);
  const index: ImageIndex = {
    schemaVersion: 2,
    mediaType: MediaType.OciIndex,
    manifests: [
      { mediaType: MediaType.OciManifest, digest: mac.digest, size: mac.bytes.length, platform: { os: 'darwin', architecture: 'arm64' } },
      { mediaType: MediaType.OciManifest, digest: linux.digest, size: linux.bytes.length, platform: { os: 'linux', architecture: 'amd64' } },
    ],
  };
  const indexBytes = Buffer.from(JSON.stringify(index));
  const pushed = await c.putManifest(`${repo}:latest`, indexBytes, MediaType.OciIndex, ['v1']);

  for (const tag of ['latest', 'v1']) {
    const m = await c.getManifest(`${repo}:${tag}`);
    assert.equal(m.digest, pushed.digest);
    assert.equal(m.mediaType, MediaType.OciIndex);
  }
  const onMac = await c.resolveImage(`${repo}:v1`, { os: 'darwin', architecture: 'arm64' });
  assert.equal(onMac.ref.digest, mac.digest);
  assert.equal(onMac.index?.raw.digest, pushed.digest);
  const onLinux = await c.resolveImage(`${repo}:v1`, { os: 'linux', architecture: 'x86_64' });
  assert.equal(onLinux.ref.digest, linux.digest);
  await assert.rejects(c.resolveImage(`${repo}:v1`, { os: 'linux', architecture: 'arm64' }), (err: unknown) => err instanceof RegistryError && err.reason === 'PlatformNotFound');

  // Re-tagging v1 to the mac manifest moves it; latest still names the index.
  await c.putManifest(`${repo}:v1`, mac.bytes, MediaType.OciManifest);
  assert.equal((await c.getManifest(`${repo}:v1`)).digest, mac.digest);
  assert.equal((await c.getManifest(`${repo}:latest`)).digest, pushed.digest);
});

test('unknown manifests and blobs are ManifestUnknown and BlobUnknown, with the registry\'s own words', async () => {
  const r = plain!;
  const c = client();
  await assert.rejects(c.getManifest(`${r.host}/nothing/here:1`), (err: unknown) =>
    err instanceof RegistryError && ['ManifestUnknown', 'NameUnknown'].includes(err.reason) && err.message.startsWith(`pull ${r.host}/nothing/here:1: registry answered 404 Not Found (`),
  );
  await pushImage(c, `${r.host}/known/vm:1`, [randomBytes(10)]);
  await assert.rejects(c.getManifest(`${r.host}/known/vm:2`), (err: unknown) => err instanceof RegistryError && err.reason === 'ManifestUnknown' && /MANIFEST_UNKNOWN/.test(err.message));
  const missing = { digest: `sha256:${'0'.repeat(64)}`, size: 5 };
  await assert.rejects(collect(c.downloadBlob(`${r.host}/known/vm:1`, missing)), (err: unknown) =>
    err instanceof RegistryError && err.reason === 'BlobUnknown' && err.digest === missing.digest && /BLOB_UNKNOWN: blob unknown to registry/.test(err.message),
  );
  // A manifest naming a blob the repository lacks is refused by the registry.
  const bad = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, config: { mediaType: TART_CONFIG, ...missing }, layers: [] }));
  await assert.rejects(c.putManifest(`${r.host}/known/vm:bad`, bad, MediaType.OciManifest), (err: unknown) => err instanceof RegistryError && err.reason === 'BlobUnknown' && /MANIFEST_BLOB_UNKNOWN/.test(err.message));
});

test('TLS registry with htpasswd: trusted through the extra CA; 401 without credentials, Basic with them, a wrong password refused', async () => {
  const r = secure!;
  const ref = `${r.host}/secure/vm:1`;
  await assert.rejects(client().getManifest(ref), (err: unknown) => err instanceof RegistryError && err.reason === 'CertificateInvalid');

  await assert.rejects(client({ caPems: [r.caCert!] }).getManifest(ref), (err: unknown) => {
    assert.ok(err instanceof RegistryError);
    assert.equal(err.reason, 'Unauthorized');
    assert.equal(err.message, `pull ${ref}: registry answered 401 Unauthorized (UNAUTHORIZED: authentication required); no credentials for ${r.host}`);
    return true;
  });

  const authed = client({ caPems: [r.caCert!], credentials: { get: async () => USER } });
  const pushed = await pushImage(authed, ref, [randomBytes(5000)]);
  assert.equal((await authed.getManifest(ref)).digest, pushed.digest);

  const wrong = client({ caPems: [r.caCert!], credentials: { get: async () => ({ username: USER.username, password: 'nope' }) } });
  await assert.rejects(wrong.getManifest(ref), (err: unknown) =>
    err instanceof RegistryError && err.reason === 'Unauthorized' && err.message.endsWith('the credentials were refused or lack access'),
  );
});

test('a kubernetes.io/dockerconfigjson pull secret logs in to the TLS registry', async () => {
  const r = secure!;
  const dockerconfigjson = JSON.stringify({ auths: { [r.host]: { auth: Buffer.from(`${USER.username}:${USER.password}`).toString('base64') } } });
  const credentials = new CredentialStore({
    dockerConfigPath: null,
    pullSecrets: [{ metadata: { name: 'regcred', namespace: 'default' }, type: 'kubernetes.io/dockerconfigjson', data: { '.dockerconfigjson': Buffer.from(dockerconfigjson).toString('base64') } }],
  });
  const c = client({ caPems: [r.caCert!], credentials });
  const pushed = await pushImage(c, `${r.host}/secret/vm:1`, [randomBytes(1000)]);
  assert.equal((await c.resolveImage(`${r.host}/secret/vm:1`)).ref.digest, pushed.digest);
});

test('a docker config.json with a credential helper (docker-credential-test on a private PATH) logs in', async () => {
  const r = secure!;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmlet-dockercfg-'));
  tempDirs.push(dir);
  const log = path.join(dir, 'helper.log');
  // Answers only for the registry it is asked about, and records what it was asked.
  writeFileSync(
    path.join(dir, 'docker-credential-test'),
    `#!/bin/sh\nread url\necho "$1 $url" >> ${log}\nif [ "$url" = "${r.host}" ]; then\n  echo '{"ServerURL":"${r.host}","Username":"${USER.username}","Secret":"${USER.password}"}'\nelse\n  echo "credentials not found in native keychain"; exit 1\nfi\n`,
  );
  chmodSync(path.join(dir, 'docker-credential-test'), 0o755);
  const config = path.join(dir, 'config.json');
  writeFileSync(config, JSON.stringify({ auths: {}, credHelpers: { [r.host]: 'test' } }));
  const credentials = new CredentialStore({ dockerConfigPath: config, helperEnv: { PATH: `${dir}:/usr/bin:/bin` } });
  const c = client({ caPems: [r.caCert!], credentials });
  const pushed = await pushImage(c, `${r.host}/helper/vm:1`, [randomBytes(1000)]);
  assert.equal((await c.getManifest(`${r.host}/helper/vm:1`)).digest, pushed.digest);
  const calls = readFileSync(log, 'utf8').trim().split('\n');
  assert.equal(calls[0], `get ${r.host}`);
  assert.equal(calls.length, 1, 'looked-up credentials are reused, not one helper run per request');
});
