// The kubelet API of a real `vmlet run` against a real kube-apiserver (Node,RBAC): who may reach it
// (401 without credentials, 403 in the kubelet's words without RBAC, 200 after a ClusterRole binding, the
// apiserver's own client certificate), the TLS certificate it serves, and the non-streaming endpoints,
// both directly and through the API server's node proxy (`kubectl get --raw .../proxy/...`), which proves
// the API server → vmlet TLS path. No VM is needed. Everything binds to loopback.
//
// The node proxy refuses nodes whose address is not global unicast (127.0.0.1 is not), so the Node here
// has the documentation address 192.0.2.10 as its InternalIP, and the API server reaches it through an
// egress proxy (--egress-selector-config-file, HTTP CONNECT on a Unix socket) that this test runs and
// that connects 192.0.2.10:<port> to 127.0.0.1:<port>: the API server dials, checks the serving
// certificate for 192.0.2.10 against the cluster CA and presents its client certificate, as it would
// to a real kubelet.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, test } from 'node:test';
import type { Agent } from 'undici';
import { startCluster, type Cluster } from '../harness/cluster.ts';
import { httpGet, tlsAgent } from '../harness/https.ts';
import { createFixtureDir, removeFixtureDir, waitFor } from '../harness/processes.ts';
import { VmletProcess } from '../harness/vmlet.ts';
import { parsePrometheus } from '../unit/kubelet/prometheus-text.ts';

const NODE = 'kubelet-api-node';
// TEST-NET-1 (RFC 5737): global unicast, as the node proxy wants, and never routed anywhere.
const NODE_IP = '192.0.2.10';
let cluster: Cluster;
let vmlet: VmletProcess;
let servingCertFile: string;
let fixtures: string;
let egress: { stop(): Promise<void> } | undefined;
const agents: Agent[] = [];

before(async () => {
  fixtures = await createFixtureDir('vmlet-kubelet-api-');
  const socketPath = path.join(fixtures, 'egress.sock');
  egress = await startEgressProxy(socketPath, (host, port) => (host === NODE_IP ? { host: '127.0.0.1', port } : undefined));
  const egressConfig = path.join(fixtures, 'egress-selector.yaml');
  await writeFile(egressConfig, `apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
  - name: cluster
    connection:
      proxyProtocol: HTTPConnect
      transport:
        uds: {udsName: ${socketPath}}
`);
  cluster = await startCluster({ apiServerArgs: [`--egress-selector-config-file=${egressConfig}`] });
  const dir = path.join(cluster.dir, NODE);
  const args = [...(await cluster.kubeletTlsArgs(dir, [NODE_IP])), `--node-ip=${NODE_IP}`];
  servingCertFile = args.find((a) => a.startsWith('--kubelet-tls-cert-file='))!.split('=')[1]!;
  vmlet = await VmletProcess.start({ kubeconfig: await cluster.nodeKubeconfig(NODE), nodeName: NODE, dir, args });
  await vmlet.waitUntilUp(120_000);
});

after(async () => {
  for (const a of agents) await a.close();
  await vmlet?.stop();
  await cluster?.stop();
  await egress?.stop();
  if (fixtures) await removeFixtureDir(fixtures);
});

/**
 * An HTTP CONNECT proxy on a Unix socket, as the API server's egress selector speaks it: `route` maps the
 * address asked for to where it really is, anything else is refused.
 */
async function startEgressProxy(socketPath: string, route: (host: string, port: number) => { host: string; port: number } | undefined): Promise<{ stop(): Promise<void> }> {
  const open = new Set<net.Socket>();
  const server = net.createServer((client) => {
    open.add(client);
    client.on('close', () => open.delete(client));
    client.on('error', () => client.destroy());
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > 8192) client.destroy();
        return;
      }
      client.off('data', onData);
      const m = /^CONNECT (\S+):(\d+) HTTP\/1\.1\r\n/.exec(head.toString('latin1'));
      const target = m ? route(m[1]!.replace(/^\[|\]$/g, ''), Number(m[2])) : undefined;
      if (!target) {
        client.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n');
        return;
      }
      const upstream = net.connect(target.port, target.host);
      open.add(upstream);
      upstream.on('close', () => open.delete(upstream));
      upstream.on('error', () => client.destroy());
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      upstream.once('connect', () => {
        client.write('HTTP/1.1 200 Connection established\r\n\r\n');
        const rest = head.subarray(end + 4);
        if (rest.length > 0) upstream.write(rest);
        client.pipe(upstream);
        upstream.pipe(client);
      });
    };
    client.on('data', onData);
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(socketPath, () => resolve()));
  return {
    stop: async () => {
      for (const s of open) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** An HTTPS client of the kubelet port that trusts the cluster CA, with a client certificate if given. */
function kubeletClient(cert?: { cert: string; key: string }): Agent {
  const agent = tlsAgent({ ca: cluster.caCert, ...(cert ?? {}) });
  agents.push(agent);
  return agent;
}

async function get(pathname: string, opts: { agent?: Agent; token?: string } = {}): Promise<{ status: number; body: string }> {
  return httpGet(`${vmlet.kubeletUrl}${pathname}`, {
    agent: opts.agent ?? kubeletClient(),
    ...(opts.token ? { headers: { authorization: `Bearer ${opts.token}` } } : {}),
  });
}

/** An upgrade request (as kubectl exec through the API server sends it) on a raw TLS connection; the answer's text. */
async function upgrade(pathname: string, headers: Record<string, string> = {}): Promise<string> {
  const url = new URL(vmlet.kubeletUrl);
  const socket = tls.connect({ host: url.hostname, port: Number(url.port), ca: cluster.caCert, ALPNProtocols: ['http/1.1'] });
  try {
    await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    const head = [`POST ${pathname} HTTP/1.1`, `Host: ${url.host}`, 'Connection: Upgrade', 'Upgrade: SPDY/3.1', 'X-Stream-Protocol-Version: v4.channel.k8s.io'];
    for (const [k, v] of Object.entries(headers)) head.push(`${k}: ${v}`);
    socket.write(`${head.join('\r\n')}\r\n\r\n`);
    let text = '';
    socket.on('data', (d: Buffer) => (text += d.toString('utf8')));
    await new Promise<void>((resolve) => socket.once('close', () => resolve()));
    return text;
  } finally {
    socket.destroy();
  }
}

async function kubectl(args: string[], input?: string): Promise<string> {
  const r = await cluster.kubectl(args, input === undefined ? {} : { input });
  assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

const token = async (sa: string) => (await kubectl(['create', 'token', sa, '--duration=10m'])).trim();

test('the serving certificate is the one given; TLS 1.2+ with ALPN http/1.1', async () => {
  const url = new URL(vmlet.kubeletUrl);
  const socket = tls.connect({ host: url.hostname, port: Number(url.port), ca: cluster.caCert, ALPNProtocols: ['h2', 'http/1.1'] });
  try {
    await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    const given = new X509Certificate(await readFile(servingCertFile, 'utf8'));
    assert.equal(socket.getPeerX509Certificate()?.fingerprint256, given.fingerprint256);
    assert.equal(socket.alpnProtocol, 'http/1.1');
    assert.ok(['TLSv1.2', 'TLSv1.3'].includes(socket.getProtocol() ?? ''), String(socket.getProtocol()));
  } finally {
    socket.destroy();
  }
  const log = await vmlet.waitForLog('the kubelet API listening line', (l) => l.msg === 'kubelet API listening');
  assert.equal(log.address, `127.0.0.1:${new URL(vmlet.kubeletUrl).port}`);
  assert.equal(log.certificate, 'files');
});

test('no credentials: 401 Unauthorized, for requests and for an upgrade to /exec', async () => {
  assert.deepEqual(await get('/pods'), { status: 401, body: 'Unauthorized' });
  assert.deepEqual(await get('/healthz'), { status: 401, body: 'Unauthorized' });
  const answer = await upgrade('/exec/default/web/main?command=ls&output=1');
  assert.match(answer, /^HTTP\/1\.1 401 Unauthorized\r\n/);
  assert.match(answer, /\r\n\r\nUnauthorized$/);
  assert.deepEqual(await get('/pods', { token: 'not-a-token' }), { status: 401, body: 'Unauthorized' });
});

test('a ServiceAccount token without RBAC is 403 in the kubelet\'s words; after a ClusterRole binding, 200', async () => {
  await kubectl(['create', 'serviceaccount', 'node-reader']);
  const user = 'system:serviceaccount:default:node-reader';
  const first = await token('node-reader');
  assert.deepEqual(await get('/pods', { token: first }), {
    status: 403,
    body: `Forbidden (user=${user}, verb=get, resource=nodes, subresource(s)=[pods proxy])\n`,
  });
  assert.deepEqual(await get('/stats/summary', { token: first }), {
    status: 403,
    body: `Forbidden (user=${user}, verb=get, resource=nodes, subresource(s)=[stats])\n`,
  });
  const exec = await upgrade('/exec/default/web/main?command=ls&output=1', { Authorization: `Bearer ${first}` });
  assert.match(exec, /^HTTP\/1\.1 403 Forbidden\r\n/);
  assert.match(exec, new RegExp(`Forbidden \\(user=${user}, verb=create, resource=nodes, subresource\\(s\\)=\\[proxy\\]\\)\\n$`));

  await kubectl(['apply', '-f', '-'], `
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-reader}
rules:
  - apiGroups: [""]
    resources: [nodes/pods, nodes/stats, nodes/metrics, nodes/healthz, nodes/configz]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: node-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-reader}
subjects:
  - {kind: ServiceAccount, name: node-reader, namespace: default}
`);
  await waitFor('RBAC to allow nodes/pods', async () => ((await cluster.kubectl(['auth', 'can-i', 'get', 'nodes', '--subresource=pods', `--as=${user}`])).stdout.trim() === 'yes' ? true : undefined), { timeoutMs: 30_000 });

  // The refusal of the first token is remembered (30 s); a new token is a new credential, asked afresh.
  assert.equal((await get('/pods', { token: first })).status, 403);
  const second = await token('node-reader');
  const pods = await get('/pods', { token: second });
  assert.equal(pods.status, 200, pods.body);
  const list = JSON.parse(pods.body) as { kind: string; apiVersion: string; items: unknown[] };
  assert.equal(list.kind, 'PodList');
  assert.equal(list.apiVersion, 'v1');
  for (const p of ['/runningpods/', '/stats/summary', '/metrics/resource', '/healthz', '/configz']) {
    const r = await get(p, { token: second });
    assert.equal(r.status, 200, `${p}: ${r.body}`);
  }
  // nodes/proxy was not granted: exec stays forbidden.
  assert.match(await upgrade('/exec/default/web/main?command=ls&output=1', { Authorization: `Bearer ${second}` }), /^HTTP\/1\.1 403 Forbidden/);
});

test('the API server\'s client certificate: allowed through system:kubelet-api-admin, bound as a real cluster binds it', async () => {
  // Without groups, only RBAC can let this identity in.
  const bare = kubeletClient(await cluster.issueClientCert('kube-apiserver-kubelet-client'));
  assert.deepEqual(await get('/pods', { agent: bare }), {
    status: 403,
    body: 'Forbidden (user=kube-apiserver-kubelet-client, verb=get, resource=nodes, subresource(s)=[pods proxy])\n',
  });
  await kubectl(['create', 'clusterrolebinding', 'kube-apiserver-kubelet-api-admin', '--clusterrole=system:kubelet-api-admin', '--user=kube-apiserver-kubelet-client']);
  await waitFor('RBAC to allow nodes/proxy', async () => ((await cluster.kubectl(['auth', 'can-i', 'create', 'nodes', '--subresource=proxy', '--as=kube-apiserver-kubelet-client'])).stdout.trim() === 'yes' ? true : undefined), { timeoutMs: 30_000 });
  // A new certificate is a new credential (the cache key holds its fingerprint): asked afresh.
  const admin = kubeletClient(await cluster.issueClientCert('kube-apiserver-kubelet-client'));
  for (const p of ['/pods', '/stats/summary', '/metrics/resource', '/metrics', '/healthz', '/configz']) {
    const r = await get(p, { agent: admin });
    assert.equal(r.status, 200, `${p}: ${r.body}`);
  }
  assert.deepEqual(await get('/no/such/endpoint', { agent: admin }), { status: 404, body: '404 page not found\n' });
  // As the harness's apiserver has it: in system:masters.
  const masters = kubeletClient(await cluster.issueClientCert('kube-apiserver-kubelet-client', ['system:masters']));
  assert.equal((await get('/pods', { agent: masters })).status, 200);
  // A certificate from another CA is no credential at all.
  const { CertificateAuthority } = await import('../harness/pki.ts');
  const stranger = kubeletClient(await (await CertificateAuthority.create('not-the-cluster-ca')).issueClientCert('kube-apiserver-kubelet-client', ['system:masters']));
  assert.deepEqual(await get('/pods', { agent: stranger }), { status: 401, body: 'Unauthorized' });
});

test('through the API server: kubectl get --raw .../proxy/healthz, pods, stats/summary, metrics/resource', async () => {
  const base = `/api/v1/nodes/${NODE}/proxy`;
  assert.equal(await kubectl(['get', '--raw', `${base}/healthz`]), 'ok');
  const pods = JSON.parse(await kubectl(['get', '--raw', `${base}/pods`])) as { kind: string; items: unknown[] };
  assert.equal(pods.kind, 'PodList');

  interface Summary {
    node: { nodeName: string; startTime: string; cpu: { usageCoreNanoSeconds: number }; memory: { workingSetBytes: number; availableBytes: number }; fs: { capacityBytes: number }; runtime: { imageFs: { capacityBytes: number } } };
    pods: unknown[];
  }
  const summary = JSON.parse(await kubectl(['get', '--raw', `${base}/stats/summary`])) as Summary;
  assert.equal(summary.node.nodeName, NODE);
  assert.ok(summary.node.cpu.usageCoreNanoSeconds > 0);
  assert.ok(summary.node.memory.workingSetBytes > 0 && summary.node.memory.availableBytes > 0);
  assert.ok(summary.node.fs.capacityBytes > 0 && summary.node.runtime.imageFs.capacityBytes > 0);
  assert.ok(Date.parse(summary.node.startTime) < Date.now());
  assert.ok(Array.isArray(summary.pods));
  const again = JSON.parse(await kubectl(['get', '--raw', `${base}/stats/summary?only_cpu_and_memory=true`])) as { node: Record<string, unknown> };
  assert.deepEqual(Object.keys(again.node).sort(), ['cpu', 'memory', 'nodeName', 'startTime']);

  const { samples, types } = parsePrometheus(await kubectl(['get', '--raw', `${base}/metrics/resource`]));
  assert.equal(types.get('node_cpu_usage_seconds_total'), 'counter');
  assert.equal(types.get('node_memory_working_set_bytes'), 'gauge');
  const cpu = samples.find((s) => s.name === 'node_cpu_usage_seconds_total');
  assert.ok(cpu && cpu.value > 0 && cpu.timestamp! > Date.now() - 60_000);
  assert.deepEqual(samples.find((s) => s.name === 'resource_scrape_error'), { name: 'resource_scrape_error', labels: {}, value: 0 });

  const own = parsePrometheus(await kubectl(['get', '--raw', `${base}/metrics`]));
  assert.ok(own.types.has('vmlet_api_requests_total'));
  assert.ok(own.samples.some((s) => s.name === 'vmlet_api_requests_total' && s.labels.resource === 'subjectaccessreviews'), 'the SubjectAccessReviews are counted');

  const configz = JSON.parse(await kubectl(['get', '--raw', `${base}/configz`])) as { kubeletconfig: Record<string, unknown> };
  const c = configz.kubeletconfig;
  assert.equal(c.kind, 'KubeletConfiguration');
  assert.equal(c.address, '127.0.0.1');
  assert.equal(c.port, Number(new URL(vmlet.kubeletUrl).port));
  assert.equal(c.tlsCertFile, servingCertFile);
  assert.deepEqual(c.authentication, { x509: { clientCAFile: cluster.caFile }, webhook: { enabled: true, cacheTTL: '2m0s' }, anonymous: { enabled: false } });
  assert.deepEqual(c.authorization, { mode: 'Webhook', webhook: { cacheAuthorizedTTL: '5m0s', cacheUnauthorizedTTL: '30s' } });
});

test('a kubelet port in use stops a second vmlet at start with one clear line', async () => {
  const port = new URL(vmlet.kubeletUrl).port;
  const second = await VmletProcess.start({
    kubeconfig: await cluster.nodeKubeconfig('kubelet-api-node-2'),
    nodeName: 'kubelet-api-node-2',
    dir: path.join(cluster.dir, 'kubelet-api-node-2'),
    args: [`--kubelet-port=${port}`],
  });
  try {
    const exit = await Promise.race([second.proc.exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 60_000))]);
    assert.equal(exit?.code, 1);
    const lines = (await second.logs()).filter((l) => l.level === 'raw').map((l) => l.msg);
    assert.deepEqual(lines.filter((l) => l.startsWith('vmlet:')), [`vmlet: cannot listen on the kubelet port 127.0.0.1:${port}: it is in use by another process`]);
  } finally {
    await second.stop();
  }
  // The first one serves on.
  assert.equal(await kubectl(['get', '--raw', `/api/v1/nodes/${NODE}/proxy/healthz`]), 'ok');
});
