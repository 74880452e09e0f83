// The SPDY/3.1 pure parts: frame parser and encoders, the SPDY/3 dictionary, header blocks and their
// shared zlib contexts. Byte fixtures are frames as moby/spdystream v0.5.1 writes them (printed by
// `tools/spdy-client -fixture`), i.e. what the API server sends a kubelet.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { constants as zlibConstants, inflateSync } from 'node:zlib';
import { SPDY3_DICTIONARY } from '../../../src/kubelet/spdy/dictionary.ts';
import {
  GoAwayStatus,
  RstStatus,
  SettingId,
  SpdyFrameParser,
  encodeData,
  encodeFrame,
  encodeGoAway,
  encodePing,
  encodeRstStream,
  encodeSynStream,
  type SpdyFrame,
  type SpdyParseError,
} from '../../../src/kubelet/spdy/frames.ts';
import {
  HeaderBlockError,
  HeaderCompressor,
  HeaderDecompressor,
  decodeNameValueBlock,
  encodeNameValueBlock,
} from '../../../src/kubelet/spdy/header-block.ts';
import { rng } from '../helpers/rng.ts';

/** Frames spdystream wrote with one Framer (so one compression context), in this order. */
const SPDYSTREAM = {
  synStream1: '80030001000000340000000100000000000078f9e3c6a7c202e50e703a2b294a4dcc851625aca9a080666060e02c82445b262839331a00000000ffff',
  synStream3: '800300010000001900000003000000000000c2aeb8b82425330f5331000000ffff',
  data3: '000000030000000668656c6c6f0a',
  data3Fin: '0000000301000000',
  ping1: '800300060000000400000001',
  rstStream1: '80030003000000080000000100000005',
  goAway: '80030007000000080000000000000000',
};

function parseAll(bytes: Buffer, pieceSize = bytes.length): { frames: SpdyFrame[]; errors: SpdyParseError[]; parser: SpdyFrameParser } {
  const frames: SpdyFrame[] = [];
  const errors: SpdyParseError[] = [];
  const parser = new SpdyFrameParser({ onFrame: (f) => frames.push(f), onError: (e) => errors.push(e) });
  for (let at = 0; at < bytes.length; at += pieceSize) parser.push(bytes.subarray(at, at + pieceSize));
  return { frames, errors, parser };
}

/**
 * Merges consecutive DATA pieces of one stream up to a FIN. The parser hands a payload on as its bytes
 * arrive, so how it is cut depends on the pushes; merged, the same bytes compare equal however pushed.
 */
function mergeData(frames: SpdyFrame[]): SpdyFrame[] {
  const out: SpdyFrame[] = [];
  for (const f of frames) {
    const last = out.at(-1);
    if (f.type === 'data' && last?.type === 'data' && last.streamId === f.streamId && !last.fin) {
      out[out.length - 1] = { ...last, fin: f.fin, data: Buffer.concat([last.data, f.data]) };
    } else {
      out.push(f);
    }
  }
  return out;
}

function adler32(bytes: Uint8Array): number {
  let a = 1;
  let b = 0;
  for (const byte of bytes) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  return ((b << 16) | a) >>> 0;
}

const everyFrameType: SpdyFrame[] = [
  {
    type: 'syn_stream',
    streamId: 7,
    associatedStreamId: 5,
    priority: 3,
    slot: 2,
    fin: true,
    unidirectional: true,
    headerBlock: Buffer.from('compressed-block'),
  },
  { type: 'syn_reply', streamId: 7, fin: false, headerBlock: Buffer.from('reply-block') },
  { type: 'rst_stream', streamId: 7, status: RstStatus.FLOW_CONTROL_ERROR },
  {
    type: 'settings',
    clearSettings: true,
    settings: [
      { id: SettingId.INITIAL_WINDOW_SIZE, flags: 1, value: 1 << 20 },
      { id: SettingId.MAX_CONCURRENT_STREAMS, flags: 0, value: 100 },
    ],
  },
  { type: 'ping', id: 0xfffffffe },
  { type: 'goaway', lastGoodStreamId: 0x7fffffff, status: GoAwayStatus.INTERNAL_ERROR },
  { type: 'headers', streamId: 9, fin: true, headerBlock: Buffer.from('more') },
  { type: 'window_update', streamId: 0, delta: 0x7fffffff },
  { type: 'data', streamId: 0x7fffffff, fin: true, data: Buffer.from('payload') },
  { type: 'data', streamId: 1, fin: false, data: Buffer.alloc(0) },
];

test('the SPDY/3 dictionary is the 1423 bytes whose Adler-32 spdystream header blocks name (0xe3c6a7c2)', () => {
  assert.equal(SPDY3_DICTIONARY.length, 1423);
  assert.equal(adler32(SPDY3_DICTIONARY), 0xe3c6a7c2);
  const synStream = Buffer.from(SPDYSTREAM.synStream1, 'hex');
  assert.equal(synStream.readUInt32BE(18 + 2), 0xe3c6a7c2, 'dictionary id in the zlib header of a spdystream block');
});

test('every frame type round-trips through encodeFrame and the parser', () => {
  for (const frame of everyFrameType) {
    const { frames, errors } = parseAll(encodeFrame(frame));
    assert.deepEqual(errors, []);
    assert.deepEqual(frames, [frame], frame.type);
  }
});

test('all frame types in one stream parse the same when pushed byte by byte', () => {
  const bytes = Buffer.concat(everyFrameType.map(encodeFrame));
  assert.deepEqual(parseAll(bytes).frames, everyFrameType);
  for (const pieceSize of [1, 2, 5, 13]) {
    assert.deepEqual(mergeData(parseAll(bytes, pieceSize).frames), mergeData(everyFrameType), `pieces of ${pieceSize}`);
  }
});

test('a DATA payload is handed on as it arrives, so a 16 MiB frame is never buffered', () => {
  const frames: SpdyFrame[] = [];
  const parser = new SpdyFrameParser({ onFrame: (f) => frames.push(f), onError: (e) => assert.fail(e.reason) });
  const header = Buffer.from('0000000101ffffff', 'hex'); // stream 1, FIN, 16 MiB - 1
  parser.push(header);
  let received = 0;
  const piece = Buffer.alloc(1 << 20, 0x61);
  for (let left = 0xffffff; left > 0; left -= piece.length) {
    parser.push(piece.subarray(0, Math.min(piece.length, left)));
    assert.ok(parser.bufferedBytes <= 8, `buffered ${parser.bufferedBytes}`);
  }
  for (const f of frames) {
    assert.equal(f.type, 'data');
    received += f.data.length;
  }
  assert.equal(received, 0xffffff);
  assert.deepEqual(
    frames.map((f) => f.type === 'data' && f.fin),
    frames.map((_, i) => i === frames.length - 1),
    'FIN on the last piece only',
  );
});

test('spdystream frames parse, and their header blocks decompress in order with one context', () => {
  const bytes = Buffer.concat(Object.values(SPDYSTREAM).map((h) => Buffer.from(h, 'hex')));
  for (const pieceSize of [bytes.length, 1, 3, 7]) {
    const { frames, errors } = parseAll(bytes, pieceSize);
    assert.deepEqual(errors, []);
    const inflater = new HeaderDecompressor();
    const summary = mergeData(frames).map((f) => {
      if (f.type === 'syn_stream') return { id: f.streamId, headers: Object.fromEntries(inflater.decompress(f.headerBlock)) };
      if (f.type === 'data') return { id: f.streamId, data: f.data.toString(), fin: f.fin };
      return f;
    });
    assert.deepEqual(summary, [
      { id: 1, headers: { streamtype: ['error'], requestid: ['0'] } },
      { id: 3, headers: { streamtype: ['stdin'], requestid: ['0'] } },
      { id: 3, data: 'hello\n', fin: true },
      { type: 'ping', id: 1 },
      { type: 'rst_stream', streamId: 1, status: RstStatus.CANCEL },
      { type: 'goaway', lastGoodStreamId: 0, status: GoAwayStatus.OK },
    ]);
  }
});

test('the encoders write the same bytes as spdystream for frames without header blocks', () => {
  assert.equal(encodeData(3, Buffer.from('hello\n')).toString('hex'), SPDYSTREAM.data3);
  assert.equal(encodeData(3, Buffer.alloc(0), true).toString('hex'), SPDYSTREAM.data3Fin);
  assert.equal(encodePing(1).toString('hex'), SPDYSTREAM.ping1);
  assert.equal(encodeRstStream(1, RstStatus.CANCEL).toString('hex'), SPDYSTREAM.rstStream1);
  assert.equal(encodeGoAway(0, GoAwayStatus.OK).toString('hex'), SPDYSTREAM.goAway);
  // A SYN_STREAM's bytes before its header block match too (the compressed block itself may differ).
  const block = Buffer.from(SPDYSTREAM.synStream1, 'hex').subarray(18);
  assert.equal(encodeSynStream({ streamId: 1, headerBlock: block }).toString('hex'), SPDYSTREAM.synStream1);
});

test('header blocks round-trip across many blocks with one context per direction', () => {
  const r = rng(0x5bd1);
  const compressor = new HeaderCompressor();
  const decompressor = new HeaderDecompressor();
  const compressed: Buffer[] = [];
  const expected: Map<string, string[]>[] = [];
  for (let i = 0; i < 400; i++) {
    const headers: Record<string, string[]> = {};
    const n = Math.floor(r() * 6);
    for (let k = 0; k < n; k++) {
      const name = ['streamtype', 'port', 'requestid', 'x-custom', `x-${Math.floor(r() * 50)}`][Math.floor(r() * 5)]!;
      const values = Array.from({ length: 1 + Math.floor(r() * 2) }, () => Math.floor(r() * 1e6).toString(36));
      headers[name] = values;
    }
    const block = compressor.compress(headers);
    compressed.push(block);
    expected.push(new Map(Object.entries(headers)));
    assert.deepEqual(decompressor.decompress(block), expected[i], `block ${i}`);
  }
  // Later blocks are tiny because the context remembers earlier ones.
  assert.ok(compressed.slice(-50).every((b) => b.length < 60), 'shared context keeps blocks small');
  // node's zlib, given the whole stream so far, reads the same name/value blocks back to back.
  const raw = inflateSync(Buffer.concat(compressed), { dictionary: Buffer.from(SPDY3_DICTIONARY), finishFlush: zlibConstants.Z_SYNC_FLUSH });
  let off = 0;
  for (const [i, want] of expected.entries()) {
    const block = Buffer.from(encodeNameValueBlock(Object.fromEntries(want)));
    assert.deepEqual(raw.subarray(off, off + block.length), block, `block ${i} as node's zlib reads it`);
    off += block.length;
  }
  assert.equal(off, raw.length);
});

test('name/value blocks lowercase names and join several values with NUL', () => {
  const block = encodeNameValueBlock({ StreamType: 'error', Accept: ['a', 'b'] });
  assert.equal(block.toString('latin1'), '\0\0\0\x02\0\0\0\x0astreamtype\0\0\0\x05error\0\0\0\x06accept\0\0\0\x03a\0b');
  assert.deepEqual(decodeNameValueBlock(block), new Map([['streamtype', ['error']], ['accept', ['a', 'b']]]));
});

test('malformed name/value blocks are refused with HeaderBlockError', () => {
  const good = encodeNameValueBlock({ a: 'b' });
  assert.throws(() => decodeNameValueBlock(good.subarray(0, good.length - 1)), HeaderBlockError);
  assert.throws(() => decodeNameValueBlock(Buffer.concat([good, Buffer.from([0])])), HeaderBlockError);
  assert.throws(() => decodeNameValueBlock(Buffer.from('ffffffff', 'hex')), HeaderBlockError);
  assert.throws(() => decodeNameValueBlock(Buffer.from('0000000100000000', 'hex')), HeaderBlockError, 'empty name');
  assert.throws(() => decodeNameValueBlock(Buffer.from('00000001ffffffff', 'hex')), HeaderBlockError, 'huge name length');
});

test('a header block that inflates past the cap is refused, and the context stays failed', () => {
  const compressor = new HeaderCompressor();
  const bomb = compressor.compress({ x: 'a'.repeat(4 * 1024 * 1024) });
  assert.ok(bomb.length < 10_000, `compressed to ${bomb.length}`);
  const decompressor = new HeaderDecompressor({ maxBlockBytes: 1024 * 1024 });
  assert.throws(() => decompressor.decompress(bomb), /expands past 1048576 bytes/);
  assert.throws(() => decompressor.decompress(compressor.compress({ a: 'b' })), /failed earlier/);
});

test('corrupt compressed bytes are refused with HeaderBlockError', () => {
  const block = new HeaderCompressor().compress({ streamtype: 'error' });
  const corrupt = Buffer.from(block);
  corrupt[0] = 0x00; // not a zlib header
  assert.throws(() => new HeaderDecompressor().decompress(corrupt), HeaderBlockError);
  const wrongDictionary = Buffer.from(block);
  wrongDictionary[2]! ^= 0xff; // dictionary id
  assert.throws(() => new HeaderDecompressor().decompress(wrongDictionary), HeaderBlockError);
});

test('malformed frames call onError with a SPDY status, once, and later bytes are ignored', () => {
  const cases: [string, string, number][] = [
    ['control frame of version 2', '80020001000000000', RstStatus.UNSUPPORTED_VERSION],
    ['SYN_STREAM shorter than 10 bytes', '800300010000000400000001', RstStatus.PROTOCOL_ERROR],
    ['SYN_STREAM for stream 0', '800300010000000a00000000000000000000', RstStatus.PROTOCOL_ERROR],
    ['RST_STREAM of 4 bytes', '800300030000000400000001', RstStatus.PROTOCOL_ERROR],
    ['RST_STREAM with status 0', '80030003000000080000000100000000', RstStatus.PROTOCOL_ERROR],
    ['SETTINGS count beyond its length', '8003000400000004000000ff', RstStatus.PROTOCOL_ERROR],
    ['PING of 8 bytes', '80030006000000080000000100000002', RstStatus.PROTOCOL_ERROR],
    ['GOAWAY of 4 bytes', '800300070000000400000000', RstStatus.PROTOCOL_ERROR],
    ['WINDOW_UPDATE of 4 bytes', '800300090000000400000001', RstStatus.PROTOCOL_ERROR],
    ['DATA for stream 0', '0000000000000001ff', RstStatus.PROTOCOL_ERROR],
    ['control frame over the length cap', '80030001ffffffff', RstStatus.FRAME_TOO_LARGE],
  ];
  for (const [name, hex, status] of cases) {
    const bytes = Buffer.from(hex.length % 2 ? `${hex}0` : hex, 'hex');
    const { frames, errors, parser } = parseAll(Buffer.concat([bytes, encodePing(1)]));
    assert.equal(errors.length, 1, name);
    assert.equal(errors[0]!.status, status, name);
    assert.ok(errors[0]!.reason.length > 0);
    assert.deepEqual(frames, [], `${name}: nothing after the error`);
    assert.ok(parser.failed);
    assert.equal(parser.bufferedBytes, 0, `${name}: buffers released`);
    parser.push(encodePing(3));
    assert.equal(errors.length, 1);
  }
});

test('a control frame over the length cap fails on its header, before any payload arrives', () => {
  const errors: SpdyParseError[] = [];
  const parser = new SpdyFrameParser({ onFrame: (f) => assert.fail(`unexpected ${f.type}`), onError: (e) => errors.push(e) }, { maxControlFrameLength: 1024 });
  parser.push(Buffer.from('8003000100000401', 'hex')); // SYN_STREAM of 1025 bytes
  assert.equal(errors.length, 1);
  assert.equal(errors[0]!.status, RstStatus.FRAME_TOO_LARGE);
});

test('control frames of unknown types are skipped and parsing goes on', () => {
  const unknown = Buffer.from('8003000a00000003616263', 'hex'); // type 10 (CREDENTIAL in SPDY/3), 3 bytes
  const { frames, errors } = parseAll(Buffer.concat([unknown, encodePing(5)]), 2);
  assert.deepEqual(errors, []);
  assert.deepEqual(frames, [{ type: 'ping', id: 5 }]);
});

test('encoders refuse values the wire cannot carry', () => {
  assert.throws(() => encodeData(0, Buffer.alloc(1)), RangeError);
  assert.throws(() => encodeData(0x80000000, Buffer.alloc(1)), RangeError);
  assert.throws(() => encodeRstStream(1, 0), RangeError);
  assert.throws(() => encodeSynStream({ streamId: 1, headerBlock: Buffer.alloc(0), priority: 8 }), RangeError);
  assert.throws(() => encodeFrame({ type: 'window_update', streamId: 1, delta: 0 }), RangeError);
});
