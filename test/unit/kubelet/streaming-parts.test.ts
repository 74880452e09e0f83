// The pure parts of the streaming endpoints: protocol negotiation, the resize channel's JSON, the
// port-forward stream headers, and the log query.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseLogOptions } from '../../../src/kubelet/endpoints/logs.ts';
import { wantedStreams } from '../../../src/kubelet/endpoints/streaming.ts';
import { KubeletError } from '../../../src/kubelet/provider.ts';
import { exitCodeStatus, REMOTE_COMMAND_PROTOCOLS } from '../../../src/kubelet/streaming/remote-command.ts';
import { ResizeParser } from '../../../src/kubelet/streaming/resize.ts';
import { checkPortForwardHeaders } from '../../../src/kubelet/streaming/spdy-port-forward.ts';
import { negotiate } from '../../../src/kubelet/streaming/upgrade.ts';

test('negotiation picks the first protocol of the client list that the server speaks, as client-go does', () => {
  assert.deepEqual(negotiate(['v5.channel.k8s.io', 'v4.channel.k8s.io'], REMOTE_COMMAND_PROTOCOLS, true), { ok: true, protocol: 'v5.channel.k8s.io' });
  assert.deepEqual(negotiate(['v9.channel.k8s.io', 'v3.channel.k8s.io', 'v4.channel.k8s.io'], REMOTE_COMMAND_PROTOCOLS, true), { ok: true, protocol: 'v3.channel.k8s.io' });
  assert.deepEqual(negotiate([], REMOTE_COMMAND_PROTOCOLS, true), { ok: true, protocol: '' });
  const refused = negotiate(['v9.channel.k8s.io'], REMOTE_COMMAND_PROTOCOLS, true);
  assert.equal(refused.ok, false);
  assert.equal(!refused.ok && refused.status, 403);
  assert.equal(!refused.ok && negotiate([], ['portforward.k8s.io'], false).ok, false);
});

test('resize JSON is parsed across any split, and nonsense sizes are dropped', () => {
  const sizes: { rows: number; cols: number }[] = [];
  const p = new ResizeParser((s) => sizes.push(s));
  const text = '{"Width":80,"Height":24}{"Width":120,"Height":50}{"Width":-1,"Height":5}{"Width":100,"Height":40}';
  for (const ch of text) p.push(ch);
  assert.deepEqual(sizes, [{ rows: 24, cols: 80 }, { rows: 50, cols: 120 }, { rows: 40, cols: 100 }]);
  p.push('{"Width":' + '9'.repeat(10_000));
  p.push('}{"Width":10,"Height":10}');
  assert.deepEqual(sizes.at(-1), { rows: 10, cols: 10 }, 'a runaway object is dropped, the next one still parses');
});

test('the streams of an exec come from input/output/error/tty, and a tty has no stderr', () => {
  assert.deepEqual(wantedStreams(new URL('http://x/exec?input=1&output=1&error=1&tty=1')), { stdin: true, stdout: true, stderr: false, tty: true });
  assert.deepEqual(wantedStreams(new URL('http://x/exec?output=1&error=1')), { stdin: false, stdout: true, stderr: true, tty: false });
  assert.throws(() => wantedStreams(new URL('http://x/exec?tty=1')), (e: unknown) => e instanceof KubeletError && e.status === 400);
});

test('a non-zero exit is the Status kubectl turns into its exit code', () => {
  const s = exitCodeStatus(['sh', '-c', 'exit 3'], 3);
  assert.equal(s.reason, 'NonZeroExitCode');
  assert.deepEqual(s.details?.causes, [{ reason: 'ExitCode', message: '3' }]);
});

const reason = (r: ReturnType<typeof checkPortForwardHeaders>): string => (typeof r === 'string' ? r : JSON.stringify(r));

test('port-forward streams need a port and a type, as the kubelet checks them', () => {
  assert.deepEqual(checkPortForwardHeaders({ port: '8080', streamtype: 'data', requestid: '0' }), { port: 8080, type: 'data' });
  assert.match(reason(checkPortForwardHeaders({ streamtype: 'data'})), /"port" header is required/);
  assert.match(reason(checkPortForwardHeaders({ port: '0', streamtype: 'data'})), /must be > 0/);
  assert.match(reason(checkPortForwardHeaders({ port: '70000', streamtype: 'data'})), /unable to parse/);
  assert.match(reason(checkPortForwardHeaders({ port: '80', streamtype: 'stdin'})), /invalid stream type/);
});

test('log options are read as the kubelet reads PodLogOptions, with a 400 for bad values', () => {
  const now = new Date('2026-11-25T12:00:00Z');
  assert.deepEqual(parseLogOptions(new URLSearchParams('follow=true&tailLines=5&timestamps=true&limitBytes=100&previous=true'), now),
    { follow: true, timestamps: true, previous: true, tailLines: 5, limitBytes: 100 });
  assert.deepEqual(parseLogOptions(new URLSearchParams('sinceSeconds=60'), now), { sinceTime: new Date('2026-11-25T11:59:00Z') });
  assert.deepEqual(parseLogOptions(new URLSearchParams('sinceTime=2026-11-25T10:00:00Z&stream=Stderr'), now), { sinceTime: new Date('2026-11-25T10:00:00Z'), stream: 'Stderr' });
  for (const bad of ['tailLines=-1', 'tailLines=x', 'limitBytes=0', 'sinceSeconds=1&sinceTime=2026-11-25T10:00:00Z', 'sinceTime=yesterday', 'follow=maybe', 'stream=Both', 'stream=Stdout&tailLines=1']) {
    assert.throws(() => parseLogOptions(new URLSearchParams(bad), now), (e: unknown) => e instanceof KubeletError && e.status === 400, bad);
  }
});
