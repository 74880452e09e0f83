// Pods become VMs, against a real kube-apiserver, kubectl, registry and QEMU: `vmlet run` with a node
// identity sees a pod bound to it, pulls the image (the Linux test guest, pushed to the local registry),
// boots it, starts the container's command in the VM through the agent, and reports Running/Ready with
// Events; a pod beyond the VM slots waits with a reason and starts when a slot frees; an unsupported
// spec fails with a reason; a deleted pod's VM is stopped and the pod object removed.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { CoreV1Event, V1Pod } from '@kubernetes/client-node';
import { startCluster, type Cluster } from '../harness/cluster.ts';
import { waitFor } from '../harness/processes.ts';
import { startRegistry, type Registry } from '../harness/registry.ts';
import { killVmProcessesUnder, runVmlet, vmProcessesUnder, VmletProcess } from '../harness/vmlet.ts';
import { ensureTestGuest } from '../guest/build.ts';
import { guestImageSource, importArgs } from '../guest/image.ts';

const NODE = 'vm-node-1';
let cluster: Cluster;
let registry: Registry;
let vmlet: VmletProcess;
let image: string;

const kubectl = async (...args: string[]) => {
  const r = await cluster.kubectl(args);
  assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};
const getPod = async (name: string) => JSON.parse(await kubectl('get', 'pod', name, '-o', 'json')) as V1Pod;
const events = async (name: string) =>
  (JSON.parse(await kubectl('get', 'events', '--field-selector', `involvedObject.name=${name}`, '-o', 'json')) as { items: CoreV1Event[] }).items;

function podManifest(name: string, extra: Record<string, unknown> = {}, container: Record<string, unknown> = {}) {
  return {
    apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default' },
    spec: {
      nodeName: NODE, automountServiceAccountToken: false, terminationGracePeriodSeconds: 10,
      containers: [{ name: 'vm', image, command: ['sh', '-c', 'echo "hello $GREETING"; exec sleep 100000'], env: [{ name: 'GREETING', value: 'from a pod' }], ...container }],
      ...extra,
    },
  };
}
const apply = (manifest: unknown) => cluster.kubectl(['apply', '-f', '-'], { input: JSON.stringify(manifest) });

/** QEMU and virtiofsd processes of this vmlet's VMs. */
const vmProcesses = () => vmProcessesUnder(vmlet.dir);

before(async () => {
  const guest = await ensureTestGuest();
  [cluster, registry] = await Promise.all([startCluster(), startRegistry({})]);
  const build = path.join(cluster.dir, 'build-store');
  assert.equal((await runVmlet([...importArgs('guest:1', await guestImageSource(guest)), `--store=${build}`], {}, 240_000)).code, 0);
  image = `${registry.host}/vmlet/test-guest:1`;
  assert.equal((await runVmlet(['image', 'push', 'guest:1', image, `--store=${build}`], {}, 240_000)).code, 0);
  await kubectl('create', 'serviceaccount', 'default');
  vmlet = await VmletProcess.start({ kubeconfig: await cluster.nodeKubeconfig(NODE), nodeName: NODE, dir: path.join(cluster.dir, NODE), args: ['--vm-slots=1'] });
  await vmlet.waitUntilUp(120_000);
});

after(async () => {
  await vmlet?.stop();
  // VMs outlive vmlet on purpose; the test's own must not outlive the test.
  if (vmlet) await killVmProcessesUnder(vmlet.dir);
  await Promise.all([cluster?.stop(), registry?.stop()]);
});

test('a pod bound to the node becomes a VM: Running and Ready, its command runs in the VM, and Events tell the story', async () => {
  assert.equal((await apply(podManifest('web'))).code, 0);
  const pod = await waitFor('pod web Ready', async () => {
    const p = await getPod('web');
    return p.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True' ? p : undefined;
  }, { timeoutMs: 240_000, intervalMs: 1000 });
  assert.equal(pod.status?.phase, 'Running');
  assert.equal(pod.status?.hostIP, '127.0.0.1');
  const cs = pod.status?.containerStatuses?.[0];
  assert.equal(cs?.name, 'vm');
  assert.equal(cs?.ready, true);
  assert.ok(cs?.state?.running?.startedAt, JSON.stringify(cs));
  assert.match(cs?.containerID ?? '', new RegExp(`^vmlet://${pod.metadata!.uid}$`));
  assert.match(cs?.imageID ?? '', /@sha256:[a-f0-9]{64}$/);
  const reasons = (await events('web')).map((e) => e.reason);
  for (const r of ['Pulling', 'Pulled', 'Created', 'Started']) assert.ok(reasons.includes(r), `${r} in ${reasons.join(', ')}`);
  assert.equal((await vmProcesses()).filter((l) => l.includes('qemu-system')).length, 1, 'one QEMU for one pod');
});

test('a second pod on a one-slot node waits with a reason, and starts once the first is deleted (its VM stopped, its object gone)', async () => {
  assert.equal((await apply(podManifest('second'))).code, 0);
  const waiting = await waitFor('pod second waiting for a slot', async () => {
    const p = await getPod('second');
    const w = p.status?.containerStatuses?.[0]?.state?.waiting;
    return w?.reason === 'WaitingForVmSlot' ? w : undefined;
  }, { timeoutMs: 60_000, intervalMs: 500 });
  assert.match(waiting.message ?? '', /all 1 VM slots of node vm-node-1 are in use/);
  assert.ok((await events('second')).some((e) => e.reason === 'WaitingForVmSlot'));

  await kubectl('delete', 'pod', 'web', '--wait=true', '--timeout=120s');
  assert.equal((await cluster.kubectl(['get', 'pod', 'web'])).code, 1, 'the pod object is gone');
  assert.ok((await events('web')).some((e) => e.reason === 'Killing'));
  await waitFor('pod second Ready', async () => {
    const p = await getPod('second');
    return p.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True' ? p : undefined;
  }, { timeoutMs: 240_000, intervalMs: 1000 });
  assert.equal((await vmProcesses()).filter((l) => l.includes('qemu-system')).length, 1, 'the first VM is gone, the second runs');
  await kubectl('delete', 'pod', 'second', '--wait=true', '--timeout=120s');
  await waitFor('no VM left', async () => ((await vmProcesses()).length === 0 ? true : undefined), { timeoutMs: 30_000 });
});

test('a hybrid pod (a sidecar next to the VM) without a container engine waits with SidecarEngineUnavailable naming the socket, and vmlet stays healthy', async () => {
  const two = podManifest('two-containers');
  (two.spec.containers as unknown[]).push({ name: 'sidecar', image: 'busybox:1' });
  assert.equal((await apply(two)).code, 0);
  const pod = await waitFor('pod two-containers waiting for its engine', async () => {
    const p = await getPod('two-containers');
    return p.status?.reason === 'SidecarEngineUnavailable' ? p : undefined;
  }, { timeoutMs: 60_000, intervalMs: 500 });
  assert.equal(pod.status?.phase, 'Pending');
  assert.match(pod.status?.message ?? '', /pod has containers that run on the container engine \(sidecar\) and no container engine for sidecars at .*docker\.sock.*; start the engine or set sidecarEngine/);
  assert.deepEqual(pod.status?.containerStatuses?.map((c) => c.name), ['vm', 'sidecar']);
  assert.ok((await events('two-containers')).some((e) => e.type === 'Warning' && e.reason === 'SidecarEngineUnavailable' && /docker\.sock/.test(e.message ?? '')));
  assert.equal((await vmlet.admin('/healthz')).status, 200);
  assert.equal(vmlet.exitStatus, undefined);
  await kubectl('delete', 'pod', 'two-containers', '--wait=true', '--timeout=60s');
});

test('kill -9 of vmlet with a pod running: the restarted vmlet adopts the same VM process and the pod stays Ready', async () => {
  assert.equal((await apply(podManifest('survivor'))).code, 0);
  const ready = (p: V1Pod) => p.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True';
  const before = await waitFor('pod survivor Ready', async () => {
    const p = await getPod('survivor');
    return ready(p) ? p : undefined;
  }, { timeoutMs: 240_000, intervalMs: 1000 });
  const qemuBefore = (await vmProcesses()).filter((l) => l.includes('qemu-system')).map((l) => l.trim().split(/\s+/)[0]);
  assert.equal(qemuBefore.length, 1);

  await vmlet.signal('SIGKILL');
  vmlet = await VmletProcess.start({ kubeconfig: await cluster.nodeKubeconfig(NODE), nodeName: NODE, dir: path.join(cluster.dir, NODE), args: ['--vm-slots=1'] });
  await vmlet.waitUntilUp(120_000);
  const adopted = await vmlet.waitForLog('the VM adopted', (l) => /adopted those with a pod/.test(l.msg), 60_000);
  assert.deepEqual((adopted as unknown as { adopted: string[] }).adopted, [before.metadata!.uid]);
  const qemuAfter = (await vmProcesses()).filter((l) => l.includes('qemu-system')).map((l) => l.trim().split(/\s+/)[0]);
  assert.deepEqual(qemuAfter, qemuBefore, 'the same QEMU process, not a new boot');
  const after = await getPod('survivor');
  assert.ok(ready(after), JSON.stringify(after.status?.conditions));
  assert.equal(after.status?.containerStatuses?.[0]?.restartCount, 0);
  assert.equal(after.status?.startTime, before.status?.startTime);
  // The adopted VM is still under control: deleting the pod stops it.
  await kubectl('delete', 'pod', 'survivor', '--wait=true', '--timeout=120s');
  await waitFor('no VM left', async () => ((await vmProcesses()).length === 0 ? true : undefined), { timeoutMs: 30_000 });
});

test('configMap, secret, downwardAPI and emptyDir volumes are in the guest at their mountPaths, with items, modes and read-only', async () => {
  await kubectl('create', 'configmap', 'app-config', '--from-literal=greeting=hello', '--from-literal=color=blue');
  await kubectl('create', 'secret', 'generic', 'app-secret', '--from-literal=password=s3cret');
  // The command checks what a user would check, and its exit code says which check failed.
  const script = [
    'test "$(cat /etc/app/greeting)" = hello || exit 11',
    'test "$(cat /etc/app/colors/favourite)" = blue || exit 12',
    'test ! -e /etc/app/color || exit 13',
    'test "$(cat /etc/secret/password)" = s3cret || exit 14',
    'test "$(stat -L -c %a /etc/secret/password)" = 400 || exit 15',
    'test "$(cat /etc/podinfo/name)" = volumes || exit 16',
    'grep -q \'tier="web"\' /etc/podinfo/labels || exit 17',
    'touch /etc/app/x 2>/dev/null && exit 18',
    'echo scratch > /scratch/file && test "$(cat /scratch/file)" = scratch || exit 19',
    'exit 0',
  ].join('\n');
  const manifest = podManifest('volumes', {
    restartPolicy: 'Never',
    volumes: [
      { name: 'config', configMap: { name: 'app-config', items: [{ key: 'greeting', path: 'greeting' }, { key: 'color', path: 'colors/favourite' }] } },
      { name: 'secret', secret: { secretName: 'app-secret', defaultMode: 0o400 } },
      { name: 'podinfo', downwardAPI: { items: [{ path: 'name', fieldRef: { fieldPath: 'metadata.name' } }, { path: 'labels', fieldRef: { fieldPath: 'metadata.labels' } }] } },
      { name: 'scratch', emptyDir: {} },
    ],
  }, {
    command: ['sh', '-c', script],
    volumeMounts: [
      { name: 'config', mountPath: '/etc/app' },
      { name: 'secret', mountPath: '/etc/secret' },
      { name: 'podinfo', mountPath: '/etc/podinfo' },
      { name: 'scratch', mountPath: '/scratch' },
    ],
  });
  (manifest.metadata as Record<string, unknown>).labels = { tier: 'web' };
  assert.equal((await apply(manifest)).code, 0);
  const pod = await waitFor('pod volumes finished', async () => {
    const p = await getPod('volumes');
    return p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed' ? p : undefined;
  }, { timeoutMs: 240_000, intervalMs: 1000 });
  const terminated = pod.status?.containerStatuses?.[0]?.state?.terminated;
  assert.equal(terminated?.exitCode, 0, `the check that failed: exit ${terminated?.exitCode} (see the script)`);
  assert.equal(pod.status?.phase, 'Succeeded');
  await kubectl('delete', 'pod', 'volumes', '--wait=true', '--timeout=120s');
  await waitFor('no VM left', async () => ((await vmProcesses()).length === 0 ? true : undefined), { timeoutMs: 30_000 });
});

test('a pod whose ConfigMap does not exist waits with FailedMount and an Event naming it, and starts once the ConfigMap is created', async () => {
  const manifest = podManifest('no-config', { volumes: [{ name: 'config', configMap: { name: 'missing-config' } }] }, { volumeMounts: [{ name: 'config', mountPath: '/etc/app' }] });
  assert.equal((await apply(manifest)).code, 0);
  const waiting = await waitFor('pod no-config FailedMount', async () => {
    const w = (await getPod('no-config')).status?.containerStatuses?.[0]?.state?.waiting;
    return w?.reason === 'FailedMount' ? w : undefined;
  }, { timeoutMs: 60_000, intervalMs: 500 });
  assert.match(waiting.message ?? '', /configmap "missing-config" not found/);
  // Retried (every 10 s) without an Event per try: the error did not change.
  await new Promise((r) => setTimeout(r, 15_000));
  const failedMounts = (await events('no-config')).filter((e) => e.reason === 'FailedMount' && /missing-config/.test(e.message ?? ''));
  assert.equal(failedMounts.length, 1, 'one FailedMount Event while the error stays the same');
  assert.equal((await getPod('no-config')).status?.containerStatuses?.[0]?.state?.waiting?.reason, 'FailedMount', 'still waiting on the ConfigMap');
  await kubectl('create', 'configmap', 'missing-config', '--from-literal=greeting=late');
  await waitFor('pod no-config Running', async () => ((await getPod('no-config')).status?.phase === 'Running' ? true : undefined), { timeoutMs: 180_000, intervalMs: 1000 });
  await kubectl('delete', 'pod', 'no-config', '--wait=true', '--timeout=120s');
});

test('an image in a registry that needs credentials: ErrImagePull without them, Running with the pod\'s imagePullSecrets', async () => {
  const secure = await startRegistry({ auth: { username: 'ci', password: 's3cret' } });
  try {
    const dockerConfig = path.join(cluster.dir, 'docker-config.json');
    await writeFile(dockerConfig, JSON.stringify({ auths: { [secure.host]: { auth: Buffer.from('ci:s3cret').toString('base64') } } }));
    const privateImage = `${secure.host}/private/test-guest:1`;
    const pushed = await runVmlet(['image', 'push', 'guest:1', privateImage, `--store=${path.join(cluster.dir, 'build-store')}`, `--docker-config=${dockerConfig}`], {}, 240_000);
    assert.equal(pushed.code, 0, pushed.stderr);

    assert.equal((await apply(podManifest('no-creds', {}, { image: privateImage }))).code, 0);
    const waiting = await waitFor('pod no-creds ErrImagePull', async () => {
      const w = (await getPod('no-creds')).status?.containerStatuses?.[0]?.state?.waiting;
      return w?.reason === 'ErrImagePull' || w?.reason === 'ImagePullBackOff' ? w : undefined;
    }, { timeoutMs: 60_000, intervalMs: 500 });
    assert.match(waiting.message ?? '', /401|unauthorized|authentication/i);
    await kubectl('delete', 'pod', 'no-creds', '--wait=true', '--timeout=60s');

    await kubectl('create', 'secret', 'docker-registry', 'regcred', `--docker-server=${secure.host}`, '--docker-username=ci', '--docker-password=s3cret');
    assert.equal((await apply(podManifest('with-creds', { imagePullSecrets: [{ name: 'regcred' }] }, { image: privateImage }))).code, 0);
    await waitFor('pod with-creds Ready', async () => {
      const p = await getPod('with-creds');
      return p.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True' ? p : undefined;
    }, { timeoutMs: 240_000, intervalMs: 1000 });
    await kubectl('delete', 'pod', 'with-creds', '--wait=true', '--timeout=120s');
    await waitFor('no VM left', async () => ((await vmProcesses()).length === 0 ? true : undefined), { timeoutMs: 30_000 });
  } finally {
    await secure.stop();
  }
});
