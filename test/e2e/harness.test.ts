// Proves the test fixtures are the real thing: a real kube-apiserver (pinned version, Node authorizer
// and NodeRestriction enforcing a kubelet's identity, restartable on the same URL) and real
// registries (TLS + htpasswd, and plain HTTP).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Agent, request } from 'undici';
import { startCluster, type Cluster } from '../harness/cluster.ts';
import { startRegistry, type Registry } from '../harness/registry.ts';
import { ensureTestDependencies, kubernetesVersion } from '../harness/setup.ts';

let cluster: Cluster | undefined;
let secureRegistry: Registry | undefined;
let plainRegistry: Registry | undefined;

const USER = { username: 'vmlet', password: 's3cret-pass' };

before(async () => {
  const binaries = await ensureTestDependencies();
  // Start all three at once; each is recorded as soon as it is up so `after` stops it even when
  // another one fails to start.
  const results = await Promise.allSettled([
    startCluster({ binaries }).then((c) => (cluster = c)),
    startRegistry({ tls: true, auth: USER, binaries }).then((r) => (secureRegistry = r)),
    startRegistry({ binaries }).then((r) => (plainRegistry = r)),
  ]);
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
});

after(async () => {
  await Promise.all([cluster?.stop(), secureRegistry?.stop(), plainRegistry?.stop()]);
});

function nodeManifest(name: string): string {
  return JSON.stringify({ apiVersion: 'v1', kind: 'Node', metadata: { name } });
}

test('kubectl reports the server version pinned in tools/k8s/go.mod (v1.36.3)', async () => {
  const c = cluster!;
  const res = await c.kubectl(['version', '-o', 'json']);
  assert.equal(res.code, 0, res.stderr);
  const version = JSON.parse(res.stdout) as { serverVersion?: { gitVersion?: string } };
  assert.equal(version.serverVersion?.gitVersion, await kubernetesVersion());
  assert.equal(version.serverVersion?.gitVersion, 'v1.36.3');
});

test('a node identity registers its own Node but is forbidden other nodes and secrets', async () => {
  const c = cluster!;
  const n1 = await c.nodeKubeconfig('n1');

  const own = await c.kubectl(['create', '-f', '-'], { kubeconfig: n1, input: nodeManifest('n1') });
  assert.equal(own.code, 0, own.stderr);
  // Modifying its own Node is allowed, so the refusals below are about *whose* Node it is.
  const label = await c.kubectl(['label', 'node', 'n1', 'example.com/agent=vmlet'], { kubeconfig: n1 });
  assert.equal(label.code, 0, label.stderr);

  const createOther = await c.kubectl(['create', '-f', '-'], { kubeconfig: n1, input: nodeManifest('n2') });
  assert.notEqual(createOther.code, 0);
  assert.match(createOther.stderr, /Forbidden/);

  const byAdmin = await c.kubectl(['create', '-f', '-'], { input: nodeManifest('n2') });
  assert.equal(byAdmin.code, 0, byAdmin.stderr);
  const modifyOther = await c.kubectl(['label', 'node', 'n2', 'example.com/agent=vmlet'], { kubeconfig: n1 });
  assert.notEqual(modifyOther.code, 0);
  assert.match(modifyOther.stderr, /Forbidden/);

  const secrets = await c.kubectl(['get', 'secrets', '--all-namespaces'], { kubeconfig: n1 });
  assert.notEqual(secrets.code, 0);
  assert.match(secrets.stderr, /Forbidden/);
});

test('the API server stops and comes back on the same URL with its data kept in etcd', async () => {
  const c = cluster!;
  const url = c.url;
  const cm = await c.kubectl(['create', 'configmap', 'survives-restart', '--from-literal=k=v']);
  assert.equal(cm.code, 0, cm.stderr);

  await c.stopApiServer();
  const down = await c.kubectl(['get', 'ns', '--request-timeout=5s']);
  assert.notEqual(down.code, 0, 'kubectl must fail while the apiserver is stopped');

  await c.startApiServer();
  assert.equal(c.url, url);
  const ns = await c.kubectl(['get', 'ns']);
  assert.equal(ns.code, 0, ns.stderr);
  assert.match(ns.stdout, /kube-node-lease/);
  const kept = await c.kubectl(['get', 'configmap', 'survives-restart', '-o', 'jsonpath={.data.k}']);
  assert.equal(kept.stdout, 'v', kept.stderr);
});

test('the API server exposes Prometheus metrics to the admin', async () => {
  const metrics = await cluster!.apiServerMetrics();
  assert.match(metrics, /^# TYPE apiserver_request_total counter$/m);
});

test('the TLS registry with htpasswd answers 401 without credentials and 200 with them', async () => {
  const r = secureRegistry!;
  assert.ok(r.url.startsWith('https://127.0.0.1:'));
  assert.ok(r.caCert);
  const agent = new Agent({ connect: { ca: r.caCert } });
  try {
    const anonymous = await request(`${r.url}/v2/`, { dispatcher: agent });
    await anonymous.body.dump();
    assert.equal(anonymous.statusCode, 401);
    assert.match(String(anonymous.headers['www-authenticate']), /^Basic realm=/);

    const basic = Buffer.from(`${r.username}:${r.password}`).toString('base64');
    const authed = await request(`${r.url}/v2/`, { dispatcher: agent, headers: { authorization: `Basic ${basic}` } });
    await authed.body.dump();
    assert.equal(authed.statusCode, 200);

    const wrong = Buffer.from(`${r.username}:wrong`).toString('base64');
    const denied = await request(`${r.url}/v2/`, { dispatcher: agent, headers: { authorization: `Basic ${wrong}` } });
    await denied.body.dump();
    assert.equal(denied.statusCode, 401);
  } finally {
    await agent.close();
  }
  // Without the test CA the certificate must not verify: the TLS is real, not a pass-through.
  const untrusting = new Agent();
  try {
    await assert.rejects(request(`${r.url}/v2/`, { dispatcher: untrusting }), /certificate/i);
  } finally {
    await untrusting.close();
  }
});

test('the plain registry answers /v2/ with 200 over HTTP', async () => {
  const r = plainRegistry!;
  assert.ok(r.url.startsWith('http://127.0.0.1:'));
  const res = await request(`${r.url}/v2/`);
  await res.body.dump();
  assert.equal(res.statusCode, 200);
});
