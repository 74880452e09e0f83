// The agent protocol's frame codec with bytes alone: frames survive any split of the byte stream, a
// reader finds its way to a HELLO through garbage and stale half frames, and garbage never crashes the
// parser or makes it hold more than one frame's bytes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  encodeFrame, encodeHello, FrameParser, FrameType, HEADER_BYTES, MAGIC, MAX_PAYLOAD, type Frame,
} from '../../../src/agent/protocol/frames.ts';
import { rng } from '../helpers/rng.ts';

function parseAll(chunks: Buffer[]): { frames: Frame[]; errors: string[]; maxBuffered: number } {
  const frames: Frame[] = [];
  const errors: string[] = [];
  let maxBuffered = 0;
  const parser = new FrameParser({ frame: (f) => frames.push({ ...f, payload: Buffer.from(f.payload) }), error: (e) => errors.push(e.message) });
  for (const c of chunks) {
    parser.push(c);
    maxBuffered = Math.max(maxBuffered, parser.buffered);
  }
  return { frames, errors, maxBuffered };
}

function splitRandomly(bytes: Buffer, random: () => number, maxPiece: number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < bytes.length; ) {
    const n = 1 + Math.floor(random() * maxPiece);
    out.push(bytes.subarray(at, at + n));
    at += n;
  }
  return out;
}

function randomBytes(random: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(random() * 256);
  return b;
}

test('frames come out as they went in, however the byte stream is split', () => {
  const random = rng(1);
  const sent: Frame[] = [{ type: FrameType.Hello, flags: 0, stream: 0, payload: Buffer.from('{"magic":"vmlet"}') }];
  for (let i = 0; i < 300; i++) {
    const size = [0, 1, 100, 4096, MAX_PAYLOAD][Math.floor(random() * 5)]!;
    sent.push({ type: FrameType.Data, flags: Math.floor(random() * 3), stream: Math.floor(random() * 2 ** 32), payload: randomBytes(random, size) });
  }
  const bytes = Buffer.concat([MAGIC, ...sent.map((f) => encodeFrame(f.type, f.stream, f.payload, f.flags))]);
  for (const maxPiece of [1, 7, 13, 4096, 70_000]) {
    const { frames, errors } = parseAll(splitRandomly(bytes, random, maxPiece));
    assert.deepEqual(errors, []);
    assert.equal(frames.length, sent.length, `pieces of up to ${maxPiece} bytes`);
    frames.forEach((f, i) => assert.deepEqual(f, sent[i]));
  }
});

test('before a HELLO everything is skipped: garbage, stale half frames, frames of an earlier session', () => {
  const stale = encodeFrame(FrameType.Data, 5, Buffer.alloc(5000, 1), 1).subarray(0, 3000);
  const hello = encodeHello({ magic: 'vmlet', role: 'host' });
  const after = encodeFrame(FrameType.Request, 1, Buffer.from('{"op":"ping"}'));
  const bytes = Buffer.concat([Buffer.from('garbage'), stale, encodeFrame(FrameType.Request, 9, Buffer.from('{"op":"old"}')), MAGIC.subarray(0, 5), hello, after]);
  for (const maxPiece of [1, 3, 100, 100_000]) {
    const { frames, errors } = parseAll(splitRandomly(bytes, rng(maxPiece), maxPiece));
    assert.deepEqual(errors, []);
    assert.deepEqual(frames.map((f) => [f.type, f.stream, f.payload.toString()]), [
      [FrameType.Hello, 0, '{"magic":"vmlet","role":"host"}'],
      [FrameType.Request, 1, '{"op":"ping"}'],
    ]);
  }
});

test('a HELLO in the middle of a session (a peer starting over) is read as a HELLO', () => {
  const bytes = Buffer.concat([
    encodeHello({ n: 1 }), encodeFrame(FrameType.Request, 1, Buffer.from('a')), encodeHello({ n: 2 }), encodeFrame(FrameType.Request, 2, Buffer.from('b')),
  ]);
  const { frames, errors } = parseAll([bytes]);
  assert.deepEqual(errors, []);
  assert.deepEqual(frames.map((f) => f.type), [FrameType.Hello, FrameType.Request, FrameType.Hello, FrameType.Request]);
});

test('a stale half frame that swallows the start of a new session ends in an error, and the next HELLO is found', () => {
  // The previous host's frame header promised 1000 bytes; only 10 came. The new host's zero flush
  // completes it (a DATA frame for a stream nobody knows any more), the rest of the zeros are no frame
  // (an error, back to scanning), and its HELLO follows.
  const half = Buffer.concat([MAGIC, encodeFrame(FrameType.Hello, 0, Buffer.from('{}')), encodeFrame(FrameType.Data, 3, Buffer.alloc(1000), 1).subarray(0, HEADER_BYTES + 10)]);
  const bytes = Buffer.concat([half, Buffer.alloc(MAX_PAYLOAD + 32), encodeHello({ n: 2 }), encodeFrame(FrameType.Request, 7, Buffer.from('x'))]);
  const { frames, errors } = parseAll(splitRandomly(bytes, rng(3), 5000));
  assert.equal(errors.length, 1);
  assert.match(errors[0]!, /unknown frame type 0/);
  assert.deepEqual(frames.map((f) => [f.type, f.payload.toString()]), [
    [FrameType.Hello, '{}'], [FrameType.Data, '\0'.repeat(1000)], [FrameType.Hello, '{"n":2}'], [FrameType.Request, 'x'],
  ]);
});

test('random garbage never throws, errors are clean, and buffering stays within one frame', () => {
  const random = rng(7);
  const limit = MAGIC.length + HEADER_BYTES + MAX_PAYLOAD;
  for (let round = 0; round < 200; round++) {
    // Garbage with real MAGICs and headers sprinkled in, so the parser gets past scanning too.
    const parts: Buffer[] = [];
    for (let i = 0; i < 20; i++) {
      const pick = random();
      if (pick < 0.2) parts.push(MAGIC);
      else if (pick < 0.3) parts.push(encodeHello({ r: round }));
      else if (pick < 0.5) parts.push(encodeFrame(FrameType.Data, i, randomBytes(random, Math.floor(random() * 2000))));
      else parts.push(randomBytes(random, Math.floor(random() * 3000)));
    }
    const { errors, maxBuffered } = parseAll(splitRandomly(Buffer.concat(parts), random, 2048));
    assert.ok(maxBuffered <= limit, `held ${maxBuffered} bytes, more than one frame (${limit})`);
    for (const e of errors) assert.match(e, /^(unknown frame type \d+|reserved header bits set \(0x[0-9a-f]+\)|frame payload length \d+ is over \d+)$/);
  }
});

test('a header claiming more than the largest payload is an error, not a wait for 4 GiB', () => {
  const bad = Buffer.alloc(HEADER_BYTES);
  bad.writeUInt8(FrameType.Data, 0);
  bad.writeUInt32BE(0xffffffff, 8);
  const { errors, maxBuffered } = parseAll([encodeHello({}), bad, Buffer.alloc(100_000, 0x41)]);
  assert.deepEqual(errors, [`frame payload length ${0xffffffff} is over ${MAX_PAYLOAD}`]);
  assert.ok(maxBuffered < MAGIC.length);
});

test('encodeFrame refuses a payload over the maximum', () => {
  assert.throws(() => encodeFrame(FrameType.Data, 1, Buffer.alloc(MAX_PAYLOAD + 1)), /over 65536/);
});
