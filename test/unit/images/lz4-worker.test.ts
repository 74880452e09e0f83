// Apple LZ4 decoding on worker threads (src/images/lz4/worker.ts): same bytes as the pure decoder, sha256
// and annotations checked in the worker, errors intact across the thread boundary, and bounded memory
// when the reader is slow (the producer is paused, not buffered).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, test } from 'node:test';
import { AppleLz4Error, decodeAppleLz4, encodeAppleLz4, encodeFrame, END_MARKER } from '../../../src/images/lz4/apple-lz4.ts';
import { DecodedMismatchError } from '../../../src/images/lz4/digest.ts';
import { createWorkerDecodeStream, Lz4WorkerPool } from '../../../src/images/lz4/worker.ts';

const pool = new Lz4WorkerPool({ size: 2 });
after(() => pool.close());

function mixed(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed;
  const third = Math.floor(n / 3);
  for (let i = third; i < 2 * third; i++) b[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
  for (let i = 2 * third; i < n; i++) b[i] = 97 + (((i >> 3) * 7) % 26);
  return b;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function* pieces(data: Buffer, size: number): Generator<Buffer> {
  for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size);
}

test('a worker decode stream outputs what the pure decoder does, with its sha256 and size', async () => {
  const data = mixed(3_000_000, 1);
  const enc = encodeAppleLz4(data);
  const stream = createWorkerDecodeStream();
  const out: Buffer[] = [];
  await pipeline(Readable.from(pieces(enc, 16_384)), stream, new Writable({ write: (c: Buffer, _e, cb) => (out.push(c), cb()) }));
  assert.deepEqual(Buffer.concat(out), decodeAppleLz4(enc));
  assert.deepEqual(stream.result, { sha256: sha256(data), digest: `sha256:${sha256(data)}`, size: data.length });
});

test('the pool decodes concurrent jobs on shared workers and reports each result', async () => {
  const inputs = [mixed(1_000_000, 2), mixed(10, 3), Buffer.alloc(0), mixed(500_000, 4)];
  const jobs = inputs.map((data) => ({ data, job: pool.decode(pieces(encodeAppleLz4(data), 50_000)) }));
  for (const { data, job } of jobs) {
    const out: Buffer[] = [];
    for await (const chunk of job) out.push(chunk);
    assert.deepEqual(Buffer.concat(out), data);
    assert.deepEqual(await job.result, { sha256: sha256(data), digest: `sha256:${sha256(data)}`, size: data.length });
  }
  assert.ok(pool.workers <= 2, `${pool.workers} workers for a pool of 2`);
});

test('input buffers can be transferred to the worker instead of copied', async () => {
  const data = mixed(300_000, 5);
  const chunks = [...pieces(encodeAppleLz4(data), 20_000)].map((c) => Buffer.from(c)); // each owns its memory
  const job = pool.decode(chunks, { transferInput: true });
  const out: Buffer[] = [];
  for await (const chunk of job) out.push(chunk);
  assert.deepEqual(Buffer.concat(out), data);
  assert.equal(chunks[0]!.length, 0, 'the first input buffer was transferred (detached)');
});

test('a corrupt stream fails with the same AppleLz4Error as in-thread, and the worker is reused', async () => {
  const enc = encodeAppleLz4(mixed(200_000, 6));
  const bad = Buffer.concat([enc.subarray(0, 70_000), Buffer.from('junk'), enc.subarray(70_000)]);
  let expected: unknown;
  try {
    decodeAppleLz4(bad);
  } catch (err) {
    expected = err;
  }
  assert.ok(expected instanceof AppleLz4Error);
  const job = pool.decode(pieces(bad, 8192));
  await assert.rejects(
    async () => {
      for await (const _ of job) void _;
    },
    (err) => {
      assert.ok(err instanceof AppleLz4Error, String(err));
      assert.equal(err.message, expected.message);
      assert.equal(err.reason, expected.reason);
      assert.equal(err.offset, expected.offset);
      return true;
    },
  );
  await assert.rejects(job.result, AppleLz4Error);
  const again = pool.decode([encodeAppleLz4(Buffer.from('still works'))]);
  for await (const _ of again) void _;
  assert.equal((await again.result).size, 11);
});

test('the worker checks Tart’s annotations: a wrong digest or size fails the job', async () => {
  const data = mixed(300_000, 7);
  const enc = encodeAppleLz4(data);
  const drain = async (job: AsyncIterable<Buffer>) => {
    for await (const _ of job) void _;
  };
  await assert.rejects(drain(pool.decode([enc], { expect: { digest: sha256(Buffer.alloc(1)) } })), (err) => {
    assert.ok(err instanceof DecodedMismatchError && err.field === 'digest');
    return true;
  });
  await assert.rejects(drain(pool.decode([enc], { expect: { size: 1000 } })), DecodedMismatchError);
  const ok = pool.decode([enc], { expect: { size: data.length, digest: `sha256:${sha256(data)}` } });
  await drain(ok);
  assert.equal((await ok.result).size, data.length);
});

test('a slow reader pauses the producer: memory in flight stays bounded', async () => {
  // 2048 blocks of zeros: ~550 KB compressed, 128 MiB decoded. Small windows make the bound visible.
  const frame = encodeFrame(Buffer.alloc(65536));
  const enc = Buffer.concat([...Array<Buffer>(2048).fill(frame), END_MARKER]);
  let pulled = 0;
  const source = Readable.from(
    (function* () {
      for (const chunk of pieces(enc, 4096)) {
        pulled += chunk.length;
        yield chunk;
      }
    })(),
    { highWaterMark: 4 },
  );
  const outputWindow = 1024 * 1024;
  const readableHighWaterMark = 512 * 1024;
  const stream = createWorkerDecodeStream({ maxInputInFlight: 16 * 1024, outputWindow, readableHighWaterMark });
  source.pipe(stream);
  try {
    // Wait until decoded output has reached the (unread) readable side, then let things settle.
    for (let waited = 0; stream.readableLength < readableHighWaterMark; waited += 20) {
      assert.ok(waited < 10_000, 'no output from the worker within 10 s');
      await sleep(20);
    }
    await sleep(200);
    // Nobody has read: the worker stopped at its window, the writes stopped, and so did the source.
    const before = pulled;
    assert.ok(stream.readableLength <= readableHighWaterMark + outputWindow + 256 * 1024, `buffered ${stream.readableLength}`);
    assert.ok(pulled < enc.length / 4, `the source gave ${pulled} of ${enc.length} bytes to a reader that read nothing`);
    await sleep(200);
    assert.equal(pulled, before, 'the source is paused, not trickling');
  } catch (err) {
    stream.destroy();
    throw err;
  }
  // Reading slowly at first, then quickly, gets every byte and the right digest.
  const hash = createHash('sha256');
  let total = 0;
  let maxBuffered = 0;
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    total += (chunk as Buffer).length;
    maxBuffered = Math.max(maxBuffered, stream.readableLength);
    if (total < 8 * 1024 * 1024) await sleep(1);
  }
  assert.equal(total, 2048 * 65536);
  assert.equal(stream.result?.sha256, hash.digest('hex'));
  const zeros = createHash('sha256');
  for (let i = 0; i < 2048; i++) zeros.update(Buffer.alloc(65536));
  assert.equal(stream.result?.sha256, zeros.digest('hex'));
  assert.ok(maxBuffered <= readableHighWaterMark + outputWindow + 256 * 1024, `buffered up to ${maxBuffered}`);
});

test('abandoning a job part-way ends its worker and leaves the pool usable', async () => {
  const enc = encodeAppleLz4(mixed(2_000_000, 8));
  const job = pool.decode(pieces(enc, 4096));
  for await (const _ of job) break;
  await assert.rejects(job.result); // the iterator's early return aborts the stream
  const next = pool.decode([encodeAppleLz4(Buffer.from('next'))]);
  for await (const _ of next) void _;
  assert.equal((await next.result).size, 4);
});
