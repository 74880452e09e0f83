// The reflector against a scripted watch server (a unit test: the server stands in for the API server so
// that 410 Gone, bookmarks and a silent connection happen on cue; the e2e tests run it against the real one).
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { pino } from 'pino';
import { ApiHealth } from '../../src/kube/api-health.ts';
import { KubeApi } from '../../src/kube/client.ts';
import { Reflector, type KubeObject } from '../../src/kube/reflector.ts';
import { AgentMetrics } from '../../src/observability/metrics.ts';

const obj = (name: string, rv: string): KubeObject => ({ metadata: { name, resourceVersion: rv, uid: name } });
const line = (type: string, object: unknown) => `${JSON.stringify({ type, object })}\n`;

test('the reflector relists on 410 Gone, follows bookmarks, and re-watches a connection that went silent', async () => {
  const watches: URLSearchParams[] = [];
  let lists = 0;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    if (url.searchParams.get('watch') !== 'true') return res.end();
    watches.push(url.searchParams);
    res.writeHead(200, { 'content-type': 'application/json' });
    switch (watches.length) {
      case 1: // history is gone: the client must list again
        res.end(line('ERROR', { kind: 'Status', code: 410, reason: 'Expired' }));
        break;
      case 2: // an event, a bookmark, then silence on an open connection
        res.write(line('MODIFIED', obj('b', '21')));
        res.write(line('BOOKMARK', { metadata: { resourceVersion: '25' } }));
        break;
      case 3: // after the idle watchdog: a delete, then the server closes normally
        res.end(line('DELETED', obj('b', '26')));
        break;
      default: // later watches stay open and quiet
        res.write('');
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;

  const sink = new Writable({ write: (_c, _e, cb) => cb() });
  const log = pino({ level: 'silent' }, sink);
  const metrics = new AgentMetrics({ processMetrics: false });
  const api = new KubeApi({ source: 'test', server: `http://127.0.0.1:${port}`, insecureSkipTLSVerify: false }, metrics, new ApiHealth(log, metrics), 5000);
  const events: string[] = [];
  const reflector = new Reflector<KubeObject>({
    resource: 'things',
    api,
    list: async () => {
      lists++;
      return lists === 1
        ? { items: [obj('a', '10'), obj('b', '10')], metadata: { resourceVersion: '10' } }
        : { items: [obj('b', '20')], metadata: { resourceVersion: '20' } };
    },
    watchPath: '/api/v1/things',
    watchQuery: { fieldSelector: 'metadata.name=b' },
    handler: {
      added: (o) => events.push(`added ${o.metadata!.name}@${o.metadata!.resourceVersion}`),
      updated: (o) => events.push(`updated ${o.metadata!.name}@${o.metadata!.resourceVersion}`),
      deleted: (o) => events.push(`deleted ${o.metadata!.name}`),
    },
    log,
    metrics,
    idleTimeoutMs: 300,
  });
  try {
    reflector.start();
    const deadline = Date.now() + 10_000;
    while (!events.includes('deleted b') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(events, [
      'added a@10', 'added b@10', // first list
      'updated b@20', 'deleted a', // relist after 410: b changed, a vanished meanwhile
      'updated b@21', // watch event
      'deleted b', // after re-watching the silent connection
    ]);
    assert.equal(lists, 2);
    assert.equal(watches[0]!.get('resourceVersion'), '10');
    assert.equal(watches[1]!.get('resourceVersion'), '20', 'watches from the relist');
    assert.equal(watches[2]!.get('resourceVersion'), '25', 'resumes from the bookmark, without a relist');
    for (const w of watches) {
      assert.equal(w.get('allowWatchBookmarks'), 'true');
      assert.equal(w.get('fieldSelector'), 'metadata.name=b');
      const t = Number(w.get('timeoutSeconds'));
      assert.ok(t >= 300 && t < 600, `timeoutSeconds ${t}`);
    }
    assert.deepEqual(reflector.items().map((o) => o.metadata!.name), []);
    const restarts = await metrics.registry.getSingleMetricAsString('vmlet_watch_restarts_total');
    assert.match(restarts, /reason="gone"\} 1/);
    assert.match(restarts, /reason="idle"\} 1/);
  } finally {
    await reflector.stop();
    api.close();
    server.closeAllConnections();
    server.close();
  }
});
