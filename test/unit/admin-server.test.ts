import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AdminServer, splitHostPort } from '../../src/observability/admin-server.ts';
import { AgentMetrics } from '../../src/observability/metrics.ts';

test('the admin endpoint serves healthz, readiness with reasons, and Prometheus metrics', async () => {
  const metrics = new AgentMetrics({ processMetrics: false });
  metrics.leaseRenewals.inc({ result: 'success' });
  let ready = false;
  const server = new AdminServer(metrics.registry, [{ name: 'node-lease', check: () => (ready ? null : 'not renewed') }]);
  const { port } = await server.start('127.0.0.1:0');
  try {
    const get = async (p: string) => {
      const res = await fetch(`http://127.0.0.1:${port}${p}`);
      return { status: res.status, body: await res.text() };
    };
    assert.deepEqual(await get('/healthz'), { status: 200, body: 'ok\n' });
    assert.deepEqual(await get('/readyz'), { status: 503, body: '[-]node-lease failed: not renewed\n' });
    ready = true;
    assert.equal((await get('/readyz')).status, 200);
    const m = await get('/metrics');
    assert.match(m.body, /vmlet_node_lease_renewals_total\{result="success"\} 1/);
    assert.equal((await get('/nope')).status, 404);
  } finally {
    await server.stop();
  }
});

test('host:port parsing accepts IPv4, bracketed IPv6 and an empty host', () => {
  assert.deepEqual(splitHostPort('127.0.0.1:10258'), { host: '127.0.0.1', port: 10258 });
  assert.deepEqual(splitHostPort('[::1]:80'), { host: '::1', port: 80 });
  assert.deepEqual(splitHostPort(':80'), { host: '0.0.0.0', port: 80 });
  assert.throws(() => splitHostPort('localhost'), /not host:port/);
});
