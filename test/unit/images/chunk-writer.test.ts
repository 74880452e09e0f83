// ChunkWriterPool: real worker threads decoding Apple LZ4 into a real file, fed piece by piece as a
// download would be. What a pull relies on: the chunk lands at its offset with its holes, both digests
// are checked on the worker (the compressed one first), and a worker takes job after job.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { encodeAppleLz4 } from '../../../src/images/lz4/apple-lz4.ts';
import { BlobDigestMismatch, ChunkWriterPool } from '../../../src/images/store/chunk-writer.ts';

const MiB = 1024 * 1024;
let dir: string;
let pool: ChunkWriterPool;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmlet-chunk-writer-'));
  pool = new ChunkWriterPool(2);
});
after(async () => {
  await pool.close();
  await rm(dir, { recursive: true, force: true });
});

const sha = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** The chunk: 1 MiB of zeros, 1 MiB random (stored blocks), 1 MiB of text. */
function chunk(): Buffer {
  return Buffer.concat([Buffer.alloc(MiB), randomBytes(MiB), Buffer.from('vmlet chunk writer '.repeat(MiB / 19 + 1)).subarray(0, MiB)]);
}

/** The bytes as a network delivers them: pieces of 1000-70000 bytes. */
async function* pieces(data: Buffer): AsyncGenerator<Uint8Array> {
  for (let at = 0, n = 1000; at < data.length; at += n, n = (n * 7) % 70_000 + 1000) yield data.subarray(at, at + n);
}

let files = 0;
async function diskFile(size: number): Promise<string> {
  const file = path.join(dir, `disk-${++files}.img`);
  await writeFile(file, '');
  await truncate(file, size);
  return file;
}

test('a chunk is decoded into the disk at its offset, with holes for its zeros, both digests checked', async () => {
  const plain = chunk();
  const blob = encodeAppleLz4(plain);
  const file = await diskFile(8 * MiB);
  const at = 4 * MiB;
  // Twice, one after the other: the workers take job after job, on pieces handed back by the last.
  for (let round = 0; round < 2; round++) {
    const result = await pool.write({ file, offset: at, sparse: true, expect: { size: plain.length, digest: sha(plain) }, blobDigest: sha(blob), source: pieces(blob), batchBytes: 64 * 1024 });
    assert.deepEqual(result, { digest: sha(plain), size: plain.length, written: 2 * MiB });
  }
  const disk = await readFile(file);
  assert.deepEqual(disk.subarray(at, at + plain.length), plain);
  assert.ok(disk.subarray(0, at).every((b) => b === 0));
  assert.ok((await stat(file)).blocks * 512 <= 2 * MiB + 64 * 1024, 'the zero megabyte and the rest of the file are holes');
});

test('bytes that are not the blob fail with BlobDigestMismatch before the decoded digest is looked at', async () => {
  const plain = chunk();
  const blob = encodeAppleLz4(plain);
  const bad = Buffer.from(blob);
  bad[blob.length >> 1]! ^= 0x40; // inside the random megabyte: stored blocks, which decode whatever they hold
  const file = await diskFile(4 * MiB);
  const err = await pool
    .write({ file, offset: 0, sparse: true, expect: { size: plain.length, digest: sha(plain) }, blobDigest: sha(blob), source: pieces(bad) })
    .then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof BlobDigestMismatch, String(err));
  assert.equal(err.actual, sha(bad));
  // Without the blob's digest the same bytes fail on the decoded digest (the annotation's).
  const decoded = await pool
    .write({ file, offset: 0, sparse: true, expect: { size: plain.length, digest: sha(plain) }, source: pieces(bad) })
    .then(() => undefined, (e: unknown) => e);
  assert.match(String(decoded), /decoded digest is sha256:[a-f0-9]{64} but the layer's annotation says/);
  // The pool is still usable after both.
  const ok = await pool.write({ file, offset: 0, sparse: true, expect: { size: plain.length, digest: sha(plain) }, blobDigest: sha(blob), source: pieces(blob) });
  assert.equal(ok.digest, sha(plain));
});
