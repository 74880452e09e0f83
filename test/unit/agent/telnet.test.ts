// The telnet byte layer the agent puts between a tty exec and busybox telnetd: commands stripped in any
// split, 0xFF escaped both ways, telnetd's leading "\r\r\n" dropped, window sizes as NAWS.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { escapeIac, nawsCommand, TelnetDecoder } from '../../../src/agent/guest/telnet.ts';

async function decode(pieces: Buffer[]): Promise<Buffer> {
  const d = new TelnetDecoder();
  const out: Buffer[] = [];
  d.on('data', (c: Buffer) => out.push(c));
  for (const p of pieces) d.write(p);
  d.end();
  await new Promise((resolve) => d.on('end', resolve));
  return Buffer.concat(out);
}

test('telnet negotiation and subnegotiation are stripped, however the bytes are split', async () => {
  const wire = Buffer.concat([
    Buffer.from([0xff, 0xfd, 0x01, 0xff, 0xfd, 0x1f, 0xff, 0xfb, 0x01, 0xff, 0xfb, 0x03]),
    Buffer.from('\r\r\n/dev/pts/0\r\n'),
    Buffer.from([0xff, 0xfa, 0x1f, 0x00, 0x50, 0xff, 0xff, 0x18, 0xff, 0xf0]), // SB NAWS with an escaped 0xFF inside
    Buffer.from([0x41, 0xff, 0xff, 0x42]), // a data byte 0xFF, doubled
  ]);
  const want = Buffer.concat([Buffer.from('/dev/pts/0\r\n'), Buffer.from([0x41, 0xff, 0x42])]);
  assert.deepEqual(await decode([wire]), want);
  for (let split = 1; split < wire.length; split++) {
    assert.deepEqual(await decode([wire.subarray(0, split), wire.subarray(split)]), want, `split at ${split}`);
  }
  assert.deepEqual(await decode([...wire].map((b) => Buffer.from([b]))), want);
});

test('output that does not start with telnetd\'s "\\r\\r\\n" keeps its first bytes', async () => {
  assert.equal((await decode([Buffer.from('\r\rX')])).toString(), '\r\rX');
  assert.equal((await decode([Buffer.from('\r\r\n\r\r\n')])).toString(), '\r\r\n');
});

test('input 0xFF is doubled and a window size is an escaped NAWS subnegotiation', () => {
  assert.deepEqual(escapeIac(Buffer.from([1, 0xff, 2])), Buffer.from([1, 0xff, 0xff, 2]));
  assert.deepEqual(nawsCommand(24, 80), Buffer.from([0xff, 0xfa, 0x1f, 0, 80, 0, 24, 0xff, 0xf0]));
  assert.deepEqual(nawsCommand(255, 300), Buffer.from([0xff, 0xfa, 0x1f, 1, 44, 0, 0xff, 0xff, 0xff, 0xf0]));
});
