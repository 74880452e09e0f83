// AppleLz4DecodeStream (in-thread Transform): output and sha256, Tart's size/digest annotations, errors
// through pipeline(), and backpressure inside a single highly compressed chunk.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { AppleLz4Error, encodeAppleLz4, encodeFrame, END_MARKER } from '../../../src/images/lz4/apple-lz4.ts';
import { AppleLz4DecodeStream } from '../../../src/images/lz4/decode-stream.ts';
import { DecodedMismatchError } from '../../../src/images/lz4/digest.ts';

function mixed(n: number): Buffer {
  const b = Buffer.alloc(n);
  let x = 12345;
  for (let i = Math.floor(n / 3); i < Math.floor((2 * n) / 3); i++) b[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
  for (let i = Math.floor((2 * n) / 3); i < n; i++) b[i] = 97 + ((i >> 3) % 26);
  return b;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function pieces(data: Buffer, size: number): Readable {
  return Readable.from(
    (function* () {
      for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size);
    })(),
  );
}

async function collect(source: Readable, stream: AppleLz4DecodeStream): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(source, stream, new Writable({ write: (c: Buffer, _e, cb) => (out.push(c), cb()) }));
  return Buffer.concat(out);
}

test('the decode stream outputs the decoded bytes and their sha256 and size', async () => {
  const data = mixed(700_000);
  const stream = new AppleLz4DecodeStream();
  assert.deepEqual(await collect(pieces(encodeAppleLz4(data), 10_000), stream), data);
  assert.deepEqual(stream.result, { sha256: sha256(data), digest: `sha256:${sha256(data)}`, size: data.length });
});

test('output matching Tart’s uncompressed-size and -content-digest annotations passes', async () => {
  const data = mixed(200_000);
  const stream = new AppleLz4DecodeStream({ expect: { size: data.length, digest: `sha256:${sha256(data)}` } });
  assert.equal((await collect(pieces(encodeAppleLz4(data), 4096), stream)).length, data.length);
});

test('output that does not match the annotations fails the stream', async () => {
  const data = mixed(200_000);
  const enc = encodeAppleLz4(data);
  const wrongDigest = new AppleLz4DecodeStream({ expect: { digest: sha256(Buffer.from('other')) } });
  await assert.rejects(collect(pieces(enc, 4096), wrongDigest), (err) => {
    assert.ok(err instanceof DecodedMismatchError && err.field === 'digest', String(err));
    assert.match(err.message, /decoded digest is sha256:[0-9a-f]{64} but the layer's annotation says sha256:/);
    return true;
  });
  // Too small a size fails as soon as the output passes it, not at the end.
  let fed = 0;
  const counted = pieces(enc, 4096).on('data', (c: Buffer) => (fed += c.length));
  await assert.rejects(collect(counted, new AppleLz4DecodeStream({ expect: { size: 70_000 } })), DecodedMismatchError);
  assert.ok(fed < enc.length, `read ${fed} of ${enc.length} compressed bytes before failing`);
  await assert.rejects(
    collect(pieces(enc, 4096), new AppleLz4DecodeStream({ expect: { size: data.length + 1 } })),
    /decoded size is 200000 but the layer's annotation says 200001/,
  );
});

test('a corrupt or truncated stream fails the pipeline with AppleLz4Error', async () => {
  const enc = encodeAppleLz4(mixed(200_000));
  await assert.rejects(collect(pieces(enc.subarray(0, enc.length - 4), 4096), new AppleLz4DecodeStream()), (err) => {
    assert.ok(err instanceof AppleLz4Error && err.reason === 'truncated');
    return true;
  });
  const bad = Buffer.from(enc);
  bad.write('bv4?', 0, 'latin1');
  await assert.rejects(collect(pieces(bad, 4096), new AppleLz4DecodeStream()), (err) => {
    assert.ok(err instanceof AppleLz4Error && err.reason === 'bad-magic' && err.offset === 0);
    return true;
  });
});

test('backpressure holds inside one chunk that decodes to far more than the buffer', async () => {
  // 400 blocks of zeros: about 100 KiB compressed, one chunk, 25 MiB decoded.
  const frame = encodeFrame(Buffer.alloc(65536));
  const enc = Buffer.concat([...Array<Buffer>(400).fill(frame), END_MARKER]);
  const stream = new AppleLz4DecodeStream({ readableHighWaterMark: 256 * 1024 });
  stream.end(enc);
  await sleep(50);
  // Nobody reads: the stream stopped after about its high-water mark, not 25 MiB.
  assert.ok(stream.readableLength <= 256 * 1024 + 65536, `buffered ${stream.readableLength}`);
  let total = 0;
  for await (const chunk of stream) total += (chunk as Buffer).length;
  assert.equal(total, 400 * 65536);
  assert.equal(stream.result?.size, 400 * 65536);
});
