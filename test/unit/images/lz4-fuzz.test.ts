// Fuzzing the Apple LZ4 parser: mutated, truncated and random streams must either decode or be refused
// with AppleLz4Error — never hang, crash or allocate more than the stream could describe. Seeded, so a
// failure reproduces; bounded in iterations and time.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AppleLz4Error, AppleLz4Parser, encodeAppleLz4 } from '../../../src/images/lz4/apple-lz4.ts';
import { decodeBlock, decodesToZeros } from '../../../src/images/lz4/block.ts';
import { rng } from '../helpers/rng.ts';

const TIME_BUDGET_MS = 4000;
const MAX_BLOCK = 256 * 1024;


function sample(r: () => number): Buffer {
  const n = Math.floor(r() * 40_000);
  const kind = Math.floor(r() * 3);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) {
    if (kind === 0) b[i] = r() < 0.02 ? (r() * 256) | 0 : 0;
    else if (kind === 1) b[i] = (r() * 256) | 0;
    else b[i] = 97 + ((Math.floor(i / 7) * 31 + (r() < 0.05 ? 1 : 0)) % 26);
  }
  return b;
}

/** One way of damaging a valid stream. */
function mutate(stream: Buffer, r: () => number): Buffer {
  const b = Buffer.from(stream);
  const at = () => Math.floor(r() * b.length);
  switch (Math.floor(r() * 6)) {
    case 0: // flip a few bits
      for (let i = 0; i < 1 + r() * 4; i++) b[at()]! ^= 1 << Math.floor(r() * 8);
      return b;
    case 1: // overwrite a header-ish region with random bytes
      for (let i = at(), end = i + 12; i < end && i < b.length; i++) b[i] = (r() * 256) | 0;
      return b;
    case 2: // truncate
      return b.subarray(0, at());
    case 3: // drop a slice from the middle
      return Buffer.concat([b.subarray(0, at()), b.subarray(at())]);
    case 4: // duplicate a slice
      return Buffer.concat([b, b.subarray(at(), at())]);
    default: // set a size field to something large
      b.writeUInt32LE(Math.floor(r() * 0xffffffff), Math.min(at(), Math.max(0, b.length - 4)));
      return b;
  }
}

/** Decodes in random pieces; returns the output size, or the AppleLz4Error. Anything else fails. */
function attempt(stream: Buffer, r: () => number): number | AppleLz4Error {
  const parser = new AppleLz4Parser({ maxBlockSize: MAX_BLOCK });
  let produced = 0;
  try {
    for (let at = 0; at < stream.length; ) {
      const n = 1 + Math.floor(r() * 70_000);
      for (const out of parser.push(stream.subarray(at, at + n))) produced += out.length;
      at += n;
    }
    parser.end();
  } catch (err) {
    if (err instanceof AppleLz4Error) return err;
    throw err;
  }
  return produced;
}

/** Nothing decoded may exceed what the stream could describe: LZ4 expands at most ~255x. */
function assertBounded(stream: Buffer, produced: number | AppleLz4Error): void {
  if (typeof produced === 'number') assert.ok(produced <= 256 * stream.length + 16, `${produced} bytes from ${stream.length}`);
}

test('mutated and truncated valid streams decode or fail with AppleLz4Error', () => {
  const r = rng(20240601);
  const started = Date.now();
  let runs = 0;
  let refused = 0;
  const reasons = new Map<string, number>();
  while (runs < 3000 && Date.now() - started < TIME_BUDGET_MS) {
    const valid = encodeAppleLz4(sample(r));
    for (let k = 0; k < 5; k++) {
      const damaged = mutate(valid, r);
      const result = attempt(damaged, r);
      assertBounded(damaged, result);
      if (result instanceof AppleLz4Error) {
        refused++;
        reasons.set(result.reason, (reasons.get(result.reason) ?? 0) + 1);
      }
      runs++;
    }
  }
  assert.ok(runs >= 100, `only ${runs} runs in the time budget`);
  assert.ok(refused > runs / 4, `only ${refused} of ${runs} damaged streams were refused`);
  // The damage reaches every layer: framing, limits and the LZ4 block decoder.
  for (const reason of ['bad-magic', 'truncated', 'block-too-large', 'corrupt-block', 'offset-out-of-window', 'trailing-data']) {
    assert.ok(reasons.has(reason), `no run was refused as ${reason}: ${JSON.stringify([...reasons])}`);
  }
});

test('random bytes, with and without a valid magic in front, decode or fail with AppleLz4Error', () => {
  const r = rng(7);
  const started = Date.now();
  const magics = ['', 'bv41', 'bv4-', 'bv4$'];
  for (let i = 0; i < 3000 && Date.now() - started < TIME_BUDGET_MS; i++) {
    const body = Buffer.alloc(Math.floor(r() * 400));
    for (let j = 0; j < body.length; j++) body[j] = (r() * 256) | 0;
    // Small sizes after the magic make the parser reach the LZ4 block decoder, not just the limits.
    const sizes = Buffer.alloc(8);
    sizes.writeUInt32LE(Math.floor(r() * 600), 0);
    sizes.writeUInt32LE(Math.floor(r() * 400), 4);
    const stream = Buffer.concat([Buffer.from(magics[i % 4]!), r() < 0.7 ? sizes : Buffer.alloc(0), body]);
    assertBounded(stream, attempt(stream, r));
  }
});

test('every prefix of a multi-block stream is refused as truncated, never decoded or crashed', () => {
  const r = rng(99);
  const stream = encodeAppleLz4(sample(r).subarray(0, 3000));
  for (let n = 0; n < stream.length; n++) {
    const result = attempt(stream.subarray(0, n), r);
    assert.ok(result instanceof AppleLz4Error && result.reason === 'truncated', `prefix ${n}: ${String(result)}`);
  }
});

test('a block seen as all zeros without decoding decodes to zeros (random, mostly-zero blocks)', () => {
  const r = rng(4242);
  const started = Date.now();
  let zeros = 0;
  for (let i = 0; i < 20_000 && Date.now() - started < TIME_BUDGET_MS; i++) {
    const history = Math.floor(r() * 3) * 500; // zero bytes before the block
    const parts: number[] = [];
    let out = 0;
    const len = (n: number): number[] => (n < 15 ? [] : [...new Array<number>(Math.floor((n - 15) / 255)).fill(255), (n - 15) % 255]);
    for (let s = 0, n = 1 + Math.floor(r() * 4); s < n; s++) {
      const lit = Math.floor(r() * 20);
      const last = s === n - 1 && r() < 0.9;
      const match = 4 + Math.floor(r() * 300);
      const token = (Math.min(lit, 15) << 4) | (last ? 0 : Math.min(match - 4, 15));
      parts.push(token, ...len(lit));
      for (let k = 0; k < lit; k++) parts.push(r() < 0.03 ? 1 + Math.floor(r() * 255) : 0);
      out += lit;
      if (last) break;
      const offset = Math.floor(r() * (out + history + 3));
      parts.push(offset & 0xff, offset >> 8, ...(match - 4 >= 15 ? len(match - 4) : []));
      out += match;
    }
    const block = Buffer.from(parts);
    if (r() < 0.1) block[Math.floor(r() * block.length)]! ^= 1 << Math.floor(r() * 8);
    const size = out + (r() < 0.05 ? 1 : 0);
    if (!decodesToZeros(block, size, history)) continue;
    zeros++;
    const framed = Buffer.concat([Buffer.alloc(4), block]);
    framed.writeUInt32LE(size, 0);
    const decoded = decodeBlock(framed, Buffer.alloc(history), size, 0);
    assert.ok(decoded.every((b) => b === 0), `block ${block.toString('hex')} decoded to non-zero bytes`);
  }
  assert.ok(zeros > 100, `only ${zeros} blocks were seen as zeros`);
});
