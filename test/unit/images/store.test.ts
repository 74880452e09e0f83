import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, stat, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { ContentError, ContentStore } from '../../../src/images/store/content-store.ts';
import { ImageStore } from '../../../src/images/store/image-store.ts';
import { SparseFile } from '../../../src/images/store/sparse-file.ts';
import { importImage } from '../../../src/images/build.ts';

const tmp = () => mkdtemp(path.join(os.tmpdir(), 'vmlet-store-'));
const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

test('a blob is invisible until committed, and a commit with the wrong digest keeps nothing', async () => {
  const store = new ContentStore(await tmp());
  await store.init();
  const data = randomBytes(100_000);
  const w = await store.writer('pull-1');
  await w.write(data.subarray(0, 50_000));
  assert.equal(await store.has(digestOf(data)), false, 'not visible while being written');
  await w.close();

  // A new process resumes the same ref where the last one stopped, with the hash fed again.
  const resumed = await store.writer('pull-1');
  assert.equal(resumed.offset, 50_000);
  await resumed.write(data.subarray(50_000));
  await resumed.commit(data.length, digestOf(data));
  assert.deepEqual(await store.read(digestOf(data)), data);
  assert.deepEqual(await store.ingests(), []);

  const bad = await store.writer('pull-2');
  await bad.write(Buffer.from('not what was promised'));
  await assert.rejects(bad.commit(21, digestOf(data)), (e: ContentError) => e.reason === 'DigestMismatch');
  await assert.rejects(store.read(`sha256:${'0'.repeat(64)}`), (e: ContentError) => e.reason === 'NotFound');
  assert.deepEqual(await store.ingests(), [], 'a mismatched ingest is discarded');
});

test('sparse writes leave holes where the data is zero', async () => {
  const dir = await tmp();
  const file = path.join(dir, 'disk.img');
  const size = 8 * 1024 * 1024;
  const disk = await SparseFile.open(file, size);
  const data = Buffer.concat([Buffer.alloc(4 * 1024 * 1024), randomBytes(1024 * 1024), Buffer.alloc(3 * 1024 * 1024)]);
  const written = await disk.write(0, data, true);
  await disk.sync();
  await disk.close();
  assert.equal(written, 1024 * 1024);
  const s = await stat(file);
  assert.equal(s.size, size);
  assert.ok(s.blocks * 512 <= 1024 * 1024 + 64 * 1024, `allocated ${s.blocks * 512}`);
  assert.deepEqual(await readFile(file), data);
});

test('an imported image is listed, found by name, digest prefix or chunk, and pruned least-recently-used first', async () => {
  const root = await tmp();
  const store = new ImageStore(path.join(root, 'store'));
  await store.init();
  const src = path.join(root, 'src');
  await mkdir(src);
  const config = { version: 1, os: 'linux', arch: 'amd64', cpuCountMin: 1, cpuCount: 1, memorySizeMin: 1, memorySize: 1, macAddress: '52:54:00:00:00:01' };
  await writeFile(path.join(src, 'config.json'), JSON.stringify(config));
  const diskA = Buffer.concat([randomBytes(1024 * 1024), Buffer.alloc(1024 * 1024)]);
  await writeFile(path.join(src, 'a.img'), diskA);
  const a = await importImage({ store, name: 'example.com/vm/a:1', source: { disk: path.join(src, 'a.img'), config: path.join(src, 'config.json') }, chunkSize: 1024 * 1024 });
  await writeFile(path.join(src, 'b.img'), randomBytes(1024 * 1024));
  const b = await importImage({ store, name: 'example.com/vm/b:1', source: { disk: path.join(src, 'b.img'), config: path.join(src, 'config.json') }, chunkSize: 1024 * 1024 });

  assert.equal(a.layout.chunks.length, 2);
  assert.equal(await store.resolve('example.com/vm/a:1'), a.digest);
  assert.equal(await store.resolve(a.digest.slice(7, 19)), a.digest);
  const found = await store.findChunk(a.layout.chunks[1]!.digest);
  assert.deepEqual(found && [found.offset, found.size], [1024 * 1024, 1024 * 1024]);

  await store.acquire(b.digest, 'vm-1');
  const removed = await store.prune(0);
  assert.deepEqual(removed.map((i) => i.digest), [a.digest], 'the image in use stays');
  assert.equal(await store.findChunk(a.layout.chunks[1]!.digest), undefined, 'a removed image is no source of chunks');
  assert.equal((await store.findChunk(b.layout.chunks[0]!.digest))?.file, path.join(store.imageDir(b.digest), 'disk.img'));
  await assert.rejects(store.remove(b.digest), /in use by a VM/);
  await store.release(b.digest, 'vm-1');
  await store.remove(b.digest);
  assert.deepEqual(await store.list(), []);
  assert.deepEqual(await store.refs(), {});
});

test('an image written on an earlier boot is verified before a VM gets it, and removed if it lost data', async () => {
  const root = await tmp();
  const store = new ImageStore(path.join(root, 'store'));
  await store.init();
  const src = path.join(root, 'src');
  await mkdir(src);
  await writeFile(path.join(src, 'config.json'), JSON.stringify({ os: 'linux', arch: 'amd64', cpuCount: 1, memorySize: 1 }));
  await writeFile(path.join(src, 'disk.img'), randomBytes(2 * 1024 * 1024));
  const intact = await importImage({ store, name: 'example.com/vm/ok:1', source: { disk: path.join(src, 'disk.img'), config: path.join(src, 'config.json') }, chunkSize: 1024 * 1024 });
  const damaged = await importImage({ store, name: 'example.com/vm/bad:1', source: { disk: path.join(src, 'disk.img'), config: path.join(src, 'config.json') }, chunkSize: 1024 * 1024 + 4096 });
  // As a pull leaves them: written on a boot that is not this one.
  for (const image of [intact, damaged]) await writeFile(path.join(image.dir, 'state.json'), JSON.stringify({ bootId: 'an-earlier-boot', done: [], touched: [] }));
  const { open } = await import('node:fs/promises');
  const fd = await open(path.join(damaged.dir, 'disk.img'), 'r+');
  await fd.write(Buffer.from('lost in a crash'), 0, 15, 1024 * 1024 + 8192);
  await fd.close();

  await store.acquire(intact.digest, 'vm-1');
  const state = JSON.parse(await readFile(path.join(intact.dir, 'state.json'), 'utf8')) as { bootId: string };
  assert.notEqual(state.bootId, 'an-earlier-boot', 'verified, it now counts as written by this boot');
  await assert.rejects(store.acquire(damaged.digest, 'vm-2'), (e: Error) => e.name === 'ImageCorruptError' && /example\.com\/vm\/bad:1 lost data in a crash .*pull it again/.test(e.message));
  assert.equal(await store.get(damaged.digest), undefined, 'the damaged image is gone');
});
