// `npm run demo`: the main job of vmlet, end to end on this machine, with nothing but what the README's
// command installs. Today that is a host joining a real cluster as a Node; it grows into "a pod becomes a
// VM, and kubectl exec reaches into it" as the VM issues land.
//
//   1. a real control plane (etcd + kube-apiserver built from k8s.io/kubernetes) on loopback;
//   2. `vmlet run` with a kubelet's identity (system:node:<name>), exactly as a user starts it;
//   3. the real kubectl shows the Node, its conditions, capacity and Lease.
// Pass --stay to keep it all running (Ctrl-C stops it) and try kubectl yourself.
import { setTimeout as sleep } from 'node:timers/promises';
import { waitFor } from '../test/harness/processes.ts';
import { startClusterWithNode } from '../test/harness/vmlet.ts';

const NODE = 'demo-mac';
const stay = process.argv.includes('--stay');
const say = (text: string) => console.log(`\n\x1b[1m==> ${text}\x1b[0m`);

say(`A Kubernetes control plane on loopback (etcd + kube-apiserver), and vmlet run --node-name ${NODE} as system:node:${NODE}`);
const { cluster, vmlet } = await startClusterWithNode(NODE);
const shutdown = async () => {
  await vmlet.stop();
  await cluster.stop();
};
process.once('SIGINT', () => void shutdown().then(() => process.exit(130)));

try {
  console.log(`API server: ${cluster.url} (Kubernetes ${cluster.kubernetesVersion})`);
  for (const line of await vmlet.logs()) console.log(`  vmlet | ${line.level.padEnd(5)} ${line.msg}`);

  const kubectl = async (...args: string[]) => {
    console.log(`\n$ kubectl ${args.join(' ')}`);
    const r = await cluster.kubectl(args);
    process.stdout.write(r.stdout || r.stderr);
  };

  say('The node as the cluster sees it');
  await waitFor('node Ready', async () => ((await cluster.kubectl(['get', 'node', NODE])).stdout.includes(' Ready ') ? true : undefined), {
    timeoutMs: 30_000,
  });
  await kubectl('get', 'nodes', '-o', 'wide');
  await kubectl('get', 'node', NODE, '-o', 'custom-columns=CONDITION:.status.conditions[*].type,STATUS:.status.conditions[*].status');
  await kubectl('describe', 'node', NODE);

  say('Its heartbeat: the Lease renewed every 10 s');
  await kubectl('get', 'lease', '-n', 'kube-node-lease', NODE, '-o', 'custom-columns=HOLDER:.spec.holderIdentity,RENEWED:.spec.renewTime');
  await sleep(11_000);
  await kubectl('get', 'lease', '-n', 'kube-node-lease', NODE, '-o', 'custom-columns=HOLDER:.spec.holderIdentity,RENEWED:.spec.renewTime');

  say("vmlet's own health and metrics");
  console.log(`$ curl ${vmlet.adminUrl}/readyz\n${(await vmlet.admin('/readyz')).body.trim()}`);
  const metrics = (await vmlet.admin('/metrics')).body.split('\n').filter((l) => /^vmlet_(api_requests|node_lease|node_status)/.test(l));
  console.log(`$ curl ${vmlet.adminUrl}/metrics | grep ^vmlet_\n${metrics.join('\n')}`);

  console.log('\nPods scheduled to this node becoming VMs (and kubectl exec into them) arrive with the VM issues;');
  console.log('see README.md, "Status".');
  if (stay) {
    say(`Still running. Try: kubectl --kubeconfig ${cluster.adminKubeconfig} get nodes   (Ctrl-C stops)`);
    await new Promise(() => undefined);
  }
} finally {
  await shutdown();
}
