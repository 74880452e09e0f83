// `vmlet run` against a real kube-apiserver (Node authorizer + NodeRestriction), checked with the real
// kubectl: registration, status, Lease, adoption after a restart, re-registration, the admin endpoint,
// and running as the ServiceAccount of deploy/rbac.yaml.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import type { Cluster } from '../harness/cluster.ts';
import { waitFor } from '../harness/processes.ts';
import { startClusterWithNode, VmletProcess } from '../harness/vmlet.ts';

interface Condition { type: string; status: string; reason?: string; message?: string; lastHeartbeatTime?: string }
interface NodeYaml {
  metadata: { name: string; uid: string; labels: Record<string, string> };
  spec: { taints?: Array<{ key: string; value?: string; effect: string }> };
  status: {
    conditions: Condition[];
    capacity: Record<string, string>;
    allocatable: Record<string, string>;
    addresses: Array<{ type: string; address: string }>;
    daemonEndpoints: { kubeletEndpoint: { Port: number } };
    nodeInfo: Record<string, string>;
  };
}

const NODE = 'vm-node-1';
let cluster: Cluster;
let vmlet: VmletProcess;

async function getNode(name = NODE): Promise<NodeYaml | undefined> {
  const r = await cluster.kubectl(['get', 'node', name, '-o', 'yaml']);
  if (r.code !== 0) return undefined;
  return parseYaml(r.stdout) as NodeYaml;
}

interface LeaseJson {
  spec: { renewTime: string; holderIdentity: string; leaseDurationSeconds: number };
  metadata: { ownerReferences?: Array<{ kind: string; name: string; uid: string }> };
}

async function getLease(name = NODE): Promise<LeaseJson | undefined> {
  const r = await cluster.kubectl(['get', 'lease', '-n', 'kube-node-lease', name, '-o', 'json']);
  return r.code === 0 ? (JSON.parse(r.stdout) as LeaseJson) : undefined;
}

const ready = (node: NodeYaml | undefined) => node?.status.conditions.find((c) => c.type === 'Ready');

before(async () => {
  ({ cluster, vmlet } = await startClusterWithNode(NODE));
});

after(async () => {
  await vmlet?.stop();
  await cluster?.stop();
});

test('kubectl get node shows a Ready node with labels, taint, capacity, addresses and nodeInfo', async () => {
  const node = await waitFor('node to be Ready', async () => {
    const n = await getNode();
    return ready(n)?.status === 'True' ? n : undefined;
  }, { timeoutMs: 30_000 });

  const labels = node.metadata.labels;
  assert.equal(labels['kubernetes.io/os'], 'linux');
  assert.equal(labels['kubernetes.io/arch'], process.arch === 'x64' ? 'amd64' : process.arch);
  assert.equal(labels['kubernetes.io/hostname'], NODE);
  assert.equal(labels.type, 'virtual-kubelet');
  assert.equal(labels['vmlet.dev/hypervisor'], 'qemu');
  assert.equal(labels['guest.vmlet.dev/linux'], 'true');
  // The API server adds node.kubernetes.io/not-ready to every new Node; the controller manager's node
  // lifecycle controller (not part of this test cluster) removes it once the node is Ready.
  const taints = (node.spec.taints ?? []).filter((t) => t.key !== 'node.kubernetes.io/not-ready');
  assert.deepEqual(taints, [{ key: 'virtual-kubelet.io/provider', value: 'vmlet', effect: 'NoSchedule' }]);

  const cap = node.status.capacity;
  assert.equal(cap.cpu, String(os.availableParallelism()));
  assert.match(cap.memory!, /^\d+(Ki|Mi|Gi)$/);
  assert.match(cap['ephemeral-storage']!, /^\d+(Ki|Mi|Gi|Ti)?$/);
  assert.equal(cap.pods, '110');
  assert.equal(cap['vmlet.dev/vm'], '2');
  assert.equal(node.status.allocatable['vmlet.dev/vm'], '2');

  assert.deepEqual(node.status.addresses, [
    { type: 'InternalIP', address: '127.0.0.1' },
    { type: 'Hostname', address: NODE },
  ]);
  // The harness gives each vmlet its own loopback kubelet port; the Node publishes it.
  assert.equal(node.status.daemonEndpoints.kubeletEndpoint.Port, Number(new URL(vmlet.kubeletUrl).port));
  const info = node.status.nodeInfo;
  assert.match(info.kubeletVersion!, /^v1\.36\.3-vmlet-\d+\.\d+\.\d+$/);
  assert.match(info.containerRuntimeVersion!, /^vmlet:\/\/\d+\.\d+\.\d+$/);
  assert.equal(info.operatingSystem, 'linux');
  assert.equal(info.kernelVersion, os.release());
  assert.ok(info.osImage, 'osImage is set');

  const types = node.status.conditions.map((c) => c.type).sort();
  assert.deepEqual(types, ['DiskPressure', 'HypervisorReady', 'MemoryPressure', 'PIDPressure', 'Ready']);
  for (const c of node.status.conditions) assert.ok(c.reason && c.message, `${c.type} has a reason and a message`);
  assert.match(node.status.conditions.find((c) => c.type === 'HypervisorReady')!.message!, /qemu-system-x86_64 .* with (TCG|KVM)/);

  // The printed table a user looks at first.
  const table = await cluster.kubectl(['get', 'node', NODE, '-o', 'wide']);
  assert.match(table.stdout, new RegExp(`${NODE}\\s+Ready\\s+`));
});

test('the node Lease is renewed about every 10 seconds and is owned by the Node', async () => {
  const node = (await getNode())!;
  const seen: number[] = [];
  await waitFor('three distinct Lease renewals', async () => {
    const lease = await getLease();
    const t = lease ? Date.parse(lease.spec.renewTime) : NaN;
    if (!Number.isNaN(t) && seen[seen.length - 1] !== t) seen.push(t);
    return seen.length >= 3 ? true : undefined;
  }, { timeoutMs: 45_000, intervalMs: 500 });
  const lease = (await getLease())!;
  assert.equal(lease.spec.holderIdentity, NODE);
  assert.equal(lease.spec.leaseDurationSeconds, 40);
  assert.match(lease.spec.renewTime, /\.\d{6}Z$/, 'renewTime is a MicroTime');
  assert.deepEqual(lease.metadata.ownerReferences?.map((o) => [o.kind, o.name, o.uid]), [['Node', NODE, node.metadata.uid]]);
  const intervals = seen.slice(1).map((t, i) => (t - seen[i]!) / 1000);
  for (const s of intervals) assert.ok(s >= 5 && s <= 20, `renewals ${intervals.join('s, ')}s apart, expected about 10s`);
});

test('the admin endpoint serves healthz, readyz and Prometheus metrics', async () => {
  assert.deepEqual(await vmlet.admin('/healthz'), { status: 200, body: 'ok\n' });
  assert.equal((await vmlet.admin('/readyz')).status, 200);
  const metrics = (await vmlet.admin('/metrics')).body;
  assert.match(metrics, /vmlet_node_lease_renewals_total\{result="success"\} [1-9]/);
  assert.match(metrics, /vmlet_api_requests_total\{verb="patch",resource="nodes\/status",code="2xx"\} [1-9]/);
  assert.match(metrics, /vmlet_apiserver_reachable 1/);
});

test('a deleted Node object is registered again by the running agent', async () => {
  const before = (await getNode())!;
  const del = await cluster.kubectl(['delete', 'node', NODE, '--wait=false']);
  assert.equal(del.code, 0, del.stderr);
  const again = await waitFor('node to be registered again', async () => {
    const n = await getNode();
    return n && n.metadata.uid !== before.metadata.uid && ready(n)?.status === 'True' ? n : undefined;
  }, { timeoutMs: 45_000, intervalMs: 500 });
  assert.equal(again.metadata.labels.type, 'virtual-kubelet');
  // The Lease follows the new Node (its owner reference is updated at the next renewals).
  await waitFor('lease owned by the new Node', async () => {
    const lease = await getLease();
    return lease?.metadata.ownerReferences?.[0]?.uid === again.metadata.uid ? true : undefined;
  }, { timeoutMs: 30_000, intervalMs: 500 });
});

test('SIGTERM stops vmlet cleanly, and a restarted vmlet adopts its Node', async () => {
  const node = (await getNode())!;
  const exit = await vmlet.signal('SIGTERM');
  assert.deepEqual(exit, { code: 0, signal: null });
  const logs = await vmlet.logs();
  assert.ok(logs.some((l) => l.msg === 'stopped'), 'logs its stop');
  assert.ok((await getNode()) !== undefined, 'a stopped vmlet leaves its Node in place, as a kubelet does');

  // A label someone changed is put back on adoption; labels vmlet does not own are kept.
  const relabel = await cluster.kubectl(['label', 'node', NODE, 'type=tampered', 'team=ios', '--overwrite']);
  assert.equal(relabel.code, 0, relabel.stderr);

  vmlet = await VmletProcess.start({ kubeconfig: await cluster.nodeKubeconfig(NODE), nodeName: NODE, dir: vmlet.dir });
  await vmlet.waitUntilUp();
  assert.ok((await vmlet.logs()).some((l) => l.msg === 'adopted existing Node'), 'logs the adoption');
  const adopted = (await getNode())!;
  assert.equal(adopted.metadata.uid, node.metadata.uid, 'same Node object, not a new one');
  assert.equal(adopted.metadata.labels.type, 'virtual-kubelet');
  assert.equal(adopted.metadata.labels.team, 'ios');
});

test('a node identity without the rights to register is refused with a one-line reason', async () => {
  // A certificate for a user who is not a node: RBAC gives it nothing.
  const kubeconfig = await cluster.kubeconfigFor('someone', []);
  const proc = await VmletProcess.start({ kubeconfig, nodeName: 'vm-node-x', args: ['--startup-timeout=20s'], dir: path.join(cluster.dir, 'vm-node-x') });
  const exit = await proc.proc.exited;
  assert.equal(exit.code, 1);
  const text = await readFile(proc.proc.logFile, 'utf8');
  const errorLine = text.split('\n').find((l) => l.startsWith('vmlet: '));
  assert.match(errorLine ?? text, /^vmlet: the API server at https:\/\/127\.0\.0\.1:\d+ forbids vmlet to register Node vm-node-x: HTTP 403 Forbidden: .*someone/);
});

test('vmlet registers as the ServiceAccount of deploy/rbac.yaml when it has no node certificate', async () => {
  const manifest = path.join(import.meta.dirname, '..', '..', 'deploy', 'rbac.yaml');
  const apply = await cluster.kubectl(['apply', '-f', manifest]);
  assert.equal(apply.code, 0, apply.stderr);
  const token = await cluster.kubectl(['create', 'token', 'vmlet', '-n', 'vmlet-system', '--duration=1h']);
  assert.equal(token.code, 0, token.stderr);
  const kubeconfig = path.join(cluster.dir, 'sa.kubeconfig');
  await writeFile(
    kubeconfig,
    [
      'apiVersion: v1',
      'kind: Config',
      'clusters: [{name: test, cluster: {server: "' + cluster.url + '", certificate-authority: "' + cluster.caFile + '"}}]',
      'users: [{name: vmlet, user: {token: "' + token.stdout.trim() + '"}}]',
      'contexts: [{name: test, context: {cluster: test, user: vmlet}}]',
      'current-context: test',
      '',
    ].join('\n'),
  );
  const sa = await VmletProcess.start({ kubeconfig, nodeName: 'vm-node-sa', dir: path.join(cluster.dir, 'vm-node-sa') });
  try {
    await sa.waitUntilUp();
    const node = await waitFor('SA-registered node Ready', async () => {
      const n = await getNode('vm-node-sa');
      return ready(n)?.status === 'True' ? n : undefined;
    }, { timeoutMs: 30_000 });
    assert.equal(node.metadata.labels.type, 'virtual-kubelet');
    assert.ok(await getLease('vm-node-sa'), 'its Lease exists');
  } finally {
    await sa.stop();
  }
});
