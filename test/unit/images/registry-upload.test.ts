// Blob push against a fake registry that keeps upload sessions the way distribution does (offsets,
// Range, moving Locations with state), so the exact requests can be checked: Content-Range without
// "bytes=", OCI-Chunk-Min-Length, resuming after a failed PATCH from the registry's own offset.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import { RegistryClient } from '../../../src/images/registry/client.ts';
import { RegistryError } from '../../../src/images/registry/errors.ts';
import { bufferSource, fileSource } from '../../../src/images/registry/sources.ts';
import { listenLocal } from '../helpers/local-http.ts';

const closers: (() => Promise<void>)[] = [];
after(async () => {
  await Promise.all(closers.map((c) => c()));
});

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  length: number;
}

interface FakeOptions {
  minChunk?: number;
  /** Fails the nth PATCH (1-based) after storing `keep` of its bytes, as a registry that broke mid-write. */
  failPatch?: { n: number; keep: number; status?: number };
  mountable?: Set<string>;
}

/** A registry's blob upload endpoints, in memory. */
async function fakeRegistry(opts: FakeOptions = {}) {
  const blobs = new Map<string, Buffer>();
  const uploads = new Map<string, Buffer>();
  const seen: Seen[] = [];
  let patches = 0;
  let ids = 0;
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, length: body.length });
      handle(req, res, body);
    });
  });
  const location = (id: string, res: ServerResponse): void => {
    // A new state on every answer, as distribution's _state: the client must follow each Location.
    res.setHeader('location', `/v2/app/blobs/uploads/${id}?_state=${randomBytes(4).toString('hex')}`);
    const size = uploads.get(id)!.length;
    res.setHeader('range', `0-${size > 0 ? size - 1 : 0}`);
  };
  function handle(req: IncomingMessage, res: ServerResponse, body: Buffer): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const blob = /^\/v2\/app\/blobs\/(sha256:[a-f0-9]+)$/.exec(url.pathname);
    const upload = /^\/v2\/app\/blobs\/uploads\/(\w*)$/.exec(url.pathname);
    if (blob && req.method === 'HEAD') {
      const b = blobs.get(blob[1]!);
      res.writeHead(b ? 200 : 404, b ? { 'content-length': b.length } : {});
      res.end();
      return;
    }
    if (upload && req.method === 'POST') {
      const mount = url.searchParams.get('mount');
      if (mount && opts.mountable?.has(`${url.searchParams.get('from')}@${mount}`)) {
        res.writeHead(201, { 'docker-content-digest': mount, location: `/v2/app/blobs/${mount}` });
        res.end();
        return;
      }
      const id = `u${++ids}`;
      uploads.set(id, Buffer.alloc(0));
      location(id, res);
      if (opts.minChunk) res.setHeader('oci-chunk-min-length', String(opts.minChunk));
      res.writeHead(202);
      res.end();
      return;
    }
    const id = upload?.[1];
    const held = id ? uploads.get(id) : undefined;
    if (!id || !held) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'BLOB_UPLOAD_UNKNOWN', message: 'blob upload unknown to registry' }] }));
      return;
    }
    if (req.method === 'GET') {
      location(id, res);
      res.writeHead(204);
      res.end();
      return;
    }
    if (req.method === 'PATCH') {
      patches += 1;
      const range = /^(\d+)-(\d+)$/.exec(req.headers['content-range'] ?? '');
      if (!range || Number(range[1]) !== held.length || Number(range[2]) - Number(range[1]) + 1 !== body.length) {
        res.writeHead(416, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ errors: [{ code: 'RANGE_INVALID', message: 'invalid content range' }] }));
        return;
      }
      if (opts.failPatch?.n === patches) {
        uploads.set(id, Buffer.concat([held, body.subarray(0, opts.failPatch.keep)]));
        res.writeHead(opts.failPatch.status ?? 500);
        res.end();
        return;
      }
      uploads.set(id, Buffer.concat([held, body]));
      location(id, res);
      res.writeHead(202);
      res.end();
      return;
    }
    if (req.method === 'PUT') {
      const content = Buffer.concat([held, body]);
      const digest = `sha256:${createHash('sha256').update(content).digest('hex')}`;
      if (digest !== url.searchParams.get('digest')) {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ errors: [{ code: 'DIGEST_INVALID', message: 'provided digest did not match uploaded content' }] }));
        return;
      }
      uploads.delete(id);
      blobs.set(digest, content);
      res.writeHead(201, { 'docker-content-digest': digest, location: `/v2/app/blobs/${digest}` });
      res.end();
      return;
    }
    if (req.method === 'DELETE') {
      uploads.delete(id);
      res.writeHead(204);
      res.end();
      return;
    }
    res.writeHead(405);
    res.end();
  }
  const { port, close } = await listenLocal(server);
  closers.push(close);
  const host = `127.0.0.1:${port}`;
  const client = new RegistryClient({ plainHttpRegistries: [host], retry: { attempts: 3, initialDelayMs: 5, maxDelayMs: 20 } });
  closers.push(() => client.close());
  return { host, client, blobs, seen };
}

test('chunked upload: PATCH chunks with "start-end" Content-Range and Content-Length, each Location followed, then PUT ?digest=', async () => {
  const { host, client, blobs, seen } = await fakeRegistry();
  const blob = randomBytes(10_000);
  const source = bufferSource(blob);
  const progress: number[] = [];
  const result = await client.pushBlob(`${host}/app:1`, source, { mode: 'chunked', chunkSize: 4096, onProgress: (b) => progress.push(b) });
  assert.deepEqual(result, { digest: source.digest, size: 10_000, outcome: 'uploaded' });
  assert.ok(blobs.get(source.digest)?.equals(blob));
  const patches = seen.filter((s) => s.method === 'PATCH');
  assert.deepEqual(patches.map((p) => p.headers['content-range']), ['0-4095', '4096-8191', '8192-9999']);
  assert.deepEqual(patches.map((p) => p.headers['content-length']), ['4096', '4096', '1808']);
  assert.ok(patches.every((p) => p.headers['content-type'] === 'application/octet-stream'));
  assert.ok(patches.every((p) => p.headers['transfer-encoding'] === undefined), 'explicit length, never chunked encoding');
  // Each request goes to the Location (with its _state) the previous answer gave.
  const put = seen.find((s) => s.method === 'PUT')!;
  assert.match(put.url, /^\/v2\/app\/blobs\/uploads\/u1\?_state=[a-f0-9]+&digest=sha256%3A[a-f0-9]{64}$/);
  assert.equal(put.length, 0);
  assert.deepEqual(progress, [4096, 8192, 10_000]);
});

test('chunks are at least the registry\'s OCI-Chunk-Min-Length', async () => {
  const { host, client, seen } = await fakeRegistry({ minChunk: 6000 });
  await client.pushBlob(`${host}/app:1`, bufferSource(randomBytes(10_000)), { mode: 'chunked', chunkSize: 1000 });
  assert.deepEqual(seen.filter((s) => s.method === 'PATCH').map((p) => p.headers['content-range']), ['0-5999', '6000-9999']);
});

test('a PATCH that fails mid-chunk is resumed from the offset the registry reports (GET on the upload)', async () => {
  const { host, client, blobs, seen } = await fakeRegistry({ failPatch: { n: 2, keep: 1000 } });
  const blob = randomBytes(10_000);
  const source = bufferSource(blob);
  await client.pushBlob(`${host}/app:1`, source, { mode: 'chunked', chunkSize: 4096 });
  assert.ok(blobs.get(source.digest)?.equals(blob));
  const flow = seen.filter((s) => s.method !== 'HEAD').map((s) => `${s.method} ${s.headers['content-range'] ?? ''}`.trim());
  assert.deepEqual(flow, ['POST', 'PATCH 0-4095', 'PATCH 4096-8191', 'GET', 'PATCH 5096-9191', 'PATCH 9192-9999', 'PUT']);
});

test('monolithic upload: POST, then one PUT with the whole body, the digest added to the Location\'s query', async () => {
  const { host, client, blobs, seen } = await fakeRegistry();
  const blob = randomBytes(5000);
  const source = bufferSource(blob);
  assert.equal((await client.pushBlob(`${host}/app:1`, source)).outcome, 'uploaded');
  assert.ok(blobs.get(source.digest)?.equals(blob));
  const put = seen.find((s) => s.method === 'PUT')!;
  assert.equal(put.headers['content-length'], '5000');
  assert.equal(put.length, 5000);
  assert.match(put.url, /\?_state=[a-f0-9]+&digest=sha256%3A/);
  assert.equal(seen.filter((s) => s.method === 'PATCH').length, 0);
  // Pushed again: HEAD finds it, nothing is uploaded.
  const before = seen.length;
  assert.equal((await client.pushBlob(`${host}/app:1`, source)).outcome, 'exists');
  assert.deepEqual(seen.slice(before).map((s) => s.method), ['HEAD']);
});

test('a mount answered 201 is done; 202 continues in the upload session it opened', async () => {
  const mounted = bufferSource(randomBytes(100));
  const notThere = bufferSource(randomBytes(100));
  const { host, client, seen } = await fakeRegistry({ mountable: new Set([`base@${mounted.digest}`]) });
  assert.equal((await client.pushBlob(`${host}/app:1`, mounted, { mountFrom: ['base'] })).outcome, 'mounted');
  const before = seen.length;
  assert.equal((await client.pushBlob(`${host}/app:1`, notThere, { mountFrom: ['base'] })).outcome, 'uploaded');
  const flow = seen.slice(before).map((s) => `${s.method} ${s.url.replace(/\?.*/, (q) => (q.includes('mount=') ? '?mount' : ''))}`);
  assert.deepEqual(flow, [`HEAD /v2/app/blobs/${notThere.digest}`, 'POST /v2/app/blobs/uploads/?mount', 'PUT /v2/app/blobs/uploads/u1']);
});

test('content that does not match its digest is refused by the registry: DigestMismatch, not retried', async () => {
  const { host, client, seen } = await fakeRegistry();
  const source = { ...bufferSource(randomBytes(100)), digest: `sha256:${'0'.repeat(64)}` };
  await assert.rejects(client.pushBlob(`${host}/app:1`, source), (err: unknown) =>
    err instanceof RegistryError && err.reason === 'DigestMismatch' && /DIGEST_INVALID: provided digest did not match/.test(err.message),
  );
  assert.equal(seen.filter((s) => s.method === 'PUT').length, 1);
});

test('a source shorter than its declared size fails with SizeMismatch', async () => {
  const { host, client } = await fakeRegistry();
  const blob = randomBytes(1000);
  const source = { ...bufferSource(blob), size: 2000, open: () => Readable.from([blob]) };
  for (const mode of ['monolithic', 'chunked'] as const) {
    await assert.rejects(client.pushBlob(`${host}/app:1`, source, { mode, chunkSize: 512 }), (err: unknown) =>
      err instanceof RegistryError && err.reason === 'SizeMismatch' && /ended after 1000 of 2000 bytes/.test(err.message),
    );
  }
});

test('a file source is reopened at the registry\'s offset after a failed chunk (no whole-file retry)', async () => {
  const { host, client, blobs, seen } = await fakeRegistry({ failPatch: { n: 3, keep: 777 } });
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmlet-upload-'));
  closers.push(async () => rmSync(dir, { recursive: true, force: true }));
  const blob = randomBytes(20_000);
  const file = path.join(dir, 'disk.img');
  writeFileSync(file, blob);
  const { digest } = bufferSource(blob);
  await client.pushBlob(`${host}/app:1`, fileSource(file, digest, blob.length), { mode: 'chunked', chunkSize: 5000 });
  assert.ok(blobs.get(digest)?.equals(blob));
  const ranges = seen.filter((s) => s.method === 'PATCH').map((p) => p.headers['content-range']);
  assert.deepEqual(ranges, ['0-4999', '5000-9999', '10000-14999', '10777-15776', '15777-19999']);
});
