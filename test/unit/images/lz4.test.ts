// Apple LZ4 codec (src/images/lz4): hand-built vectors from Apple's description of the framing, round
// trips across block boundaries, the writer's output, and every way a stream can be refused.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  AppleLz4Error,
  AppleLz4Parser,
  AppleLz4Writer,
  decodeAppleLz4,
  encodeAppleLz4,
  encodeBlocks,
  type AppleLz4Reason,
} from '../../../src/images/lz4/apple-lz4.ts';
import { decodesToZeros, encodeBlock } from '../../../src/images/lz4/block.ts';
import { rng } from '../helpers/rng.ts';

// --- building streams by hand -------------------------------------------------------------------

const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
};

/** LZ4 length field continuation bytes for a 4-bit field that overflowed (value >= 15). */
function more(n: number): number[] {
  const out: number[] = [];
  let rest = n - 15;
  while (rest >= 255) {
    out.push(255);
    rest -= 255;
  }
  out.push(rest);
  return out;
}

/** One LZ4 sequence: literals, then (unless last) a match of `length` bytes `offset` back. */
function seq(literals: string | Buffer, match?: { offset: number; length: number }): Buffer {
  const lit = Buffer.isBuffer(literals) ? literals : Buffer.from(literals, 'latin1');
  const ml = match ? match.length - 4 : 0;
  const token = (Math.min(lit.length, 15) << 4) | Math.min(ml, 15);
  const parts: number[] = [token, ...(lit.length >= 15 ? more(lit.length) : [])];
  const head = Buffer.from(parts);
  if (!match) return Buffer.concat([head, lit]);
  const tail = Buffer.from([match.offset & 0xff, match.offset >> 8, ...(ml >= 15 ? more(ml) : [])]);
  return Buffer.concat([head, lit, tail]);
}

const bv41 = (decoded: number, block: Buffer) => Buffer.concat([Buffer.from('bv41'), u32(decoded), u32(block.length), block]);
const bv4s = (plain: string | Buffer) => {
  const b = Buffer.isBuffer(plain) ? plain : Buffer.from(plain, 'latin1');
  return Buffer.concat([Buffer.from('bv4-'), u32(b.length), b]);
};
const END = Buffer.from('bv4$');

function rejects(fn: () => unknown, reason: AppleLz4Reason, offset?: number): AppleLz4Error {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof AppleLz4Error, `expected AppleLz4Error(${reason}), got ${String(caught)}`);
  assert.equal(caught.reason, reason, caught.message);
  if (offset !== undefined) assert.equal(caught.offset, offset, caught.message);
  assert.ok(!caught.message.includes('\n'), 'error messages are one line');
  return caught;
}

// --- data -----------------------------------------------------------------------------------------


function randomData(n: number, seed: number): Buffer {
  const r = rng(seed);
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (r() * 256) | 0;
  return b;
}

function textData(n: number, seed: number): Buffer {
  const r = rng(seed);
  const words = ['kubelet', 'virtual', 'machine', 'node', 'pod', 'image', 'layer', 'tart', 'disk', 'the', 'a'];
  let s = '';
  while (s.length < n) s += `${words[(r() * words.length) | 0]}${r() < 0.1 ? '\n' : ' '}`;
  return Buffer.from(s.slice(0, n), 'latin1');
}

function mixedData(n: number, seed: number): Buffer {
  const third = Math.floor(n / 3);
  return Buffer.concat([Buffer.alloc(third), randomData(third, seed), textData(n - 2 * third, seed + 1)]);
}

/** Splits `data` into random-sized pieces and decodes them through one parser. */
function decodeInPieces(data: Buffer, seed: number, maxPiece = 5000): Buffer {
  const r = rng(seed);
  const parser = new AppleLz4Parser();
  const out: Buffer[] = [];
  for (let at = 0; at < data.length; ) {
    const n = 1 + Math.floor(r() * maxPiece);
    out.push(...parser.push(data.subarray(at, at + n)));
    at += n;
  }
  parser.end();
  return Buffer.concat(out);
}

/** Walks an LZ4 block's sequences; returns what a strict decoder (lz4's reference) relies on. */
function walkBlock(block: Buffer): { decoded: number; lastLiterals: number; lastMatchEndDistance: number } {
  let pos = 0;
  let decoded = 0;
  let lastLiterals = 0;
  let lastMatchStart = -1;
  const len = (base: number) => {
    let n = base;
    if (base === 15) {
      for (let b = 255; b === 255; n += b) b = block[pos++]!;
    }
    return n;
  };
  while (pos < block.length) {
    const token = block[pos++]!;
    const lits = len(token >> 4);
    pos += lits;
    decoded += lits;
    lastLiterals = lits;
    if (pos >= block.length) break;
    pos += 2;
    lastMatchStart = decoded;
    decoded += len(token & 15) + 4;
  }
  return { decoded, lastLiterals, lastMatchEndDistance: lastMatchStart < 0 ? Infinity : decoded - lastMatchStart };
}

/** Splits an Apple stream into its frames (assumes it is valid). */
function frames(stream: Buffer): { kind: string; decoded: number; payload: Buffer }[] {
  const out: { kind: string; decoded: number; payload: Buffer }[] = [];
  for (let at = 0; at < stream.length; ) {
    const kind = stream.toString('latin1', at, at + 4);
    if (kind === 'bv4$') break;
    if (kind === 'bv41') {
      const decoded = stream.readUInt32LE(at + 4);
      const enc = stream.readUInt32LE(at + 8);
      out.push({ kind, decoded, payload: stream.subarray(at + 12, at + 12 + enc) });
      at += 12 + enc;
    } else {
      const size = stream.readUInt32LE(at + 4);
      out.push({ kind, decoded: size, payload: stream.subarray(at + 8, at + 8 + size) });
      at += 8 + size;
    }
  }
  return out;
}

// --- hand-built vectors ---------------------------------------------------------------------------

test('a stream of stored (bv4-) blocks decodes to their bytes in order', () => {
  const stream = Buffer.concat([bv4s('hello'), bv4s(''), bv4s(' world'), END]);
  assert.equal(decodeAppleLz4(stream).toString(), 'hello world');
});

test('the end marker alone is an empty stream', () => {
  assert.equal(decodeAppleLz4(END).length, 0);
});

test('a bv41 block built from LZ4 sequences decodes, overlapping match included', () => {
  // "abcd", then 8 bytes copied from 4 back (overlapping), then the 5 final literals LZ4 requires.
  const block = Buffer.concat([seq('abcd', { offset: 4, length: 8 }), seq('efghi')]);
  const stream = Buffer.concat([bv41(17, block), END]);
  assert.equal(decodeAppleLz4(stream).toString(), 'abcdabcdabcdefghi');
});

test('long literal and match lengths use the 255-continuation bytes', () => {
  const lits = Buffer.from('x'.repeat(300));
  const block = Buffer.concat([seq(lits, { offset: 1, length: 1000 }), seq('tail!')]);
  const stream = Buffer.concat([bv41(1305, block), END]);
  assert.equal(decodeAppleLz4(stream).toString(), `${'x'.repeat(1300)}tail!`);
});

test('a bv41 block whose match reaches into the previous block decodes against the window', () => {
  const first = 'The quick brown fox '; // 20 bytes, stored
  // Second block: no literals, copy 9 bytes from 20 back (the start of the first block), then literals.
  const second = Buffer.concat([seq('', { offset: 20, length: 9 }), seq(' jumps over')]);
  const stream = Buffer.concat([bv4s(first), bv41(20, second), END]);
  assert.equal(decodeAppleLz4(stream).toString(), 'The quick brown fox The quick jumps over');
  // The same block without the previous one really does need it.
  rejects(() => decodeAppleLz4(Buffer.concat([bv41(20, second), END])), 'offset-out-of-window', 0);
});

test('matches reach back across several earlier blocks, up to 65535 bytes', () => {
  const a = randomData(40000, 1);
  const b = textData(30000, 2); // the window now spans both blocks (70000 bytes, last 65536 kept)
  const bBlock = Buffer.concat([seq(b.subarray(0, 1000), { offset: 1000, length: 4 }), seq(b.subarray(1004))]);
  const bDecoded = Buffer.concat([b.subarray(0, 1000), b.subarray(0, 4), b.subarray(1004)]);
  // Third block: 16 bytes from 65535 back, i.e. from inside the first block (70000 - 65535 = 4465).
  const c = Buffer.concat([seq('', { offset: 65535, length: 16 }), seq('done.')]);
  const stream = Buffer.concat([bv4s(a), bv41(bDecoded.length, bBlock), bv41(21, c), END]);
  const history = Buffer.concat([a, bDecoded]);
  const at = history.length - 65535;
  assert.deepEqual(decodeAppleLz4(stream), Buffer.concat([history, history.subarray(at, at + 16), Buffer.from('done.')]));
  // One byte further is outside the 64 KiB LZ4 can address at all; offset 0 is never valid.
  const zero = Buffer.concat([seq('', { offset: 0, length: 4 }), seq('done.')]);
  rejects(() => decodeAppleLz4(Buffer.concat([bv4s(a), bv41(9, zero), END])), 'corrupt-block');
});

test('the window slides: after more than 64 KiB of output, old bytes are gone', () => {
  const a = randomData(70000, 3);
  // Offset 65535 from position 70000 is byte 4465; from the history's point of view that is its first byte.
  const c = Buffer.concat([seq('', { offset: 65535, length: 4 }), seq('12345')]);
  const out = decodeAppleLz4(Buffer.concat([bv4s(a), bv41(9, c), END]));
  assert.deepEqual(out.subarray(70000, 70004), a.subarray(4465, 4469));
});

test('headers split across pushes at every byte still decode', () => {
  const block = Buffer.concat([seq('abcd', { offset: 4, length: 8 }), seq('efghi')]);
  const stream = Buffer.concat([bv4s('stored '), bv41(17, block), END]);
  const parser = new AppleLz4Parser();
  const out: Buffer[] = [];
  for (let i = 0; i < stream.length; i++) out.push(...parser.push(stream.subarray(i, i + 1)));
  parser.end();
  assert.equal(Buffer.concat(out).toString(), 'stored abcdabcdabcdefghi');
  assert.equal(parser.bytesIn, stream.length);
  assert.equal(parser.bytesOut, 24);
});

// --- round trips ----------------------------------------------------------------------------------

test('round trips zeros, random and text data of sizes around block boundaries', () => {
  const sizes = [0, 1, 5, 13, 4096, 65535, 65536, 65537, 131072 + 3, 300_000];
  for (const [i, n] of sizes.entries()) {
    for (const data of [Buffer.alloc(n), randomData(n, i), textData(n, i), mixedData(n, i)]) {
      const enc = encodeAppleLz4(data);
      assert.deepEqual(decodeAppleLz4(enc), data, `size ${n}`);
      assert.deepEqual(decodeInPieces(enc, i), data, `size ${n}, in pieces`);
    }
  }
});

test('the incremental writer produces the same stream as encodeAppleLz4, however it is fed', () => {
  const data = mixedData(500_000, 7);
  const r = rng(8);
  const writer = new AppleLz4Writer();
  const out: Buffer[] = [];
  for (let at = 0; at < data.length; ) {
    const n = Math.floor(r() * 150_000);
    out.push(...writer.push(data.subarray(at, at + n)));
    at += n;
  }
  out.push(...writer.end());
  assert.deepEqual(Buffer.concat(out), encodeAppleLz4(data));
  assert.throws(() => writer.push(Buffer.from('x')), /after end/);
});

test('the writer uses 64 KiB blocks, bv41 where LZ4 helps and bv4- where it does not', () => {
  const data = Buffer.concat([Buffer.alloc(65536), randomData(65536, 9), textData(1000, 10)]);
  const f = frames(encodeAppleLz4(data));
  assert.deepEqual(
    f.map((x) => [x.kind, x.decoded]),
    [
      ['bv41', 65536],
      ['bv4-', 65536],
      ['bv41', 1000],
    ],
  );
  assert.deepEqual(encodeAppleLz4(Buffer.alloc(0)), END);
  assert.equal(encodeBlocks(Buffer.alloc(200_000), { blockSize: 100_000 }).length, 2);
  assert.throws(() => new AppleLz4Writer({ blockSize: 0 }), RangeError);
});

test('the writer’s LZ4 blocks keep the end-of-block rules strict decoders rely on', () => {
  // lz4_Block_format.md: the last 5 bytes are literals, the last match starts 12 or more bytes
  // before the end, and the block ends with literals. Apple's decoder is such a decoder.
  for (const [i, data] of [textData(200_000, 11), mixedData(200_000, 12), Buffer.alloc(70_000)].entries()) {
    for (const f of frames(encodeAppleLz4(data)).filter((x) => x.kind === 'bv41')) {
      const w = walkBlock(f.payload);
      assert.equal(w.decoded, f.decoded, `data ${i}`);
      assert.ok(w.lastLiterals >= 5 || f.decoded < 13, `data ${i}: ${w.lastLiterals} final literals`);
      assert.ok(w.lastMatchEndDistance >= 12, `data ${i}: last match starts ${w.lastMatchEndDistance} from the end`);
    }
  }
});

// --- refusals -------------------------------------------------------------------------------------

test('an unknown magic is refused where it stands', () => {
  rejects(() => decodeAppleLz4(Buffer.from('bv42\0\0\0\0')), 'bad-magic', 0);
  const err = rejects(() => decodeAppleLz4(Buffer.concat([bv4s('abc'), Buffer.from([0x1f, 0x8b, 8, 0])])), 'bad-magic', 11);
  assert.match(err.message, /0x1f8b0800 is not bv41, bv4- or bv4\$/);
  // Apple's framing is not the LZ4 frame format (magic 04 22 4d 18).
  rejects(() => decodeAppleLz4(Buffer.from([0x04, 0x22, 0x4d, 0x18, 0x64, 0x40, 0xa7])), 'bad-magic', 0);
});

test('a stream cut short is refused at end(): empty, mid-header, mid-payload, or missing bv4$', () => {
  const block = Buffer.concat([seq('abcd', { offset: 4, length: 8 }), seq('efghi')]);
  const whole = Buffer.concat([bv4s('stored'), bv41(17, block), END]);
  rejects(() => decodeAppleLz4(Buffer.alloc(0)), 'truncated', 0);
  rejects(() => decodeAppleLz4(whole.subarray(0, 2)), 'truncated', 0);
  rejects(() => decodeAppleLz4(whole.subarray(0, 14 + 7)), 'truncated', 14); // inside the bv41 header
  rejects(() => decodeAppleLz4(whole.subarray(0, 14 + 13)), 'truncated', 14); // inside its payload
  const err = rejects(() => decodeAppleLz4(whole.subarray(0, whole.length - 4)), 'truncated', whole.length - 4);
  assert.match(err.message, /without the bv4\$ end marker/);
  // Every prefix of a valid stream, and only the whole stream, is accepted.
  for (let n = 0; n < whole.length; n++) rejects(() => decodeAppleLz4(whole.subarray(0, n)), 'truncated');
});

test('an LZ4 block that decodes to another size than its header says is refused', () => {
  const block = Buffer.concat([seq('abcd', { offset: 4, length: 8 }), seq('efghi')]); // 17 bytes
  rejects(() => decodeAppleLz4(Buffer.concat([bv41(20, block), END])), 'size-mismatch', 0);
  rejects(() => decodeAppleLz4(Buffer.concat([bv41(16, block), END])), 'size-mismatch', 0);
});

test('a match before the start of the window is refused, not read from stale memory', () => {
  const block = Buffer.concat([seq('ab', { offset: 3, length: 4 }), seq('12345')]);
  rejects(() => decodeAppleLz4(Buffer.concat([bv41(11, block), END])), 'offset-out-of-window', 0);
  const later = Buffer.concat([seq('', { offset: 6, length: 4 }), seq('12345')]);
  rejects(() => decodeAppleLz4(Buffer.concat([bv4s('abcde'), bv41(9, later), END])), 'offset-out-of-window', 13);
});

test('a header declaring more than the block limit is refused before its payload is read', () => {
  const parser = new AppleLz4Parser();
  const err = rejects(
    () => parser.push(Buffer.concat([Buffer.from('bv41'), u32(4 * 1024 * 1024 + 1), u32(100)])),
    'block-too-large',
    0,
  );
  assert.match(err.message, /over the 4194304-byte limit/);
  rejects(() => decodeAppleLz4(Buffer.concat([Buffer.from('bv41'), u32(0xffffffff), u32(0xffffffff)])), 'block-too-large');
  rejects(() => new AppleLz4Parser().push(Buffer.concat([Buffer.from('bv4-'), u32(0xffffffff)])), 'block-too-large');
  // The limit is configurable; 64 KiB (what Apple writes) passes a 64 KiB limit.
  const stream = encodeAppleLz4(textData(65536 * 2, 13));
  assert.equal(decodeAppleLz4(stream, { maxBlockSize: 65536 }).length, 65536 * 2);
  rejects(() => decodeAppleLz4(stream, { maxBlockSize: 65535 }), 'block-too-large', 0);
});

test('an encoded size beyond LZ4’s worst case for its decoded size is refused', () => {
  rejects(() => decodeAppleLz4(Buffer.concat([Buffer.from('bv41'), u32(10), u32(100)])), 'corrupt-block', 0);
});

test('a malformed LZ4 block is refused as corrupt', () => {
  rejects(() => decodeAppleLz4(Buffer.concat([bv41(3, Buffer.from([0x30, 0x61])), END])), 'corrupt-block', 0);
  rejects(() => decodeAppleLz4(Buffer.concat([bv41(3, Buffer.alloc(0)), END])), 'corrupt-block', 0);
});

test('bytes after bv4$ are refused, in the same push or a later one', () => {
  rejects(() => decodeAppleLz4(Buffer.concat([bv4s('ok'), END, Buffer.from('x')])), 'trailing-data', 14);
  const parser = new AppleLz4Parser();
  assert.equal(Buffer.concat(parser.push(Buffer.concat([bv4s('ok'), END]))).toString(), 'ok');
  assert.ok(parser.ended);
  assert.deepEqual(parser.push(Buffer.alloc(0)), []);
  rejects(() => parser.push(END), 'trailing-data', 14);
});

test('after a refusal the parser stays refused', () => {
  const parser = new AppleLz4Parser();
  const first = rejects(() => parser.push(Buffer.from('nope')), 'bad-magic');
  assert.throws(() => parser.push(END), (err) => err === first);
  assert.throws(() => parser.end(), (err) => err === first);
});

test('blocks() yields block by block, and refuses to interleave with another push', () => {
  const stream = encodeAppleLz4(textData(65536 * 3, 14));
  const parser = new AppleLz4Parser();
  const gen = parser.blocks(stream);
  assert.equal(gen.next().value?.length, 65536);
  assert.throws(() => parser.push(END), /finish the previous blocks\(\) generator/);
  assert.equal([...gen].length, 2);
  parser.end();
});

// --- all-zero blocks and lent output ---------------------------------------------------------------

test('an all-zero LZ4 block is recognised from its sequences, and nothing else is', () => {
  const zeros = (n: number) => Buffer.alloc(n);
  // What an encoder writes for 64 KiB of zeros: one zero literal, a long overlapping match, zero literals.
  const block = Buffer.concat([seq(zeros(1), { offset: 1, length: 65530 }), seq(zeros(5))]);
  assert.equal(decodesToZeros(block, 65536, 0), true);
  assert.equal(decodesToZeros(encodeBlock(zeros(65536)), 65536, 0), true, "lz4-napi's own encoding of zeros");
  assert.equal(decodesToZeros(block, 65535, 0), false, 'another size than the header says');
  assert.equal(decodesToZeros(Buffer.concat([seq(zeros(1), { offset: 1, length: 65530 }), seq(Buffer.from([0, 0, 1, 0, 0]))]), 65536, 0), false, 'a non-zero literal');
  assert.equal(decodesToZeros(encodeBlock(textData(65536, 9)), 65536, 0), false);
  // A match that reaches into the history: zeros only where the history is known to be zeros.
  const fromHistory = Buffer.concat([seq('', { offset: 65536 - 1, length: 65531 }), seq(zeros(5))]);
  assert.equal(decodesToZeros(fromHistory, 65536, 0), false);
  assert.equal(decodesToZeros(fromHistory, 65536, 65535), true);
  // Malformed: cut in a length, in a literal run or in an offset; ends with a match; offset 0; empty.
  for (const cut of [1, 3, block.length - 3]) assert.equal(decodesToZeros(block.subarray(0, cut), 65536, 0), false, `cut at ${cut}`);
  assert.equal(decodesToZeros(seq(zeros(1), { offset: 1, length: 65535 }), 65536, 0), false, 'ends with a match');
  assert.equal(decodesToZeros(Buffer.concat([seq(zeros(1), { offset: 0, length: 65530 }), seq(zeros(5))]), 65536, 0), false);
  assert.equal(decodesToZeros(Buffer.alloc(0), 0, 0), false);
});

test('a zero-looking block whose match reads non-zero history decodes to that history', () => {
  const first = randomData(65536, 21);
  // Zero literal, then a match from the previous block's bytes: not zeros.
  const second = Buffer.concat([seq(Buffer.alloc(1), { offset: 65535, length: 100 }), seq(Buffer.alloc(5))]);
  for (const lend of [false, true]) {
    const parser = new AppleLz4Parser({ lend });
    const out = Buffer.concat(parser.push(Buffer.concat([bv4s(first), bv41(106, second), END])));
    assert.deepEqual(out.subarray(65536), Buffer.concat([Buffer.alloc(1), first.subarray(2, 102), Buffer.alloc(5)]));
  }
  // After a zero block, a match into it is zeros, and is recognised as such (lent: the shared zeros).
  const zeroBlock = encodeBlock(Buffer.alloc(65536));
  const third = Buffer.concat([seq('', { offset: 65535, length: 1000 }), seq(Buffer.alloc(5))]);
  const parser = new AppleLz4Parser({ lend: true });
  const blocks = parser.push(Buffer.concat([bv41(65536, zeroBlock), bv41(1005, third), END]));
  assert.deepEqual(blocks.map((b) => b.length), [65536, 1005]);
  assert.ok(blocks.every((b) => b.every((x) => x === 0)));
  assert.equal(blocks[0]!.buffer, blocks[1]!.buffer, 'both lent from the one zero buffer');
});

test('lent output: a stored block is a view of the pushed bytes, and decodes the same as owned output', () => {
  const data = mixedData(300_000, 31);
  const stream = encodeAppleLz4(data);
  const lent = new AppleLz4Parser({ lend: true });
  const pieces: Buffer[] = [];
  // Whole blocks in one push are lent; blocks split across pushes are assembled (and owned).
  for (const piece of [stream.subarray(0, 100_000), stream.subarray(100_000)]) {
    for (const b of lent.blocks(piece)) pieces.push(Buffer.from(b)); // copied, as a lender's caller must
  }
  lent.end();
  assert.deepEqual(Buffer.concat(pieces), data);
  // The stored (random) blocks are views of the stream, not copies.
  const input = Buffer.from(encodeAppleLz4(randomData(70_000, 32)));
  const [block] = new AppleLz4Parser({ lend: true }).push(input);
  assert.equal(block!.buffer, input.buffer);
  const [owned] = new AppleLz4Parser().push(input);
  assert.notEqual(owned!.buffer, input.buffer);
  input.fill(7);
  assert.notEqual(owned![0], 7, 'owned output does not change with the input');
});
