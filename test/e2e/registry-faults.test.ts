// Network faults between the client and the real (plain-HTTP) registry, injected by the fault proxy at
// exact byte offsets of the blob response: a cut connection resumes with Range and verifies, a stall is
// detected and resumed, a flipped byte ends in DigestMismatch, and a blob truncated in the registry's
// storage or a cut on every attempt never reports success. Uploads survive a cut mid-PATCH.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { truncateSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { bufferSource, RegistryClient, RegistryError, type RegistryClientOptions } from '../../src/images/registry/index.ts';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.ts';
import { startRegistry, type Registry } from '../harness/registry.ts';
import { ensureTestDependencies } from '../harness/setup.ts';

const MiB = 1024 * 1024;

let registry: Registry | undefined;
let proxy: FaultProxy | undefined;
const clients: RegistryClient[] = [];

before(async () => {
  registry = await startRegistry({ binaries: await ensureTestDependencies() });
  proxy = await startFaultProxy(registry.host);
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await proxy?.close();
  await registry?.stop();
});

/** A client that reaches the registry through the fault proxy. */
function viaProxy(opts: RegistryClientOptions = {}): RegistryClient {
  const c = new RegistryClient({ plainHttpRegistries: [proxy!.host], retry: { attempts: 3, initialDelayMs: 50, maxDelayMs: 200 }, stallTimeoutMs: 5000, ...opts });
  clients.push(c);
  return c;
}

/** Pushes a fresh random blob straight to the registry (no proxy); returns it and its descriptor. */
async function seedBlob(repository: string, size: number) {
  const direct = new RegistryClient({ plainHttpRegistries: [registry!.host] });
  clients.push(direct);
  const blob = randomBytes(size);
  const source = bufferSource(blob);
  await direct.pushBlob(`${registry!.host}/${repository}:1`, source);
  return { blob, desc: { digest: source.digest, size }, ref: `${proxy!.host}/${repository}:1`, get: `GET /v2/${repository}/blobs/${source.digest}` };
}

async function collect(iterable: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of iterable) chunks.push(c);
  return Buffer.concat(chunks);
}

test('a connection cut mid-blob is resumed with Range, not restarted, and the blob verifies', async () => {
  const { blob, desc, ref, get } = await seedBlob('faults/cut', 4 * MiB);
  const fault = proxy!.addFault({ match: get, at: MiB, action: { kind: 'cut' } });
  const before = { connections: proxy!.connections, bytes: proxy!.bytesToClient };
  const got = await collect(viaProxy().downloadBlob(ref, desc));
  assert.ok(got.equals(blob));
  assert.equal(fault.fired, 1);
  assert.ok(proxy!.connections > before.connections, 'a new connection after the cut');
  const sent = proxy!.bytesToClient - before.bytes;
  assert.ok(sent < desc.size + 64 * 1024, `${sent} bytes crossed the proxy for a ${desc.size}-byte blob: the second request resumed`);
});

test('a connection reset (RST) mid-blob is resumed as well', async () => {
  const { blob, desc, ref, get } = await seedBlob('faults/reset', 2 * MiB);
  const fault = proxy!.addFault({ match: get, at: 700_000, action: { kind: 'cut', reset: true } });
  assert.ok((await collect(viaProxy().downloadBlob(ref, desc))).equals(blob));
  assert.equal(fault.fired, 1);
});

test('a body that stalls mid-blob is detected after the stall timeout and resumed on a new connection', async () => {
  const { blob, desc, ref, get } = await seedBlob('faults/stall', 3 * MiB);
  const fault = proxy!.addFault({ match: get, at: MiB + 17, action: { kind: 'stall' } });
  const started = Date.now();
  const got = await collect(viaProxy({ stallTimeoutMs: 1000 }).downloadBlob(ref, desc));
  assert.ok(got.equals(blob));
  assert.equal(fault.fired, 1);
  assert.ok(Date.now() - started >= 1000, 'waited for the stall timeout');
});

test('a pause shorter than the stall timeout is not a failure: one connection, no retry', async () => {
  const { blob, desc, ref, get } = await seedBlob('faults/pause', MiB);
  proxy!.addFault({ match: get, at: 300_000, action: { kind: 'stall', ms: 400 } });
  const before = proxy!.connections;
  const got = await collect(viaProxy({ stallTimeoutMs: 3000 }).downloadBlob(ref, desc));
  assert.ok(got.equals(blob));
  assert.equal(proxy!.connections - before, 1);
});

test('a flipped byte ends in DigestMismatch naming image, blob and cause, after the last chunk, never success', async () => {
  const { desc, ref, get } = await seedBlob('faults/corrupt', MiB);
  proxy!.addFault({ match: get, at: 500_000, action: { kind: 'corrupt' } });
  let received = 0;
  let succeeded = false;
  await assert.rejects(
    (async () => {
      for await (const chunk of viaProxy().downloadBlob(ref, desc)) received += chunk.length;
      succeeded = true;
    })(),
    (err: unknown) => {
      assert.ok(err instanceof RegistryError);
      assert.equal(err.reason, 'DigestMismatch');
      assert.equal(err.digest, desc.digest);
      assert.match(err.message, new RegExp(`^pull ${proxy!.host}/faults/corrupt:1 blob ${desc.digest}: content has digest sha256:[a-f0-9]{64} \\(${desc.size} bytes received\\)$`));
      return true;
    },
  );
  assert.equal(received, desc.size);
  assert.equal(succeeded, false);
});

test('a cut before any body byte on every attempt exhausts the retries: ConnectionFailed, never success', async () => {
  const { desc, ref, get } = await seedBlob('faults/always-cut', 100_000);
  const fault = proxy!.addFault({ match: get, at: 10, action: { kind: 'cut' }, times: Infinity });
  try {
    await assert.rejects(collect(viaProxy().downloadBlob(ref, desc)), (err: unknown) =>
      err instanceof RegistryError && err.reason === 'ConnectionFailed' && err.message.startsWith(`pull ${proxy!.host}/faults/always-cut:1 blob ${desc.digest}: `),
    );
    assert.equal(fault.fired, 3, 'attempts: 3');
  } finally {
    proxy!.clearFaults();
  }
});

test('a blob truncated in the registry\'s storage is SizeMismatch before any byte is handed out', async () => {
  const { desc, ref } = await seedBlob('faults/truncated', 200_000);
  const hex = desc.digest.slice('sha256:'.length);
  truncateSync(path.join(registry!.dir, 'data', 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data'), 150_000);
  let received = 0;
  await assert.rejects(
    (async () => {
      for await (const chunk of viaProxy().downloadBlob(ref, desc)) received += chunk.length;
    })(),
    (err: unknown) => err instanceof RegistryError && err.reason === 'SizeMismatch' && /the registry has 150000 bytes, the descriptor says 200000/.test(err.message),
  );
  assert.equal(received, 0);
});

test('a chunked upload cut mid-PATCH: distribution cancels that session (BLOB_UPLOAD_INVALID), a fresh one completes it', async () => {
  const logs: { reason?: string; msg: string }[] = [];
  const logger = pino({ level: 'warn' }, { write: (line: string) => logs.push(JSON.parse(line) as { reason?: string; msg: string }) });
  const c = viaProxy({ logger });
  const blob = randomBytes(3 * MiB);
  const source = bufferSource(blob);
  const ref = `${proxy!.host}/faults/upload:1`;
  // Cut 300 kB into the second chunk's body (its Content-Range names it).
  const fault = proxy!.addFault({ direction: 'request', match: `content-range: ${MiB}-${2 * MiB - 1}`, at: 300_000, action: { kind: 'cut' } });
  const result = await c.pushBlob(ref, source, { mode: 'chunked', chunkSize: MiB });
  assert.equal(result.outcome, 'uploaded');
  assert.equal(fault.fired, 1);
  // The client asks the registry where the upload stands; distribution 2.8 has stored part of the
  // broken chunk, finds that at odds with the session's signed state, and cancels the session.
  assert.deepEqual(logs.map((l) => l.reason), ['ConnectionFailed', 'BlobUploadInvalid']);
  assert.match(logs[0]!.msg, /^chunk upload failed, resuming: /);
  assert.match(logs[1]!.msg, /^blob upload failed, starting again: .*BLOB_UPLOAD_INVALID/);
  assert.ok((await collect(c.downloadBlob(ref, source))).equals(blob));
});

test('a monolithic upload whose connection is cut mid-PUT is started again and completes', async () => {
  const c = viaProxy();
  const blob = randomBytes(2 * MiB);
  const source = bufferSource(blob);
  const ref = `${proxy!.host}/faults/upload-whole:1`;
  const fault = proxy!.addFault({ direction: 'request', match: 'PUT /v2/faults/upload-whole/blobs/uploads/', at: 500_000, action: { kind: 'cut' } });
  assert.equal((await c.pushBlob(ref, source)).outcome, 'uploaded');
  assert.equal(fault.fired, 1);
  assert.ok((await collect(c.downloadBlob(ref, source))).equals(blob));
});
