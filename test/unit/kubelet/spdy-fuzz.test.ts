// Fuzzing the SPDY/3.1 codec with random bytes and with damaged valid frame sequences (bit flips,
// truncations, corrupted lengths, spliced garbage), fed to the frame parser with header decompression
// and to a whole SpdyConnection. Whatever the bytes: nothing throws out, every iteration finishes,
// buffering stays within the frame cap, and a closed connection holds no streams. Seeded, so a failure
// reproduces; a fixed number of iterations.
import assert from 'node:assert/strict';
import { Duplex } from 'node:stream';
import { test } from 'node:test';
import { setImmediate as tick } from 'node:timers/promises';
import { SpdyConnection, type SpdyStream } from '../../../src/kubelet/spdy/connection.ts';
import {
  GoAwayStatus,
  RstStatus,
  SettingId,
  SpdyFrameParser,
  encodeData,
  encodeGoAway,
  encodeHeaders,
  encodePing,
  encodeRstStream,
  encodeSettings,
  encodeSynReply,
  encodeSynStream,
  encodeWindowUpdate,
} from '../../../src/kubelet/spdy/frames.ts';
import { HeaderBlockError, HeaderCompressor, HeaderDecompressor } from '../../../src/kubelet/spdy/header-block.ts';
import { rng } from '../helpers/rng.ts';

const MAX_CONTROL = 16 * 1024;

/** A plausible client byte stream: streams opened with headers, data, pings, resets, settings... */
function validSequence(r: () => number): Buffer {
  const compressor = new HeaderCompressor();
  const frames: Buffer[] = [];
  let nextId = 1;
  const open: number[] = [];
  const count = 1 + Math.floor(r() * 12);
  for (let i = 0; i < count; i++) {
    const pick = Math.floor(r() * 10);
    const id = open[Math.floor(r() * open.length)];
    if (pick <= 2 || id === undefined) {
      const headers = { streamtype: ['stdin', 'stdout', 'stderr', 'error', 'resize'][Math.floor(r() * 5)]!, requestid: String(Math.floor(r() * 100)) };
      frames.push(encodeSynStream({ streamId: nextId, headerBlock: compressor.compress(headers), fin: r() < 0.2, priority: Math.floor(r() * 8) }));
      open.push(nextId);
      nextId += 2;
    } else if (pick <= 5) {
      frames.push(encodeData(id, Buffer.alloc(Math.floor(r() * 3000), Math.floor(r() * 256)), r() < 0.3));
    } else if (pick === 6) {
      frames.push(encodePing(1 + 2 * Math.floor(r() * 1000)));
    } else if (pick === 7) {
      frames.push(r() < 0.5 ? encodeRstStream(id, RstStatus.CANCEL) : encodeHeaders(id, compressor.compress({ 'x-more': 'yes' }), r() < 0.5));
    } else if (pick === 8) {
      frames.push(r() < 0.5 ? encodeSettings([{ id: SettingId.INITIAL_WINDOW_SIZE, flags: 0, value: Math.floor(r() * 1e6) }]) : encodeWindowUpdate(r() < 0.5 ? 0 : id, 1 + Math.floor(r() * 1e5)));
    } else {
      frames.push(r() < 0.8 ? encodeSynReply(id, compressor.compress({})) : encodeGoAway(Math.max(0, nextId - 2), GoAwayStatus.OK));
    }
  }
  return Buffer.concat(frames);
}

function randomBytes(r: () => number, max: number): Buffer {
  const b = Buffer.alloc(Math.floor(r() * max));
  const biased = r() < 0.5; // frame-ish: control bit and version 3 often set
  for (let i = 0; i < b.length; i++) b[i] = (r() * 256) | 0;
  if (biased && b.length >= 8) {
    for (let at = 0; at + 8 <= b.length; at += 8 + Math.floor(r() * 64)) {
      b[at] = 0x80;
      b[at + 1] = 0x03;
      b[at + 2] = 0;
      b[at + 3] = 1 + Math.floor(r() * 9);
    }
  }
  return b;
}

/** One way of damaging a valid stream. */
function mutate(bytes: Buffer, r: () => number): Buffer {
  if (bytes.length === 0) return bytes;
  const b = Buffer.from(bytes);
  const at = (): number => Math.floor(r() * b.length);
  switch (Math.floor(r() * 6)) {
    case 0: // flip a few bits
      for (let i = 0; i < 1 + r() * 4; i++) b[at()]! ^= 1 << Math.floor(r() * 8);
      return b;
    case 1: // truncate
      return b.subarray(0, at());
    case 2: { // corrupt a length field: the 3 bytes after a flags byte of some frame
      const i = Math.min(at(), Math.max(0, b.length - 3));
      b.writeUIntBE(Math.floor(r() * 0xffffff), i, 3);
      return b;
    }
    case 3: // drop a slice
      return Buffer.concat([b.subarray(0, at()), b.subarray(at())]);
    case 4: // splice random bytes in
      return Buffer.concat([b.subarray(0, at()), randomBytes(r, 64), b.subarray(at())]);
    default: // duplicate a slice (replays frames: duplicate ids, header blocks out of context)
      return Buffer.concat([b, b.subarray(at(), at())]);
  }
}

/** Pushes bytes in random pieces to a parser that also inflates header blocks, as the connection does. */
function parseWithHeaders(bytes: Buffer, r: () => number): void {
  const decompressor = new HeaderDecompressor({ maxBlockBytes: 64 * 1024 });
  let errors = 0;
  let headerFailed = false;
  const parser = new SpdyFrameParser(
    {
      onFrame: (frame) => {
        if ('headerBlock' in frame && !headerFailed) {
          try {
            decompressor.decompress(frame.headerBlock);
          } catch (err) {
            if (!(err instanceof HeaderBlockError)) throw err;
            headerFailed = true;
          }
        }
      },
      onError: (e) => {
        errors++;
        assert.ok(e.status > 0 && e.reason.length > 0);
      },
    },
    { maxControlFrameLength: MAX_CONTROL },
  );
  for (let off = 0; off < bytes.length; ) {
    const n = 1 + Math.floor(r() * (r() < 0.3 ? 8 : 4096));
    parser.push(bytes.subarray(off, off + n));
    off += n;
    assert.ok(parser.bufferedBytes <= MAX_CONTROL + 8, `parser holds ${parser.bufferedBytes} bytes`);
  }
  assert.ok(errors <= 1, 'one error at most: the parser stops at the first');
}

test('random bytes never make the parser throw or buffer past the frame cap', () => {
  const r = rng(0x5eed01);
  for (let i = 0; i < 3000; i++) parseWithHeaders(randomBytes(r, 2048), r);
});

test('damaged valid frame sequences never make the parser or header decompression throw', () => {
  const r = rng(0x5eed02);
  for (let i = 0; i < 3000; i++) parseWithHeaders(mutate(validSequence(r), r), r);
});

/** A socket stand-in: the test hands bytes to the connection synchronously; what it writes is counted. */
class FakeSocket extends Duplex {
  written = 0;
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, callback: () => void): void {
    this.written += chunk.length;
    callback();
  }
}

test('a SpdyConnection fed random and damaged bytes never throws, and closes holding no streams', async () => {
  const r = rng(0x5eed03);
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown): void => void uncaught.push(err);
  process.on('uncaughtException', onUncaught);
  try {
    for (let i = 0; i < 1500; i++) {
      const bytes = r() < 0.3 ? randomBytes(r, 2048) : mutate(validSequence(r), r);
      const socket = new FakeSocket();
      const conn = new SpdyConnection(socket, { maxConcurrentStreams: 8, maxControlFrameLength: MAX_CONTROL, closeTimeoutMs: 50 });
      const streams: SpdyStream[] = [];
      const echo = r() < 0.5;
      conn.on('stream', (stream) => {
        streams.push(stream);
        if (echo) {
          stream.on('data', (d: Buffer) => stream.write(d));
          stream.on('end', () => stream.end());
        }
      });
      await tick(); // reading starts on the next tick
      for (let off = 0; off < bytes.length; ) {
        const n = 1 + Math.floor(r() * 512);
        socket.emit('data', bytes.subarray(off, off + n));
        off += n;
        assert.ok(conn.openStreams <= 8, `iteration ${i}: ${conn.openStreams} streams open`);
      }
      if (r() < 0.3) void conn.close();
      conn.destroy();
      await conn.closed;
      assert.equal(conn.openStreams, 0, `iteration ${i}: streams left after close`);
      assert.ok(streams.every((s) => s.destroyed), `iteration ${i}: a stream outlived its connection`);
      assert.equal(socket.listenerCount('data'), 0, `iteration ${i}: socket listener left`);
    }
    await tick();
    assert.deepEqual(uncaught, []);
  } finally {
    process.off('uncaughtException', onUncaught);
  }
});
