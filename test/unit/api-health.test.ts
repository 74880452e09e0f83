import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { pino } from 'pino';
import { ApiHealth } from '../../src/kube/api-health.ts';
import { Backoff } from '../../src/kube/backoff.ts';
import { AgentMetrics } from '../../src/observability/metrics.ts';

function capture() {
  const lines: Array<{ level: number; msg: string }> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(JSON.parse(chunk.toString()) as { level: number; msg: string });
      cb();
    },
  });
  return { log: pino({ level: 'info' }, stream), lines };
}

test('an outage is logged once when it starts and once when it ends, however many requests fail', async () => {
  const { log, lines } = capture();
  let now = 1_000_000;
  const health = new ApiHealth(log, new AgentMetrics({ processMetrics: false }), () => now);
  let recovered = 0;
  health.onRecovered(() => recovered++);
  for (let i = 0; i < 50; i++) health.failed('connect ECONNREFUSED 127.0.0.1:6443');
  assert.equal(health.reachable, false);
  now += 60_000;
  health.succeeded();
  health.succeeded();
  await new Promise((r) => setImmediate(r));
  assert.equal(lines.length, 2, JSON.stringify(lines));
  assert.match(lines[0]!.msg, /API server unreachable: connect ECONNREFUSED/);
  assert.match(lines[1]!.msg, /reachable again after 60s/);
  assert.equal(recovered, 1);
});

test('back-off doubles up to its ceiling, jittered into the upper half, and resets', () => {
  const b = new Backoff(100, 1000, () => 1);
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next(), b.next()], [100, 200, 400, 800, 1000, 1000]);
  b.reset();
  assert.equal(b.next(), 100);
  const low = new Backoff(100, 1000, () => 0);
  assert.equal(low.next(), 50);
});
