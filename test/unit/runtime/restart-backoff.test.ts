import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RestartBackoff } from '../../../src/runtime/pod/restart-backoff.ts';

test('a crashing container restarts at once, then after 10s, 20s, 40s ... up to 5 minutes, like the kubelet', () => {
  const b = new RestartBackoff();
  const waits = Array.from({ length: 8 }, () => b.next(1000));
  assert.deepEqual(waits, [0, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]);
});

test('a run as long as twice the maximum back-off starts the sequence over', () => {
  const b = new RestartBackoff({ initialMs: 1000, maxMs: 4000 });
  assert.deepEqual([b.next(10), b.next(10), b.next(10), b.next(10)], [0, 1000, 2000, 4000]);
  assert.equal(b.next(8000), 0);
  assert.equal(b.next(10), 1000);
});

test('back-off durations print as Go durations, as in the kubelet\'s BackOff messages', () => {
  assert.equal(RestartBackoff.format(10_000), '10s');
  assert.equal(RestartBackoff.format(80_000), '1m20s');
  assert.equal(RestartBackoff.format(300_000), '5m0s');
});
