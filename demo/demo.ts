// `npm run demo`: the main job of vmlet, end to end on this machine, with nothing but what the README's
// command installs. Today that is a host joining a real cluster as a Node, and a VM booted from an image
// in a registry with a command run in it; it grows into "a pod becomes a VM, and kubectl exec reaches
// into it" as the pod issues land.
//
//   1. a real control plane (etcd + kube-apiserver built from k8s.io/kubernetes) on loopback;
//   2. `vmlet run` with a kubelet's identity (system:node:<name>), exactly as a user starts it;
//   3. the real kubectl shows the Node, its conditions, capacity and Lease;
//   4. the Linux test guest imported as a vmlet image, pushed to a local registry (Debian's
//      docker-registry), and `vmlet vm run` pulls it, boots it under QEMU and runs commands through the
//      guest agent.
// Pass --stay to keep it all running (Ctrl-C stops it) and try kubectl yourself.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ensureTestGuest } from '../test/guest/build.ts';
import { guestImageSource, importArgs } from '../test/guest/image.ts';
import { createFixtureDir, removeFixtureDir, waitFor } from '../test/harness/processes.ts';
import { startRegistry } from '../test/harness/registry.ts';
import { runVmlet, startClusterWithNode, VMLET_BIN } from '../test/harness/vmlet.ts';

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

  await vmDemo();

  console.log('\nPods bound to this node already become VMs (test/e2e/pods.test.ts); the demo will show them, with');
  console.log('kubectl exec into them, once the kubelet API lands (issue 6). See README.md, "Status".');
  if (stay) {
    say(`Still running. Try: kubectl --kubeconfig ${cluster.adminKubeconfig} get nodes   (Ctrl-C stops)`);
    await new Promise(() => undefined);
  }
} finally {
  await shutdown();
}

/** A VM image in a registry, and `vmlet vm run` booting it and running commands through the agent. */
async function vmDemo(): Promise<void> {
  say('A VM image: the Linux test guest (Debian cloud kernel, busybox, Node, vmlet-agent) pushed to a local registry');
  const guest = await ensureTestGuest((m) => console.log(`  guest | ${m}`));
  const registry = await startRegistry({});
  const dir = await createFixtureDir('vmlet-demo-');
  try {
    const build = path.join(dir, 'build-store');
    const store = path.join(dir, 'store');
    const image = `${registry.host}/demo/linux-guest:1`;
    const step = async (args: string[]) => {
      console.log(`\n$ vmlet ${args.join(' ')}`);
      const r = await runVmlet(args, {}, 300_000);
      process.stdout.write(r.stdout);
      if (r.code !== 0) throw new Error(`vmlet ${args[0]} ${args[1]} failed: ${r.stderr.trim()}`);
    };
    await step([...importArgs('linux-guest:1', await guestImageSource(guest)), `--store=${build}`]);
    await step(['image', 'push', 'linux-guest:1', image, `--store=${build}`]);

    say('vmlet vm run: pull, clone the disk, boot under QEMU, run a command through the guest agent, stop, clean up');
    const vmRun = (args: string[]) => new Promise<number>((resolve) => {
      console.log(`\n$ vmlet vm run --store=${store} ${args.map((a) => (/\s/.test(a) ? `'${a}'` : a)).join(' ')}`);
      const child = spawn(process.execPath, [VMLET_BIN, 'vm', 'run', `--store=${store}`, ...args], { stdio: 'inherit' });
      child.on('exit', (code) => resolve(code ?? 1));
    });
    const code = await vmRun(['--verbose', image, '--', 'sh', '-c', 'echo "hello from $(hostname), kernel $(uname -r)"; cat /proc/cpuinfo | grep -m1 "model name"; free -m | head -2; exit 7']);
    console.log(`(exit code ${code}: the command's own)`);
    await vmRun(['-e', 'WHO=vmlet', image, '--', 'sh', '-c', 'echo "env WHO=$WHO; ps:"; ps | head -5']);
  } finally {
    await registry.stop();
    await removeFixtureDir(dir);
  }
}
