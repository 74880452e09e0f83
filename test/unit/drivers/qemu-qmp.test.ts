// The QMP codec (src/drivers/qemu/qmp-protocol.ts): messages split across reads at every byte, several
// in one read, multi-byte UTF-8 cut in half, CRLF endings, and what is not QMP.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encodeQmpCommand, parseQmpLine, QmpDecoder, QmpProtocolError, shutdownInfo, type QmpMessage } from '../../../src/drivers/qemu/qmp-protocol.ts';

// What QEMU 7.2 sent in a real session (greeting, a reply, events), with its CRLF line ends.
const STREAM = [
  '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}',
  '{"return": {}, "id": 1}',
  '{"timestamp": {"seconds": 1795616510, "microseconds": 577711}, "event": "POWERDOWN"}',
  '{"return": {"status": "running", "singlestep": false, "running": true}, "id": 2}',
  '{"timestamp": {"seconds": 1795616510, "microseconds": 653590}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}',
  '{"id": 3, "error": {"class": "GenericError", "desc": "nom \u00e9 \u2713 \u{1f680}"}}',
].map((l) => `${l}\r\n`).join('');

const EXPECTED: QmpMessage[] = [
  { kind: 'greeting', version: '7.2.22', capabilities: ['oob'] },
  { kind: 'return', id: 1, value: {} },
  { kind: 'event', event: 'POWERDOWN', data: {}, at: 1795616510577 },
  { kind: 'return', id: 2, value: { status: 'running', singlestep: false, running: true } },
  { kind: 'event', event: 'SHUTDOWN', data: { guest: true, reason: 'guest-shutdown' }, at: 1795616510653 },
  { kind: 'error', id: 3, errorClass: 'GenericError', desc: 'nom \u00e9 \u2713 \u{1f680}' },
];

test('a whole stream in one read gives every message in order', () => {
  assert.deepEqual(new QmpDecoder().push(Buffer.from(STREAM)), EXPECTED);
});

test('split at every byte offset, and one byte at a time, the messages are the same', () => {
  const bytes = Buffer.from(STREAM);
  for (let cut = 1; cut < bytes.length; cut++) {
    const d = new QmpDecoder();
    const got = [...d.push(bytes.subarray(0, cut)), ...d.push(bytes.subarray(cut))];
    assert.deepEqual(got, EXPECTED, `cut at ${cut}`);
  }
  const d = new QmpDecoder();
  const got: QmpMessage[] = [];
  for (const b of bytes) got.push(...d.push(Buffer.from([b])));
  assert.deepEqual(got, EXPECTED);
});

test('a partial line waits; blank lines are skipped; string chunks work too', () => {
  const d = new QmpDecoder();
  assert.deepEqual(d.push('{"return": '), []);
  assert.deepEqual(d.push('{}}\n\r\n\n{"ret'), [{ kind: 'return', id: undefined, value: {} }]);
  assert.deepEqual(d.push('urn": 5}\n'), [{ kind: 'return', id: undefined, value: 5 }]);
});

test('what is not QMP is an error, and a line without end is bounded', () => {
  assert.throws(() => parseQmpLine('not json'), QmpProtocolError);
  assert.throws(() => parseQmpLine('[1,2]'), /non-object/);
  assert.throws(() => parseQmpLine('{"what": 1}'), /unknown message/);
  assert.throws(() => new QmpDecoder(64).push('{"return": "' + 'x'.repeat(100)), /longer than 64 bytes/);
  assert.deepEqual(parseQmpLine('{"error": {}}'), { kind: 'error', id: undefined, errorClass: 'GenericError', desc: '' });
});

test('commands are one line with arguments only when there are some; SHUTDOWN payloads are read', () => {
  assert.equal(encodeQmpCommand('qmp_capabilities'), '{"execute":"qmp_capabilities"}\n');
  assert.equal(encodeQmpCommand('stop', {}, 4), '{"execute":"stop","id":4}\n');
  assert.equal(encodeQmpCommand('migrate', { uri: "exec:cat > '/a b'" }, 7), '{"execute":"migrate","arguments":{"uri":"exec:cat > \'/a b\'"},"id":7}\n');
  const [shutdown] = new QmpDecoder().push(`${STREAM.split('\r\n')[4]!}\n`);
  assert.equal(shutdown?.kind, 'event');
  if (shutdown?.kind !== 'event') return;
  assert.deepEqual(shutdownInfo(shutdown), { guest: true, reason: 'guest-shutdown' });
  assert.equal(shutdownInfo({ kind: 'event', event: 'STOP', data: {}, at: 0 }), undefined);
  assert.deepEqual(shutdownInfo({ kind: 'event', event: 'SHUTDOWN', data: {}, at: 0 }), { guest: false, reason: 'unknown' });
});
