// `npm run demo`: the main job of vmlet, end to end on this machine, with nothing but what the README's
// command installs: a host joins a real cluster as a Node, a pod bound to it becomes a VM booted from an
// image in a registry, and the real kubectl execs into it, reads its logs and forwards a port.
//
//   0. first without any cluster: `vmlet run --pod-manifest-path DIR` runs the pod in DIR as a VM (the
//      kubelet's static pods), and `vmlet ps`, `vmlet exec`, `vmlet logs` reach it through the local socket;
//   1. a real control plane (etcd + kube-apiserver built from k8s.io/kubernetes) on loopback;
//   2. `vmlet run` with a kubelet's identity (system:node:<name>), exactly as a user starts it;
//   3. the real kubectl shows the Node, its conditions, capacity and Lease;
//   4. the Linux test guest imported as a vmlet image, pushed to a local registry (Debian's
//      docker-registry), and `vmlet vm run` pulls it, boots it under QEMU and runs commands through the
//      guest agent;
//   5. a pod with that image becomes a VM; `kubectl exec`, `kubectl logs` and `kubectl port-forward`
//      reach it through the API server and vmlet's kubelet port (SPDY over TLS).
// Pass --stay to keep it all running (Ctrl-C stops it) and try kubectl yourself.
import { spawn } from 'node:child_process';
import { mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ensureTestGuest } from '../test/guest/build.ts';
import { guestImageSource, importArgs } from '../test/guest/image.ts';
import { createFixtureDir, removeFixtureDir, waitFor } from '../test/harness/processes.ts';
import { startRegistry } from '../test/harness/registry.ts';
import { startCluster } from '../test/harness/cluster.ts';
import { httpGet, tlsAgent } from '../test/harness/https.ts';
import { killVmProcessesUnder, runVmlet, VMLET_BIN, vmProcessesUnder, VmletProcess } from '../test/harness/vmlet.ts';

const NODE = 'demo-mac';
const stay = process.argv.includes('--stay');
const say = (text: string) => console.log(`\n\x1b[1m==> ${text}\x1b[0m`);

await standaloneDemo();

say(`A Kubernetes control plane on loopback (etcd + kube-apiserver), and vmlet run --node-name ${NODE} as system:node:${NODE}`);
const cluster = await startCluster();
const nodeDir = path.join(cluster.dir, NODE);
// The serving certificate comes from the cluster's CA, as the API server checks it when it proxies
// kubectl exec/logs/port-forward to the kubelet port; the same CA authenticates the API server there.
const vmlet = await VmletProcess.start({ kubeconfig: await cluster.nodeKubeconfig(NODE), nodeName: NODE, dir: nodeDir, args: await cluster.kubeletTlsArgs(nodeDir) }).catch(async (err: unknown) => {
  await cluster.stop();
  throw err;
});
const registry = await startRegistry({});
const shutdown = async () => {
  // VMs outlive vmlet on purpose (the next vmlet adopts them): the demo's pods are deleted while vmlet
  // still runs, so it stops their VMs.
  await cluster.kubectl(['delete', 'pod', '--all', '--wait=true', '--timeout=60s']).catch(() => undefined);
  await vmlet.stop();
  await cluster.stop();
  await registry.stop();
};
process.once('SIGINT', () => void shutdown().then(() => process.exit(130)));

try {
  await vmlet.waitUntilUp();
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

  const image = await vmDemo();
  await podDemo(image, kubectl);
  if (stay) {
    say(`Still running. Try: kubectl --kubeconfig ${cluster.adminKubeconfig} get nodes   (Ctrl-C stops)`);
    await new Promise(() => undefined);
  }
} finally {
  await shutdown();
}

/** A VM image in a registry, and `vmlet vm run` booting it and running commands through the agent. */
async function vmDemo(): Promise<string> {
  say('A VM image: the Linux test guest (Debian cloud kernel, busybox, Node, vmlet-agent) pushed to a local registry');
  const guest = await ensureTestGuest((m) => console.log(`  guest | ${m}`));
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
    return image;
  } finally {
    await removeFixtureDir(dir);
  }
}

/** The main job: a pod becomes a VM, and kubectl exec, logs and port-forward reach into it. */
async function podDemo(image: string, kubectl: (...args: string[]) => Promise<void>): Promise<void> {
  say(`A pod bound to ${NODE} becomes a VM booted from ${image}`);
  await cluster.kubectl(['create', 'serviceaccount', 'default']); // no controller-manager in this demo cluster
  const server = "require('http').createServer((q, s) => s.end('hello over port-forward\\n')).listen(8080); setInterval(() => console.log('up', new Date().toISOString()), 5000); console.log('web server on 8080')";
  const pod = {
    apiVersion: 'v1', kind: 'Pod', metadata: { name: 'mac-build-1', namespace: 'default' },
    spec: {
      nodeName: NODE, automountServiceAccountToken: false, terminationGracePeriodSeconds: 5,
      containers: [{ name: 'vm', image, command: ['node', '-e', server], env: [{ name: 'BUILD', value: 'demo-42' }], resources: { limits: { cpu: '1', memory: '1Gi' } } }],
    },
  };
  console.log(`\n$ kubectl apply -f mac-build-1.yaml   # nodeName: ${NODE}, image ${image}, command: node -e <a web server>`);
  const applied = await cluster.kubectl(['apply', '-f', '-'], { input: JSON.stringify(pod) });
  process.stdout.write(applied.stdout || applied.stderr);
  await waitFor('pod Ready', async () => ((await cluster.kubectl(['get', 'pod', 'mac-build-1', '-o', 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'])).stdout === 'True' ? true : undefined), { timeoutMs: 300_000, intervalMs: 1000 });
  await kubectl('get', 'pod', 'mac-build-1', '-o', 'wide');
  await kubectl('get', 'events', '--field-selector', 'involvedObject.name=mac-build-1', '--sort-by=.lastTimestamp');

  say("kubectl exec into the VM (API server → vmlet's kubelet port over TLS, WebSocket or SPDY/3.1 → guest agent)");
  await kubectl('exec', 'mac-build-1', '--', 'sh', '-c', 'echo "in $(hostname): BUILD=$BUILD, $(nproc) vCPU, kernel $(uname -r)"');
  const failing = await cluster.kubectl(['exec', 'mac-build-1', '--', 'sh', '-c', 'echo failing on purpose >&2; exit 3']);
  console.log(`\n$ kubectl exec mac-build-1 -- sh -c 'exit 3'\n${failing.stderr.trim()}\n(kubectl exit code ${failing.code})`);

  say('kubectl logs, and port-forward to the web server in the VM');
  await kubectl('logs', 'mac-build-1', '--tail=3', '--timestamps');
  const pf = spawn(cluster.binaries.kubectl, [`--kubeconfig=${cluster.adminKubeconfig}`, 'port-forward', 'pod/mac-build-1', ':8080']);
  let out = '';
  pf.stdout.on('data', (d: Buffer) => (out += d.toString()));
  try {
    const port = await waitFor('port-forward', async () => Number(/127\.0\.0\.1:(\d+) -> 8080/.exec(out)?.[1]) || undefined, { timeoutMs: 60_000, intervalMs: 200 });
    console.log(`\n$ kubectl port-forward pod/mac-build-1 :8080   # ${out.trim().split('\n')[0]}`);
    const body = await (await fetch(`http://127.0.0.1:${port}/`)).text();
    console.log(`$ curl http://127.0.0.1:${port}/\n${body.trim()}`);
  } finally {
    pf.kill();
  }
  // The VM's CPU and memory as metrics-server would scrape them from the kubelet port.
  const cert = await cluster.issueClientCert('kube-apiserver-kubelet-client', ['system:masters']);
  const agent = tlsAgent({ ca: await readFile(cluster.caFile, 'utf8'), cert: await readFile(cert.certFile, 'utf8'), key: await readFile(cert.keyFile, 'utf8') });
  const metrics = await httpGet(`${vmlet.kubeletUrl}/metrics/resource`, { agent });
  await agent.close();
  console.log(`\n$ curl --cert ... ${vmlet.kubeletUrl}/metrics/resource | grep ^pod_\n${metrics.body.split('\n').filter((l) => l.startsWith('pod_')).join('\n')}`);
}

/** Standalone mode: no API server; a manifest file is the pod, the local socket is the way in. */
async function standaloneDemo(): Promise<void> {
  say('Standalone: no cluster at all. vmlet run --pod-manifest-path DIR runs the pods in DIR as VMs (the kubelet\'s static pods)');
  const guest = await ensureTestGuest((m) => console.log(`  guest | ${m}`));
  const dir = await createFixtureDir('vmlet-demo-standalone-');
  let local: VmletProcess | undefined;
  try {
    const cache = path.join(dir, 'cache');
    const manifests = path.join(dir, 'manifests');
    await mkdir(manifests);
    const imported = await runVmlet([...importArgs('linux-guest:1', await guestImageSource(guest)), `--store=${cache}`], {}, 300_000);
    if (imported.code !== 0) throw new Error(`vmlet image import failed: ${imported.stderr.trim()}`);
    console.log(`$ vmlet image import linux-guest:1 ... --store=${cache}\n${imported.stdout.trim()}`);
    const manifest = [
      'apiVersion: v1', 'kind: Pod', 'metadata:', '  name: build-agent', 'spec:', '  containers:', '  - name: vm',
      '    image: linux-guest:1', '    imagePullPolicy: Never', '    env: [{name: JOB, value: nightly}]',
      '    command: [sh, -c, \'echo "agent up, job $JOB"; while true; do echo "tick $(date +%T)"; sleep 5; done\']', '',
    ].join('\n');
    await writeFile(path.join(manifests, 'build-agent.yaml'), manifest);
    console.log(`\n$ cat ${manifests}/build-agent.yaml\n${manifest}`);
    console.log(`$ vmlet run --pod-manifest-path=${manifests} --image-cache-dir=${cache} --node-name=${NODE}   # no --kubeconfig`);
    local = await VmletProcess.start({ kubeconfig: undefined, nodeName: NODE, dir, args: [`--pod-manifest-path=${manifests}`] });
    await local.waitUntilUp(60_000);
    const socket = local.socket;
    const cli = async (...args: string[]) => {
      console.log(`\n$ vmlet ${args.map((a) => (/[\s$"]/.test(a) ? `'${a}'` : a)).join(' ')}`);
      const r = await runVmlet([args[0]!, `--socket=${socket}`, ...args.slice(1)]);
      process.stdout.write(r.stdout + r.stderr);
      return r;
    };
    await waitFor('the static pod Running', async () => {
      const r = await runVmlet(['ps', `--socket=${socket}`]);
      return / Running /.test(r.stdout) ? true : undefined;
    }, { timeoutMs: 300_000, intervalMs: 1000, process: local.proc });
    for (const line of (await local.logs()).filter((l) => l.component === 'static-pods')) {
      const text = (v: unknown) => (typeof v === 'string' ? ` ${v}` : '');
      console.log(`  vmlet | ${line.level.padEnd(5)}${text(line.pod)} ${line.msg}${text(line.phase)}`);
    }
    await cli('ps');
    await cli('exec', 'build-agent', '--', 'sh', '-c', 'echo "in $(hostname): JOB=$JOB, kernel $(uname -r)"');
    const failing = await cli('exec', 'build-agent', '--', 'sh', '-c', 'exit 4');
    console.log(`(exit code ${failing.code}: the command's own)`);
    await cli('logs', 'build-agent', '--tail=3');

    say('The file is the control: deleting it stops the VM');
    await unlink(path.join(manifests, 'build-agent.yaml'));
    console.log(`$ rm ${manifests}/build-agent.yaml`);
    await waitFor('the VM stopped', async () => ((await vmProcessesUnder(dir)).length === 0 ? true : undefined), { timeoutMs: 60_000, intervalMs: 500 });
    await cli('ps');
  } finally {
    await local?.stop();
    await killVmProcessesUnder(dir);
    await removeFixtureDir(dir);
  }
}
