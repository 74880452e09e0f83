// RunWriter (the gathering of decoded bytes into runs without zero windows) against a recording sink, and
// DiskSink (O_DIRECT where it can, buffered otherwise) against a real file.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { alignedArena, DiskSink } from '../../../src/images/store/direct-sink.ts';
import { RunWriter, type RunSink } from '../../../src/images/store/run-writer.ts';
import { ZERO_RUN } from '../../../src/images/store/sparse-file.ts';

const W = ZERO_RUN;

class Recorder implements RunSink {
  writes: Array<{ position: number; data: Buffer }> = [];
  constructor(private readonly stageBytes: number) {}
  stage(): Buffer {
    return Buffer.alloc(this.stageBytes);
  }
  write(data: Buffer, position: number): void {
    this.writes.push({ position, data: Buffer.from(data) }); // the stage is reused: keep a copy
  }
  /** The image the writes make over a zero-filled file of `size` bytes starting at `base`. */
  image(base: number, size: number): Buffer {
    const out = Buffer.alloc(size);
    for (const w of this.writes) w.data.copy(out, w.position - base);
    return out;
  }
}

/** Windows of data: 'z' all zeros, 'd' random, 'e' zeros but for the last byte. */
function disk(pattern: string, tail = 0): Buffer {
  const parts = [...pattern].map((c) => {
    if (c === 'z') return Buffer.alloc(W);
    if (c === 'e') return Buffer.concat([Buffer.alloc(W - 1), Buffer.from([7])]);
    return randomBytes(W);
  });
  return Buffer.concat([...parts, tail > 0 ? randomBytes(tail) : Buffer.alloc(0)]);
}

/** Feeds `data` in pieces of the given sizes, cycled. */
function feed(writer: RunWriter, data: Buffer, sizes: number[]): void {
  for (let at = 0, i = 0; at < data.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, data.length - at);
    writer.push(data.subarray(at, at + n));
    at += n;
  }
  writer.end();
}

test('runs of non-zero windows become one write each, zero windows are holes, whatever the input pieces', () => {
  const data = disk('ddzdddezzdddddddddddddddddzd', 1000);
  const base = 32 * 1024 * 1024;
  for (const sizes of [[W], [4 * W], [1], [777, 65_536, 100_000], [data.length]]) {
    const rec = new Recorder(4 * W);
    const writer = new RunWriter(rec, base, true);
    feed(writer, data, sizes);
    assert.deepEqual(rec.image(base, data.length), data, `pieces ${sizes.join(',')}: the bytes on disk`);
    assert.equal(writer.pushed, data.length);
    assert.equal(writer.written, rec.writes.reduce((n, w) => n + w.data.length, 0));
    // 4 zero windows skipped; everything else written, in runs no longer than the stage.
    assert.equal(writer.written, data.length - 4 * W, `pieces ${sizes.join(',')}: bytes written`);
    for (const w of rec.writes) {
      assert.ok(w.data.length <= 4 * W, 'a write is at most the stage');
      assert.equal((w.position - base) % W, 0, 'writes start on a window');
      for (let at = 0; at + W <= w.data.length; at += W) {
        assert.ok(w.data.subarray(at, at + W).some((b) => b !== 0), 'no zero window is written');
      }
    }
    // dd | z | ddde | zz | 17 × d (4 + 4 + 4 + 4 + 1) | z | d+tail
    assert.deepEqual(rec.writes.map((w) => (w.position - base) / W), [0, 3, 9, 13, 17, 21, 25, 27]);
  }
});

test('without sparse every byte is written, zeros included, in whole-stage runs', () => {
  const data = disk('zzzzdzzzzz', 10);
  const rec = new Recorder(4 * W);
  const writer = new RunWriter(rec, 0, false);
  feed(writer, data, [5000]);
  assert.equal(writer.written, data.length);
  assert.deepEqual(rec.writes.map((w) => [w.position, w.data.length]), [[0, 4 * W], [4 * W, 4 * W], [8 * W, 2 * W + 10]]);
  assert.deepEqual(rec.image(0, data.length), data);
});

test('a last, partial window of zeros is not written; a stage that is not whole windows is refused', () => {
  const rec = new Recorder(2 * W);
  const writer = new RunWriter(rec, 0, true);
  feed(writer, Buffer.concat([disk('d'), Buffer.alloc(300)]), [W + 300]);
  assert.deepEqual(rec.writes.map((w) => [w.position, w.data.length]), [[0, W]]);
  assert.throws(() => new RunWriter(new Recorder(W + 1), 0, true).push(Buffer.alloc(10)), /whole number of 65536-byte windows/);
});

test('an aligned arena starts on a page, as O_DIRECT needs', () => {
  // Node tells no addresses, but a direct write from a misaligned buffer fails: the test below checks
  // that; here, what alignedArena promises of its size and kind.
  const arena = alignedArena(1024 * 1024);
  assert.ok(arena.length >= 1024 * 1024);
  assert.equal(arena.byteOffset, 0);
});

test('the disk sink writes runs at any position and length, direct or buffered, while it fills the next stage, and they read back', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlet-sink-'));
  try {
    for (const direct of [true, false]) {
      const file = path.join(dir, `disk-${direct}`);
      await writeFile(file, '');
      await truncate(file, 64 * W);
      const arena = alignedArena(3 * 8 * W);
      const stages = [0, 1, 2].map((i) => arena.subarray(i * 8 * W, (i + 1) * 8 * W));
      const sink = DiskSink.open(file, stages, { direct });
      if (!direct) assert.equal(sink.isDirect, false);
      const directAtFirst = sink.isDirect; // true on ext4, xfs, btrfs; false on tmpfs
      const want = Buffer.alloc(64 * W);
      const put = async (position: number, length: number): Promise<void> => {
        await sink.available(1);
        const data = randomBytes(length);
        const stage = sink.stage();
        data.copy(stage);
        sink.write(stage.subarray(0, length), position);
        data.copy(want, position);
      };
      await put(0, 8 * W); // aligned, whole
      await put(16 * W, 3 * W + 123); // aligned start, unaligned tail
      await put(24 * W + 512, 2 * W); // unaligned position
      await put(40 * W, 100); // shorter than a block
      for (let i = 0; i < 6; i++) await put((44 + 3 * i) * W, 2 * W); // more writes than stages: they are reused
      await sink.drain();
      assert.equal(sink.pending, 0);
      assert.equal(sink.freeStages, 3, 'every stage back once written');
      // A direct write the kernel refused (EINVAL: misaligned memory) would have turned direct I/O off.
      assert.equal(sink.isDirect, directAtFirst, `direct=${direct}: no direct write was refused`);
      await sink.close();
      assert.deepEqual(await readFile(file), want, `direct=${direct}: the file holds what was written`);
      const { blocks } = await stat(file);
      assert.ok(blocks * 512 < 40 * W, `direct=${direct}: the file stays sparse (${blocks * 512} bytes allocated)`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a write that fails (a full disk: /dev/full) is the error drain() throws, and the stage is free again', { skip: process.platform !== 'linux' && 'needs /dev/full' }, async () => {
  const sink = DiskSink.open('/dev/full', [alignedArena(W)]);
  const stage = sink.stage();
  stage.fill(1);
  sink.write(stage, 0);
  await assert.rejects(sink.drain(), (err: NodeJS.ErrnoException) => err.code === 'ENOSPC');
  assert.equal(sink.freeStages, 1);
  await sink.close();
});
