// Standalone mode, with the real `vmlet run` and a real QEMU VM and no API server: `vmlet run
// --pod-manifest-path DIR` runs the pod in DIR as a VM (the kubelet's static pods), and `vmlet ps`,
// `vmlet logs` and `vmlet exec` reach it through the local socket. The manifest file is the only control:
// editing it replaces the pod, deleting it stops the VM; a malformed file or a pod that references API
// objects leaves vmlet and the running pod alone, with one clear log line. A vmlet killed with -9 comes
// back to the same VM (static pod UIDs are stable). Two VM boots in all (the first pod, its edited copy).
import assert from 'node:assert/strict';
import { mkdir, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { V1Pod } from '@kubernetes/client-node';
import { ensureTestGuest } from '../guest/build.ts';
import { guestImageSource, importArgs } from '../guest/image.ts';
import { startCluster } from '../harness/cluster.ts';
import { runCommand } from '../harness/exec.ts';
import { createFixtureDir, removeFixtureDir, waitFor } from '../harness/processes.ts';
import { killVmProcessesUnder, runVmlet, VMLET_BIN, vmProcessesUnder, VmletProcess } from '../harness/vmlet.ts';

const NODE = 'standalone-node';
let dir: string;
let manifests: string;
let vmlet: VmletProcess;

const manifest = (greeting: string) => `apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: vm
    image: guest:1
    imagePullPolicy: Never
    env: [{name: GREETING, value: "${greeting}"}]
    command: [sh, -c, 'echo "hello $GREETING"; exec sleep 100000']
`;

const start = () => VmletProcess.start({ kubeconfig: undefined, nodeName: NODE, dir, args: [`--pod-manifest-path=${manifests}`] });
/** `vmlet <subcommand> --socket=<this vmlet's socket> <args>`, as a user runs it. */
const cli = ([subcommand, ...args]: string[], input?: string) =>
  runCommand(process.execPath, [VMLET_BIN, subcommand!, `--socket=${vmlet.socket}`, ...args], { timeoutMs: 60_000, ...(input !== undefined ? { input } : {}) });
const ps = async (): Promise<V1Pod[]> => {
  const r = await cli(['ps', '-o', 'json']);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { items: V1Pod[] }).items;
};
const qemus = async () => (await vmProcessesUnder(dir)).filter((l) => l.includes('qemu-system')).map((l) => l.trim().split(/\s+/)[0]);
const runningWeb = (greeting: string) =>
  waitFor(`static pod web Running with "${greeting}"`, async () => {
    const pod = (await ps()).find((p) => p.metadata?.name === `web-${NODE}`);
    const env = pod?.spec?.containers[0]?.env?.[0]?.value;
    return pod?.status?.phase === 'Running' && pod.status.containerStatuses?.[0]?.ready && env === greeting ? pod : undefined;
  }, { timeoutMs: 240_000, intervalMs: 1000, process: vmlet.proc });

before(async () => {
  const guest = await ensureTestGuest();
  dir = await createFixtureDir('vmlet-standalone-');
  manifests = path.join(dir, 'manifests');
  await mkdir(manifests);
  // The image in vmlet's own store: the pod needs no registry (imagePullPolicy: Never).
  const imported = await runVmlet([...importArgs('guest:1', await guestImageSource(guest)), `--store=${path.join(dir, 'cache')}`], {}, 240_000);
  assert.equal(imported.code, 0, imported.stderr);
  await writeFile(path.join(manifests, 'web.yaml'), manifest('from a static pod'));
  vmlet = await start();
  await vmlet.waitUntilUp(60_000);
});

after(async () => {
  await vmlet?.stop();
  // VMs outlive vmlet on purpose; the test's own must not outlive the test.
  if (dir) {
    await killVmProcessesUnder(dir);
    await removeFixtureDir(dir);
  }
});

test('without a kubeconfig, the pod in the manifest directory becomes a VM that runs its command; vmlet ps shows it Running', async () => {
  const pod = await runningWeb('from a static pod');
  assert.equal(pod.metadata?.namespace, 'default');
  assert.equal(pod.spec?.nodeName, NODE);
  assert.equal(pod.metadata?.annotations?.['kubernetes.io/config.source'], 'file');
  assert.match(pod.metadata?.uid ?? '', /^[0-9a-f]{32}$/);
  assert.equal(pod.metadata?.annotations?.['kubernetes.io/config.hash'], pod.metadata?.uid);
  assert.equal((await qemus()).length, 1, 'one QEMU for the one static pod');

  const table = await cli(['ps']);
  assert.equal(table.code, 0, table.stderr);
  const [header, row] = table.stdout.trim().split('\n');
  assert.match(header!, /^NAMESPACE\/NAME\s+PHASE\s+READY\s+RESTARTS\s+AGE\s+IP$/);
  assert.match(row!, new RegExp(`^default/web-${NODE}\\s+Running\\s+1/1\\s+0\\s+\\d+s\\s+\\S+$`));

  // No API server: no Node, no Lease, no kubelet port; the log says so, and /healthz answers.
  const logs = await vmlet.logs();
  assert.ok(logs.some((l) => l.mode === 'standalone' && /without an API server/.test(l.msg)), 'the start line names the mode');
  assert.ok(!logs.some((l) => l.msg === 'kubelet API listening'));
  assert.ok(logs.some((l) => l.msg === 'static pod status' && l.phase === 'Running'), 'status changes go to the log');
  assert.ok(logs.some((l) => l.event === 'Normal' && l.reason === 'Started'), 'Events go to the log');
  assert.equal((await vmlet.admin('/healthz')).status, 200);
});

test('vmlet logs shows the command\'s output; vmlet exec runs a command in the VM and passes its exit code through', async () => {
  const logs = await waitFor('the greeting in vmlet logs', async () => {
    const r = await cli(['logs', 'web']);
    return r.code === 0 && r.stdout.includes('hello from a static pod') ? r : undefined;
  }, { timeoutMs: 30_000, intervalMs: 500 });
  assert.equal(logs.stdout, 'hello from a static pod\n');
  const stamped = await cli(['logs', `web-${NODE}`, '--tail=1', '--timestamps']);
  assert.match(stamped.stdout, /^\d{4}-\d\d-\d\dT[\d:.]+Z hello from a static pod\n$/);

  const ok = await cli(['exec', 'web', '--', 'sh', '-c', 'echo "in $(hostname) with $GREETING"; echo to-stderr >&2']);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout, `in web-${NODE} with from a static pod\n`);
  assert.equal(ok.stderr, 'to-stderr\n');
  const failing = await cli(['exec', 'web', '--', 'sh', '-c', 'exit 3']);
  assert.equal(failing.code, 3, 'the command\'s exit code, as kubectl exec gives it');
  const piped = await cli(['exec', '-i', 'web', '--', 'tr', 'a-z', 'A-Z'], 'through stdin\n');
  assert.equal(piped.stdout, 'THROUGH STDIN\n');

  const missing = await cli(['exec', 'nope', '--', 'true']);
  assert.equal(missing.code, 1);
  assert.equal(missing.stderr, `vmlet: pod "default/nope" is not on this node (pods in default: web-${NODE})\n`);
  const nobody = await runVmlet(['ps', `--socket=${path.join(dir, 'nobody.sock')}`]);
  assert.equal(nobody.code, 1);
  assert.match(nobody.stderr, /^vmlet: no vmlet runs at .*nobody\.sock \(ENOENT\): start one with vmlet run/);
});

test('a malformed manifest and a pod that references a ConfigMap: one clear log line each, vmlet and the running pod undisturbed', async () => {
  const uid = (await runningWeb('from a static pod')).metadata!.uid;
  const bad = path.join(manifests, 'broken.yaml');
  await writeFile(bad, 'apiVersion: v1\nkind: Pod\nmetadata: {name: [oops\n');
  await writeFile(path.join(manifests, 'needs-config.yaml'), manifest('x').replace('name: web', 'name: needs-config').replace('    env:', '    envFrom: [{configMapRef: {name: app-config}}]\n    env:'));
  const line = await vmlet.waitForLog('the malformed file logged', (l) => l.file === bad && l.level === 'error', 30_000);
  assert.match(line.msg, /^static pod manifest ignored: .*broken\.yaml: not valid YAML at line \d+, column \d+: /);
  assert.ok(!line.msg.includes('\n'));
  const refused = await waitFor('needs-config Failed', async () => (await ps()).find((p) => p.metadata?.name === `needs-config-${NODE}` && p.status?.phase === 'Failed'), { timeoutMs: 30_000, intervalMs: 500 });
  assert.match(refused.status?.message ?? '', /static pods may not reference API objects.*envFrom\[0\]\.configMapRef "app-config" \(a ConfigMap\)/);
  const table = (await cli(['ps'])).stdout;
  assert.match(table, new RegExp(`default/needs-config-${NODE}\\s+Failed \\(StaticPodReferencesApiObjects\\)\\s+0/1`));

  assert.equal(vmlet.exitStatus, undefined);
  assert.equal((await vmlet.admin('/healthz')).status, 200);
  const web = (await ps()).find((p) => p.metadata?.name === `web-${NODE}`);
  assert.equal(web?.metadata?.uid, uid, 'the running pod is the same pod');
  assert.equal(web?.status?.phase, 'Running');
  assert.equal((await qemus()).length, 1, 'no VM for the refused pod');
  await unlink(bad);
  await unlink(path.join(manifests, 'needs-config.yaml'));
});

test('kill -9 of vmlet: the restarted vmlet adopts the same VM (a static pod\'s UID is stable)', async () => {
  const before = await qemus();
  const uid = (await runningWeb('from a static pod')).metadata!.uid;
  await vmlet.signal('SIGKILL');
  vmlet = await start();
  await vmlet.waitUntilUp(60_000);
  const adopted = await vmlet.waitForLog('the VM adopted', (l) => /adopted those of static pods/.test(l.msg), 30_000);
  assert.deepEqual(adopted.adopted, [uid]);
  assert.equal((await runningWeb('from a static pod')).metadata?.uid, uid);
  assert.deepEqual(await qemus(), before, 'the same QEMU process, not a new boot');
  assert.equal((await cli(['exec', 'web', '--', 'true'])).code, 0);
});

test('editing the manifest replaces the pod (new UID, new VM, the old one stopped); deleting it stops the VM', async () => {
  const old = await runningWeb('from a static pod');
  const [oldQemu] = await qemus();
  await writeFile(path.join(manifests, 'web.yaml'), manifest('after an edit'));
  const edited = await runningWeb('after an edit');
  assert.notEqual(edited.metadata?.uid, old.metadata?.uid);
  await waitFor('only the new VM', async () => {
    const now = await qemus();
    return now.length === 1 && now[0] !== oldQemu ? true : undefined;
  }, { timeoutMs: 60_000, intervalMs: 500 });
  await waitFor('the new greeting in vmlet logs', async () => ((await cli(['logs', 'web'])).stdout === 'hello after an edit\n' ? true : undefined), { timeoutMs: 30_000, intervalMs: 500 });

  await unlink(path.join(manifests, 'web.yaml'));
  await waitFor('no VM left', async () => ((await vmProcessesUnder(dir)).length === 0 ? true : undefined), { timeoutMs: 60_000, intervalMs: 500 });
  assert.deepEqual(await ps(), []);
  assert.ok((await vmlet.logs()).some((l) => l.reason === 'Killing' && l.uid === edited.metadata?.uid));
});

test('vmlet run with neither a kubeconfig nor a manifest path says what to do', async () => {
  const home = path.join(dir, 'home');
  await mkdir(home, { recursive: true });
  const r = await runVmlet(['run', `--image-cache-dir=${path.join(dir, 'cache2')}`, '--admin-address='], { HOME: home, KUBECONFIG: '' });
  assert.equal(r.code, 1);
  assert.equal(r.stderr.trim().split('\n').at(-1), 'vmlet: no kubeconfig: pass --kubeconfig, set KUBECONFIG, run in a cluster, or create ~/.kube/config (or pass --pod-manifest-path to run static pods without an API server)');
});

test('with an API server too: the static pod gets a mirror pod (annotated, owned by the Node, with its status), which kubectl execs into; a deleted mirror comes back; a removed file deletes it', async () => {
  const cluster = await startCluster();
  const node = 'mirror-node';
  const nodeDir = path.join(cluster.dir, node);
  const staticDir = path.join(nodeDir, 'manifests');
  await mkdir(staticDir, { recursive: true });
  await writeFile(path.join(staticDir, 'web.yaml'), manifest('mirrored'));
  // The image store of the standalone vmlet, shared; its own VM dir and socket.
  const clustered = await VmletProcess.start({
    kubeconfig: await cluster.nodeKubeconfig(node), nodeName: node, dir: nodeDir,
    args: [...(await cluster.kubeletTlsArgs(nodeDir)), `--pod-manifest-path=${staticDir}`, `--image-cache-dir=${path.join(dir, 'cache')}`, `--vm-dir=${path.join(nodeDir, 'vms')}`, `--socket=${path.join(nodeDir, 'vmlet.sock')}`],
  });
  const kubectl = async (...args: string[]) => {
    const r = await cluster.kubectl(args);
    assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const mirror = async () => {
    const r = await cluster.kubectl(['get', 'pod', `web-${node}`, '-o', 'json']);
    return r.code === 0 ? (JSON.parse(r.stdout) as V1Pod) : undefined;
  };
  try {
    await clustered.waitUntilUp(120_000);
    const first = await waitFor('the mirror pod Ready', async () => {
      const p = await mirror();
      return p?.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True' ? p : undefined;
    }, { timeoutMs: 240_000, intervalMs: 1000, process: clustered.proc });
    const nodeUid = (JSON.parse(await kubectl('get', 'node', node, '-o', 'json')) as V1Pod).metadata?.uid;
    assert.equal(first.status?.phase, 'Running');
    assert.equal(first.spec?.nodeName, node);
    assert.deepEqual(first.metadata?.ownerReferences?.map((o) => [o.kind, o.name, o.uid, o.controller]), [['Node', node, nodeUid, true]]);
    const hash = first.metadata?.annotations?.['kubernetes.io/config.hash'];
    assert.match(hash ?? '', /^[0-9a-f]{32}$/);
    assert.equal(first.metadata?.annotations?.['kubernetes.io/config.mirror'], hash);
    assert.notEqual(first.metadata?.uid, hash, 'the mirror is the API\'s copy, with its own UID');
    const vms = (await vmProcessesUnder(nodeDir)).filter((l) => l.includes('qemu-system'));
    assert.equal(vms.length, 1, 'one VM: the PodController does not run the mirror pod');

    // kubectl reaches the static pod's VM through the mirror's name.
    assert.equal(await kubectl('exec', `web-${node}`, '--', 'sh', '-c', 'echo "hello $GREETING"'), 'hello mirrored\n');

    // A mirror deleted by a user is made again; the VM is untouched.
    await kubectl('delete', 'pod', `web-${node}`, '--wait=true', '--timeout=60s');
    const second = await waitFor('the mirror pod again', async () => {
      const p = await mirror();
      return p && p.metadata?.uid !== first.metadata?.uid && p.status?.phase === 'Running' ? p : undefined;
    }, { timeoutMs: 90_000, intervalMs: 1000 });
    assert.equal(second.metadata?.annotations?.['kubernetes.io/config.mirror'], hash);
    assert.deepEqual((await vmProcessesUnder(nodeDir)).filter((l) => l.includes('qemu-system')), vms, 'the same VM');

    // The file removed: the VM stops and the mirror is deleted.
    await unlink(path.join(staticDir, 'web.yaml'));
    await waitFor('the mirror pod gone', async () => ((await mirror()) ? undefined : true), { timeoutMs: 60_000, intervalMs: 1000 });
    await waitFor('no VM left', async () => ((await vmProcessesUnder(nodeDir)).length === 0 ? true : undefined), { timeoutMs: 60_000, intervalMs: 500 });
  } finally {
    await clustered.stop();
    await killVmProcessesUnder(nodeDir);
    await cluster.stop();
  }
});
