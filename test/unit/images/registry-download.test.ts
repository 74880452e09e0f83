// Blob downloads against small local HTTP servers that misbehave on cue: redirects to storage, 429/5xx
// sequences, connections cut or stalled mid-body, servers that ignore Range, wrong content. (The same
// faults against the real registry are in test/e2e/registry-faults.test.ts.)
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { after, test } from 'node:test';
import { RegistryClient } from '../../../src/images/registry/client.ts';
import { digestOf } from '../../../src/images/registry/digest.ts';
import { RegistryError } from '../../../src/images/registry/errors.ts';
import { listenLocal } from '../helpers/local-http.ts';

type Handler = (req: IncomingMessage, res: ServerResponse, n: number) => void;

const closers: (() => Promise<void>)[] = [];
after(async () => {
  await Promise.all(closers.map((c) => c()));
});

/** An HTTP server on 127.0.0.1; the handler gets the 1-based number of the request. */
async function serve(handler: Handler): Promise<{ host: string; requests: IncomingMessage[] }> {
  const requests: IncomingMessage[] = [];
  const server = createServer((req, res) => {
    requests.push(req);
    handler(req, res, requests.length);
  });
  const { port, close } = await listenLocal(server);
  closers.push(close);
  return { host: `127.0.0.1:${port}`, requests };
}

function client(host: string, extra: ConstructorParameters<typeof RegistryClient>[0] = {}): RegistryClient {
  const c = new RegistryClient({
    plainHttpRegistries: [host],
    retry: { attempts: 4, initialDelayMs: 10, maxDelayMs: 40 },
    stallTimeoutMs: 400,
    ...extra,
  });
  closers.push(() => c.close());
  return c;
}

/** Serves `blob` honouring "Range: bytes=N-" with 206, like a registry's storage. */
function sendBlob(req: IncomingMessage, res: ServerResponse, blob: Buffer, opts: { ignoreRange?: boolean } = {}): void {
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  if (m && !opts.ignoreRange) {
    const start = Number(m[1]);
    res.writeHead(206, { 'content-length': blob.length - start, 'content-range': `bytes ${start}-${blob.length - 1}/${blob.length}` });
    res.end(blob.subarray(start));
    return;
  }
  res.writeHead(200, { 'content-length': blob.length, 'content-type': 'application/octet-stream' });
  res.end(blob);
}

/** Writes the first `bytes` of the blob, then cuts (or, with stall, leaves the connection hanging). */
function sendPart(res: ServerResponse, blob: Buffer, bytes: number, stall = false): void {
  res.writeHead(200, { 'content-length': blob.length });
  res.write(blob.subarray(0, bytes), () => {
    if (!stall) res.socket?.destroy();
  });
}

async function collect(iterable: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of iterable) chunks.push(c);
  return Buffer.concat(chunks);
}

const BLOB = randomBytes(256 * 1024);
const DESC = { digest: digestOf(BLOB), size: BLOB.length };

test('a redirect to storage is followed without the Authorization header; the registry itself gets it', async () => {
  const storage = await serve((req, res) => sendBlob(req, res, BLOB));
  const registry = await serve((req, res) => {
    if (req.headers.authorization !== `Basic ${Buffer.from('u:p').toString('base64')}`) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="test"', 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
      return;
    }
    res.writeHead(307, { location: `http://${storage.host}/blobs/xyz?signature=abc` });
    res.end();
  });
  const c = client(registry.host, { plainHttpRegistries: [registry.host], credentials: { get: async () => ({ username: 'u', password: 'p' }) } });
  const got = await collect(c.downloadBlob(`${registry.host}/team/vm:1`, DESC));
  assert.ok(got.equals(BLOB));
  assert.equal(registry.requests.length, 2, 'one anonymous request, one with credentials after the challenge');
  assert.ok(registry.requests[1]!.headers.authorization);
  assert.equal(storage.requests.length, 1);
  assert.equal(storage.requests[0]!.url, '/blobs/xyz?signature=abc');
  assert.equal(storage.requests[0]!.headers.authorization, undefined, 'credentials must not leak to the storage origin');
});

test('429 with Retry-After, then 500, then the blob: retried, honouring Retry-After', async () => {
  const registry = await serve((req, res, n) => {
    if (n === 1) {
      res.writeHead(429, { 'retry-after': '1', 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'TOOMANYREQUESTS', message: 'slow down' }] }));
    } else if (n === 2) {
      res.writeHead(500);
      res.end('boom');
    } else sendBlob(req, res, BLOB);
  });
  const started = Date.now();
  const got = await collect(client(registry.host).downloadBlob(`${registry.host}/team/vm:1`, DESC));
  assert.ok(got.equals(BLOB));
  assert.equal(registry.requests.length, 3);
  assert.ok(Date.now() - started >= 950, `waited ${Date.now() - started} ms, Retry-After said 1 s`);
});

test('a 5xx that never ends gives up after the retry budget with RegistryUnavailable', async () => {
  const registry = await serve((_req, res) => {
    res.writeHead(503, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: 'maintenance' }] }));
  });
  await assert.rejects(collect(client(registry.host).downloadBlob(`${registry.host}/team/vm:1`, DESC)), (err: unknown) => {
    assert.ok(err instanceof RegistryError);
    assert.equal(err.reason, 'RegistryUnavailable');
    assert.equal(err.message, `pull ${registry.host}/team/vm:1 blob ${DESC.digest}: registry answered 503 Service Unavailable (UNAVAILABLE: maintenance)`);
    return true;
  });
  assert.equal(registry.requests.length, 4, 'attempts: 4');
});

test('a 404 is BlobUnknown at once, with the registry code in the message', async () => {
  const registry = await serve((_req, res) => {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown to registry', detail: DESC.digest }] }));
  });
  await assert.rejects(collect(client(registry.host).downloadBlob(`${registry.host}/team/vm:1`, DESC)), (err: unknown) =>
    err instanceof RegistryError && err.reason === 'BlobUnknown' && err.status === 404 && /BLOB_UNKNOWN: blob unknown to registry/.test(err.message),
  );
  assert.equal(registry.requests.length, 1);
});

test('a connection cut mid-body resumes with Range from the last byte received (206)', async () => {
  const registry = await serve((req, res, n) => (n === 1 ? sendPart(res, BLOB, 100_000) : sendBlob(req, res, BLOB)));
  const progress: number[] = [];
  const got = await collect(client(registry.host).downloadBlob(`${registry.host}/team/vm:1`, DESC, { onProgress: (b) => progress.push(b) }));
  assert.ok(got.equals(BLOB));
  assert.equal(registry.requests.length, 2);
  const resumedAt = Number(/^bytes=(\d+)-$/.exec(registry.requests[1]!.headers.range ?? '')?.[1]);
  assert.ok(resumedAt > 0 && resumedAt <= 100_000, `resumed at ${resumedAt}`);
  assert.equal(progress.at(-1), BLOB.length);
  assert.deepEqual(progress, [...progress].sort((a, b) => a - b), 'progress only grows');
});

test('a server that ignores Range and answers 200 is read past the bytes already held', async () => {
  const registry = await serve((req, res, n) => (n === 1 ? sendPart(res, BLOB, 150_000) : sendBlob(req, res, BLOB, { ignoreRange: true })));
  const got = await collect(client(registry.host).downloadBlob(`${registry.host}/team/vm:1`, DESC));
  assert.ok(got.equals(BLOB), 'no byte twice, none missing');
  assert.match(registry.requests[1]!.headers.range ?? '', /^bytes=\d+-$/);
});

test('a body that stalls is abandoned after the stall timeout and resumed', async () => {
  const registry = await serve((req, res, n) => (n === 1 ? sendPart(res, BLOB, 64 * 1024, true) : sendBlob(req, res, BLOB)));
  const started = Date.now();
  const got = await collect(client(registry.host, { stallTimeoutMs: 300 }).downloadBlob(`${registry.host}/team/vm:1`, DESC));
  assert.ok(got.equals(BLOB));
  assert.ok(Date.now() - started >= 300);
  assert.match(registry.requests[1]!.headers.range ?? '', /^bytes=\d+-$/);
});

test('a download resumes at a caller-held offset with the caller-fed hash (a store restarting)', async () => {
  const registry = await serve((req, res) => sendBlob(req, res, BLOB));
  const held = 200_000;
  const hash = createHash('sha256').update(BLOB.subarray(0, held));
  const rest = await collect(client(registry.host).downloadBlob(`${registry.host}/team/vm:1`, DESC, { offset: held, hash }));
  assert.ok(rest.equals(BLOB.subarray(held)));
  assert.equal(registry.requests[0]!.headers.range, `bytes=${held}-`);
  // A hash fed with wrong bytes is caught at the end, whatever the network sent.
  const wrong = createHash('sha256').update(Buffer.alloc(held));
  await assert.rejects(
    collect(client(registry.host).downloadBlob(`${registry.host}/team/vm:1`, DESC, { offset: held, hash: wrong })),
    (err: unknown) => err instanceof RegistryError && err.reason === 'DigestMismatch',
  );
});

test('wrong content of the right size: every chunk arrives, then DigestMismatch before success is signalled', async () => {
  const other = randomBytes(BLOB.length);
  const registry = await serve((req, res) => sendBlob(req, res, other));
  let received = 0;
  let committed = false;
  await assert.rejects(
    (async () => {
      for await (const chunk of client(registry.host).downloadBlob(`${registry.host}/team/vm:1`, DESC)) received += chunk.length;
      committed = true; // What a store would do after the loop: must never run.
    })(),
    (err: unknown) => {
      assert.ok(err instanceof RegistryError);
      assert.equal(err.reason, 'DigestMismatch');
      assert.equal(err.digest, DESC.digest);
      assert.equal(err.message, `pull ${registry.host}/team/vm:1 blob ${DESC.digest}: content has digest ${digestOf(other)} (${BLOB.length} bytes received)`);
      return true;
    },
  );
  assert.equal(received, BLOB.length);
  assert.equal(committed, false);
});

test('a blob of another size than its descriptor is refused before any byte is handed out (SizeMismatch)', async () => {
  const registry = await serve((req, res) => sendBlob(req, res, BLOB.subarray(0, 1000)));
  let received = 0;
  await assert.rejects(
    (async () => {
      for await (const chunk of client(registry.host).downloadBlob(`${registry.host}/team/vm:1`, DESC)) received += chunk.length;
    })(),
    (err: unknown) => err instanceof RegistryError && err.reason === 'SizeMismatch' && /registry has 1000 bytes, the descriptor says 262144/.test(err.message),
  );
  assert.equal(received, 0);
});

test('a body that ends early without an error every time gives up after the retry budget', async () => {
  // No Content-Length and a clean end: the only sign of truncation is the descriptor's size.
  const registry = await serve((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    res.end(BLOB.subarray(0, 10));
  });
  await assert.rejects(
    collect(client(registry.host, { retry: { attempts: 2, initialDelayMs: 5 } }).downloadBlob(`${registry.host}/team/vm:1`, DESC)),
    (err: unknown) => err instanceof RegistryError && /the response ended after \d+ of 262144 bytes/.test(err.message),
  );
});

test('a consumer that stops early frees the connection: the client then closes at once', async () => {
  const big = randomBytes(8 * 1024 * 1024);
  const registry = await serve((req, res) => sendBlob(req, res, big));
  const c = new RegistryClient({ plainHttpRegistries: [registry.host] });
  for await (const chunk of c.downloadBlob(`${registry.host}/team/vm:1`, { digest: digestOf(big), size: big.length })) {
    assert.ok(chunk.length > 0);
    break;
  }
  const closed = await Promise.race([c.close().then(() => 'closed'), new Promise((r) => setTimeout(() => r('still busy'), 2000))]);
  assert.equal(closed, 'closed');
});

test('an aborted download stops with Aborted and is not retried', async () => {
  const controller = new AbortController();
  // Aborted once the download is under way (a timer from the test's start could fire before the request
  // is even sent on a loaded machine).
  const registry = await serve((_req, res) => {
    sendPart(res, BLOB, 1000, true);
    setTimeout(() => controller.abort(), 50);
  });
  await assert.rejects(collect(client(registry.host, { stallTimeoutMs: 5000 }).downloadBlob(`${registry.host}/team/vm:1`, DESC, { signal: controller.signal })), (err: unknown) =>
    err instanceof RegistryError && err.reason === 'Aborted',
  );
  assert.equal(registry.requests.length, 1);
});
