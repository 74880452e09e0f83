// Pod specs a new user writes that the API server accepts but vmlet cannot run: each must end with a
// reason on the pod (its status, or its container's waiting state) and a Warning Event whose text names the
// field and what to do, without booting a VM when none is needed, and vmlet must stay healthy throughout.
// One vmlet (2 VM slots, one hostPath prefix) against a real kube-apiserver, registry and QEMU; the cases
// run four at a time, and only the one whose failure is found in the guest boots a VM. docs/POD-SPECS.md
// lists what is refused, what waits and what is accepted but not applied.
//
// The expectations are what a user reads with `kubectl get pod -o yaml` / `kubectl describe pod`.
// Cases marked `todo` state the behaviour vmlet should have and does not yet (a runtime change, named in
// the case); node:test reports them without failing the run.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { CoreV1Event, V1Container, V1Pod, V1PodSpec } from '@kubernetes/client-node';
import { startCluster, type Cluster } from '../harness/cluster.ts';
import { runChecked } from '../harness/exec.ts';
import { waitFor } from '../harness/processes.ts';
import { startRegistry, type Registry } from '../harness/registry.ts';
import { killVmProcessesUnder, runVmlet, vmProcessesUnder, VmletProcess } from '../harness/vmlet.ts';
import { ensureTestGuest } from '../guest/build.ts';
import { guestImageSource, importArgs } from '../guest/image.ts';

const NODE = 'spec-node-1';
let cluster: Cluster;
let registry: Registry;
let vmlet: VmletProcess;
/** The Linux test guest, a VM image, in the test registry. */
let vmImage: string;
/** A plain OCI container image (one tar.gz layer, like `docker push` makes), in the test registry. */
let containerImage: string;
/** The directory vmlet may share as hostPath (its --host-path-prefix). */
let shared: string;

const kubectl = async (...args: string[]) => {
  const r = await cluster.kubectl(args);
  assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};
const getPod = async (name: string) => JSON.parse(await kubectl('get', 'pod', name, '-o', 'json')) as V1Pod;
const warnings = async (name: string) =>
  (JSON.parse(await kubectl('get', 'events', '--field-selector', `involvedObject.name=${name}`, '-o', 'json')) as { items: CoreV1Event[] }).items;

/** A pod as a user writes one for this node: a name, the VM image, a command; the case changes the rest. */
function manifest(name: string, spec: Partial<V1PodSpec> = {}, container: Partial<V1Container> = {}) {
  return {
    apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default' },
    spec: {
      nodeName: NODE, automountServiceAccountToken: false, terminationGracePeriodSeconds: 5,
      containers: [{ name: 'app', image: vmImage, command: ['sh', '-c', 'echo hello; exec sleep 100000'], ...container }],
      ...spec,
    },
  };
}

/** What `kubectl describe pod` shows a user: phase, the pod's and the container's reason and message, Warning Events. */
interface Seen {
  phase: string;
  reason: string;
  message: string;
  events: CoreV1Event[];
}

async function seen(name: string): Promise<Seen> {
  const p = await getPod(name);
  const status = p.status?.containerStatuses?.[0];
  const cs = status?.state;
  const last = status?.lastState?.terminated;
  // kubectl describe: State (waiting/terminated reason and message), Last State (how the last run ended).
  const reason = [cs?.waiting?.reason ?? cs?.terminated?.reason ?? p.status?.reason, last?.reason].filter(Boolean).join('/');
  const message = [...new Set([p.status?.message, cs?.waiting?.message, cs?.terminated?.message, last?.message].filter(Boolean))].join(' | ');
  return { phase: p.status?.phase ?? '', reason, message, events: (await warnings(name)).filter((e) => e.type === 'Warning') };
}

interface Case {
  name: string;
  /** What a user would write (the pod's name is the case's). */
  pod: (name: string) => unknown;
  /**
   * The phase vmlet leaves it in: Failed (it can never run as written), Pending (it may, once something
   * changes), or Running for a container that fails to start and is restarted (as the kubelet does).
   */
  phase: 'Failed' | 'Pending' | 'Running';
  /** The reason on the pod or its container, then "/" and its last state's reason when it has one. */
  reason: RegExp;
  /** Words the message (status and Warning Event) must hold: the field, the value, what to do. */
  message: RegExp;
  /** The case needs a VM boot (its failure is found in the guest). */
  boots?: boolean;
  /** The behaviour is not there yet: what is missing. */
  todo?: string;
}

const at = 'spec\\.containers\\[0\\] \\(app\\)';
const failed = { phase: 'Failed' as const };
const cases: Case[] = [
  {
    name: 'vm-container-annotation', ...failed, reason: /^InvalidPodSpec$/,
    pod: (n) => {
      const m = manifest(n, { containers: [{ name: 'app', image: vmImage }, { name: 'log-shipper', image: 'fluent/fluent-bit:3.0' }] });
      return { ...m, metadata: { ...m.metadata, annotations: { 'vmlet.dev/vm-container': 'build' } } };
    },
    message: /metadata\.annotations\["vmlet\.dev\/vm-container"\]: no container named "build" in spec\.containers \(there are: app, log-shipper\); name the container that runs as the VM/,
  },
  {
    name: 'host-network', ...failed, reason: /^UnsupportedPodSpec$/, pod: (n) => manifest(n, { hostNetwork: true }),
    message: /spec\.hostNetwork: true is not supported: a VM pod runs in its own guest kernel and cannot share the host's network namespace; remove spec\.hostNetwork/,
  },
  {
    name: 'host-pid', ...failed, reason: /^UnsupportedPodSpec$/, pod: (n) => manifest(n, { hostPID: true }),
    message: /spec\.hostPID: true is not supported: .*PID namespace; remove spec\.hostPID/,
  },
  {
    name: 'privileged', ...failed, reason: /^UnsupportedPodSpec$/, pod: (n) => manifest(n, {}, { securityContext: { privileged: true } }),
    message: new RegExp(`${at}\\.securityContext\\.privileged: true is not supported: the VM has its own kernel and no access to the host's devices; remove privileged`),
  },
  {
    name: 'host-port', ...failed, reason: /^UnsupportedPodSpec$/, pod: (n) => manifest(n, {}, { ports: [{ containerPort: 80, hostPort: 8080 }] }),
    message: new RegExp(`${at}\\.ports\\[0\\]\\.hostPort: 8080 is not supported: the VM's ports are not published on the host; remove hostPort and reach the pod through its IP or a Service`),
  },
  {
    name: 'pvc-volume', ...failed, reason: /^UnsupportedPodSpec$/,
    pod: (n) => manifest(n, { volumes: [{ name: 'data', persistentVolumeClaim: { claimName: 'data' } }] }, { volumeMounts: [{ name: 'data', mountPath: '/data' }] }),
    message: /spec\.volumes\[0\] \(data\): persistent and CSI volumes need a storage driver on the node, which vmlet does not have yet; VM pods support configMap, secret, downwardAPI, projected, emptyDir and hostPath/,
  },
  {
    name: 'nfs-volume', ...failed, reason: /^UnsupportedPodSpec$/,
    pod: (n) => manifest(n, { volumes: [{ name: 'media', nfs: { server: 'nas.example.com', path: '/exports/media' } }] }, { volumeMounts: [{ name: 'media', mountPath: '/media' }] }),
    message: /spec\.volumes\[0\] \(media\): nfs volumes are not supported; VM pods support configMap/,
  },
  {
    name: 'csi-volume', ...failed, reason: /^UnsupportedPodSpec$/,
    pod: (n) => manifest(n, { volumes: [{ name: 'secrets-store', csi: { driver: 'secrets-store.csi.k8s.io', readOnly: true } }] }, { volumeMounts: [{ name: 'secrets-store', mountPath: '/mnt/secrets' }] }),
    message: /spec\.volumes\[0\] \(secrets-store\): persistent and CSI volumes need a storage driver/,
  },
  {
    name: 'iscsi-volume', ...failed, reason: /^UnsupportedPodSpec$/,
    pod: (n) => manifest(n, { volumes: [{ name: 'lun', iscsi: { targetPortal: '10.0.0.5:3260', iqn: 'iqn.2001-04.com.example:storage.disk1', lun: 0, fsType: 'ext4' } }] }, { volumeMounts: [{ name: 'lun', mountPath: '/lun' }] }),
    message: /spec\.volumes\[0\] \(lun\): iscsi volumes are not supported/,
  },
  {
    name: 'hostpath-outside', ...failed, reason: /^UnsupportedPodSpec$/,
    pod: (n) => manifest(n, { volumes: [{ name: 'logs', hostPath: { path: '/var/log' } }] }, { volumeMounts: [{ name: 'logs', mountPath: '/host-logs' }] }),
    message: /spec\.volumes\[0\] \(logs\)\.hostPath\.path: hostPath "\/var\/log" is outside the host directories this node shares \(.*: its hostPathPrefixes setting\); use a path under one of them, or ask the node's administrator to add one with --host-path-prefix/,
  },
  {
    name: 'hostpath-file-type', ...failed, reason: /^UnsupportedPodSpec$/,
    pod: (n) => manifest(n, { volumes: [{ name: 'conf', hostPath: { path: path.join(shared, 'app.conf'), type: 'File' } }] }, { volumeMounts: [{ name: 'conf', mountPath: '/etc/app.conf' }] }),
    message: /spec\.volumes\[0\] \(conf\)\.hostPath\.type: "File" is not supported: a VM gets host directories \(shared over virtiofs\), not single files/,
  },
  {
    name: 'ephemeral-storage-1-byte', ...failed, reason: /^InvalidVmSize$/,
    pod: (n) => manifest(n, {}, { resources: { limits: { 'ephemeral-storage': '1' } } }),
    message: new RegExp(`${at}\\.resources\\.limits\\.ephemeral-storage: 1 is less than a VM writes to its disk while it boots; give at least 64Mi \\(e\\.g\\. 1Gi\\) or remove the limit`),
  },
  {
    name: 'cpu-1000', ...failed, reason: /^InvalidVmSize$/,
    pod: (n) => manifest(n, {}, { resources: { limits: { cpu: '1000' } } }),
    message: new RegExp(`${at}\\.resources\\.limits\\.cpu: (1000|1k) asks for 1000 vCPUs; a VM on this node may have at most \\d+; lower it to \\d+ or less`),
  },
  {
    name: 'memory-1ti', ...failed, reason: /^InvalidVmSize$/,
    pod: (n) => manifest(n, {}, { resources: { limits: { memory: '1Ti' } } }),
    message: new RegExp(`${at}\\.resources\\.limits\\.memory: 1Ti asks for 1048576 MiB of memory; a VM on this node may have at most \\d+ MiB; lower it to \\d+Mi or less`),
  },
  {
    name: 'memory-1mi', ...failed, reason: /^InvalidVmSize$/,
    pod: (n) => manifest(n, {}, { resources: { requests: { memory: '1Mi' }, limits: { memory: '1Mi' } } }),
    message: new RegExp(`${at}\\.resources\\.limits\\.memory: 1Mi gives the VM 1 MiB of memory; a VM needs at least 64 MiB \\(and its image may ask for more\\); give it e\\.g\\. 512Mi`),
  },
  {
    name: 'image-ref-capitals', ...failed, reason: /^InvalidImageName$/,
    pod: (n) => manifest(n, {}, { image: 'Ubuntu:22.04' }),
    message: new RegExp(`${at}\\.image: "Ubuntu:22\\.04" is not a valid image reference: repository name must be lowercase; write it as \\[registry/\\]repository\\[:tag\\]`),
  },
  {
    name: 'env-resource-ephemeral-storage', ...failed, reason: /^UnsupportedPodSpec$/,
    pod: (n) => manifest(n, {}, { env: [{ name: 'DISK_LIMIT', valueFrom: { resourceFieldRef: { resource: 'limits.ephemeral-storage' } } }] }),
    message: new RegExp(`${at}\\.env\\[0\\] \\(DISK_LIMIT\\)\\.valueFrom\\.resourceFieldRef\\.resource: "limits\\.ephemeral-storage" is not supported in VM pods; use one of limits\\.cpu, limits\\.memory`),
  },
  {
    name: 'windows-os', ...failed, reason: /^UnsupportedPodSpec$/, pod: (n) => manifest(n, { os: { name: 'windows' } }),
    message: /spec\.os\.name: "windows" is not supported; VM pods declare linux \(or leave spec\.os out\)/,
  },
  {
    name: 'relative-workdir', ...failed, reason: /^InvalidPodSpec$/, pod: (n) => manifest(n, {}, { workingDir: 'srv/app' }),
    message: new RegExp(`${at}\\.workingDir: "srv/app" is not an absolute path; write it from / \\(e\\.g\\. /srv/app\\)`),
  },
  // Waiting, not Failed: the kubelet keeps these Pending, since they start once the object, key or image appears.
  {
    name: 'missing-configmap', phase: 'Pending', reason: /^CreateContainerConfigError$/,
    pod: (n) => manifest(n, {}, { envFrom: [{ configMapRef: { name: 'app-settings' } }] }),
    message: new RegExp(`${at}\\.envFrom\\[0\\]\\.configMapRef: configmap "app-settings" not found; create it in namespace default, or set optional: true`),
  },
  {
    name: 'missing-secret-key', phase: 'Pending', reason: /^CreateContainerConfigError$/,
    pod: (n) => manifest(n, {}, { env: [{ name: 'DB_PASSWORD', valueFrom: { secretKeyRef: { name: 'db', key: 'password' } } }] }),
    message: new RegExp(`${at}\\.env\\[0\\] \\(DB_PASSWORD\\)\\.valueFrom\\.secretKeyRef: couldn't find key password in Secret default/db \\(its keys: user\\); add the key to the Secret, correct the key, or set optional: true`),
  },
  {
    name: 'hostpath-not-directory', phase: 'Pending', reason: /^FailedMount$/,
    pod: (n) => manifest(n, { volumes: [{ name: 'conf', hostPath: { path: path.join(shared, 'app.conf') } }] }, { volumeMounts: [{ name: 'conf', mountPath: '/etc/app' }] }),
    message: /MountVolume\.SetUp failed for volume "conf": hostPath \/.*\/app\.conf is not a directory on the node/,
  },
  {
    name: 'never-pull-absent', phase: 'Pending', reason: /^ErrImageNeverPull$/,
    pod: (n) => manifest(n, {}, { image: `${registry.host}/vmlet/not-pulled:2`, imagePullPolicy: 'Never' }),
    message: /Container image "127\.0\.0\.1:\d+\/vmlet\/not-pulled:2" is not present with pull policy of Never/,
  },
  // A failed pull is ErrImagePull, then ImagePullBackOff.
  {
    name: 'image-not-found', phase: 'Pending', reason: /^(ErrImagePull|ImagePullBackOff)$/,
    pod: (n) => manifest(n, {}, { image: `${registry.host}/vmlet/no-such-image:1` }),
    message: /no-such-image:1.*(not found|unknown)/i,
  },
  {
    name: 'container-image', phase: 'Pending', reason: /^(ErrImagePull|ImagePullBackOff)$/,
    pod: (n) => manifest(n, {}, { image: containerImage }),
    message: /oci\/hello:1 is not a VM image \(layer media types: application\/vnd\.oci\.image\.layer\.v1\.tar\+gzip\); expected Tart .* or Agoda .* layers: it is a container image, and vmlet runs VM images only \(build one with `vmlet image import` or Tart/,
  },
  {
    // Pulls the VM image (no boot): the image's memorySizeMin is 256 MiB.
    name: 'memory-below-image-minimum', ...failed, reason: /^InvalidVmSize$/,
    pod: (n) => manifest(n, {}, { resources: { limits: { memory: '128Mi' } } }),
    message: /the image needs at least 256 MiB of memory \(memorySizeMin\); 128 MiB requested/,
  },
  {
    name: 'other-runtime-class', ...failed, reason: /^UnsupportedPodSpec$/,
    pod: (n) => manifest(n, { runtimeClassName: 'gvisor' }),
    message: /spec\.runtimeClassName: RuntimeClass "gvisor" selects handler "runsc", which this node does not have/,
  },
  {
    // A native sidecar runs on the container engine: the VM's image cannot be one.
    name: 'native-sidecar-vm-image', ...failed, reason: /^UnsupportedPodSpec$/,
    pod: (n) => manifest(n, { initContainers: [{ name: 'proxy', image: vmImage, restartPolicy: 'Always', command: ['sleep', '1000'] }] }),
    message: /spec\.initContainers\[0\] \(proxy\): restartPolicy Always makes "proxy" a native sidecar, which runs on the node's container engine, but its image is the VM's/,
  },
];

/** Cases whose failure is found in the guest: each boots a VM. */
const bootCases: Case[] = [
  {
    // As the kubelet: the run ends StartError (exit 128) and the container waits in CrashLoopBackOff, the pod
    // Running (restartPolicy Always), each attempt a Warning Event "Failed" with the guest's reason.
    name: 'command-not-found', phase: 'Running', reason: /^(CrashLoopBackOff|RunContainerError)\/StartError$/, boots: true,
    pod: (n) => manifest(n, {}, { command: ['/usr/local/bin/start-app', '--port=8080'] }),
    message: /failed to start container "app" in the VM: exec \/usr\/local\/bin\/start-app: no such file or directory/,
  },
];

/** Asserts vmlet is up: /healthz answers 200 and the process still runs. */
async function assertHealthy(when: string): Promise<void> {
  assert.equal(vmlet.exitStatus, undefined, `vmlet exited ${when}`);
  const health = await vmlet.admin('/healthz');
  assert.equal(health.status, 200, `/healthz ${when}: ${health.body}`);
}

/** QEMU or virtiofsd processes of one pod's VM (its directory is named by the pod's UID). */
async function vmOf(uid: string): Promise<string[]> {
  return (await vmProcessesUnder(vmlet.dir)).filter((l) => l.includes(uid));
}

function show(s: Seen | undefined): string {
  return JSON.stringify(s ? { ...s, events: s.events.map((e) => `${e.reason}: ${e.message}`) } : s);
}

async function runCase(c: Case): Promise<void> {
  const name = c.name;
  const applied = await cluster.kubectl(['apply', '-f', '-'], { input: JSON.stringify(c.pod(name)) });
  assert.equal(applied.code, 0, `the API server accepts pod ${name}: ${applied.stderr}`);
  const uid = (await getPod(name)).metadata!.uid!;
  try {
    // A case that needs no VM must not boot one: seeing its QEMU ends the wait at once.
    const outcome = await waitFor(`pod ${name}: ${c.phase} with reason ${c.reason} and a Warning Event`, async () => {
      const vm = c.boots ? [] : await vmOf(uid);
      if (vm.length) return { booted: vm, seen: await seen(name) };
      const now = await seen(name);
      const reasonOk = c.reason.test(now.reason) && now.phase === c.phase;
      return reasonOk && c.message.test(now.message) && now.events.some((e) => c.message.test(e.message ?? '')) ? { booted: [], seen: now } : undefined;
    }, { timeoutMs: c.boots ? 300_000 : 150_000, intervalMs: 500, process: vmlet.proc }).catch(async (err: Error) => {
      const now = await seen(name).catch(() => undefined);
      throw new Error(`${err.message.split('\n')[0]}\nwhat the user sees: ${show(now)}`);
    });
    assert.equal(outcome.booted.length, 0, `a VM boots for ${name} (${outcome.booted[0]?.trim().slice(0, 60)}...); what the user sees: ${show(outcome.seen)}`);
    const s = outcome.seen;
    // One message carries the field and the fix; a user reads it once, in kubectl describe.
    assert.ok(!s.message.includes('\n'), 'one line');
    if (!c.boots) {
      assert.deepEqual(await vmOf(uid), [], `no VM runs for ${name}`);
      assert.ok(!s.events.some((e) => e.reason === 'Created'), 'no VM was created');
    }
    await assertHealthy(`after ${name}`);
  } finally {
    const deleted = await cluster.kubectl(['delete', 'pod', name, '--wait=true', '--timeout=120s'], { timeoutMs: 150_000 });
    assert.equal(deleted.code, 0, `kubectl delete pod ${name}: ${deleted.stderr}`);
    await waitFor(`no VM left for ${name}`, async () => ((await vmOf(uid)).length === 0 ? true : undefined), { timeoutMs: 60_000 });
  }
}

/** Pushes a one-layer OCI container image (what `docker build && docker push` makes) with plain HTTP requests. */
async function pushContainerImage(reg: Registry, repo: string, tag: string, dir: string): Promise<string> {
  await mkdir(path.join(dir, 'rootfs'), { recursive: true });
  await writeFile(path.join(dir, 'rootfs', 'hello'), '#!/bin/sh\necho hello from a container\n', { mode: 0o755 });
  await runChecked('tar', ['-C', path.join(dir, 'rootfs'), '-cf', path.join(dir, 'layer.tar'), 'hello']);
  const tar = await readFile(path.join(dir, 'layer.tar'));
  await runChecked('gzip', ['-kn', path.join(dir, 'layer.tar')]);
  const layer = await readFile(path.join(dir, 'layer.tar.gz'));
  const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
  const config = Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux', config: { Cmd: ['/hello'] }, rootfs: { type: 'layers', diff_ids: [sha(tar)] },
  }));
  for (const blob of [layer, config]) {
    const start = await fetch(`${reg.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    assert.equal(start.status, 202, `start upload: ${await start.text()}`);
    const location = new URL(start.headers.get('location')!, reg.url);
    location.searchParams.set('digest', sha(blob));
    const put = await fetch(location, { method: 'PUT', body: blob, headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(put.status, 201, `upload: ${await put.text()}`);
  }
  const manifestJson = JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha(layer), size: layer.length }],
  });
  const put = await fetch(`${reg.url}/v2/${repo}/manifests/${tag}`, { method: 'PUT', body: manifestJson, headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' } });
  assert.equal(put.status, 201, `manifest: ${await put.text()}`);
  return `${reg.host}/${repo}:${tag}`;
}

before(async () => {
  const guest = await ensureTestGuest();
  [cluster, registry] = await Promise.all([startCluster(), startRegistry({})]);
  const build = path.join(cluster.dir, 'build-store');
  assert.equal((await runVmlet([...importArgs('guest:1', await guestImageSource(guest)), `--store=${build}`], {}, 240_000)).code, 0);
  vmImage = `${registry.host}/vmlet/test-guest:1`;
  assert.equal((await runVmlet(['image', 'push', 'guest:1', vmImage, `--store=${build}`], {}, 240_000)).code, 0);
  containerImage = await pushContainerImage(registry, 'oci/hello', '1', path.join(cluster.dir, 'oci-image'));
  shared = path.join(cluster.dir, 'shared');
  await mkdir(shared, { recursive: true });
  await writeFile(path.join(shared, 'app.conf'), 'port: 8080\n');
  await kubectl('create', 'serviceaccount', 'default');
  await kubectl('create', 'configmap', 'app-config', '--from-literal=settings.yaml=debug: true');
  await kubectl('create', 'secret', 'generic', 'db', '--from-literal=user=app');
  const runtimeClass = { apiVersion: 'node.k8s.io/v1', kind: 'RuntimeClass', metadata: { name: 'gvisor' }, handler: 'runsc' };
  assert.equal((await cluster.kubectl(['apply', '-f', '-'], { input: JSON.stringify(runtimeClass) })).code, 0);
  vmlet = await VmletProcess.start({
    kubeconfig: await cluster.nodeKubeconfig(NODE), nodeName: NODE, dir: path.join(cluster.dir, NODE),
    args: ['--vm-slots=2', `--host-path-prefix=${shared}`],
  });
  await vmlet.waitUntilUp(120_000);
});

after(async () => {
  await vmlet?.stop();
  // VMs outlive vmlet on purpose; the test's own must not outlive the test.
  if (vmlet) await killVmProcessesUnder(vmlet.dir);
  await Promise.all([cluster?.stop(), registry?.stop()]);
});

// Four at a time (the node's pod workers); the case that boots a VM first, as it takes longest. Each case
// checks the QEMU processes of its own pod only, so they do not see each other's.
describe('specs vmlet cannot run, each with its reason', { concurrency: 4 }, () => {
  for (const c of [...bootCases, ...cases]) {
    test(`${c.name}: ${c.phase} with ${c.reason.source}${c.boots ? ' (boots a VM)' : ''}`, c.todo ? { todo: c.todo } : {}, () => runCase(c));
  }
});

test('at the end: vmlet is healthy, no VM is left, and the API server accepted every case', async () => {
  assert.ok(cases.length + bootCases.length >= 20, `${cases.length + bootCases.length} cases`);
  await assertHealthy('at the end');
  assert.deepEqual(await vmProcessesUnder(vmlet.dir), []);
  const ready = await vmlet.admin('/readyz');
  assert.equal(ready.status, 200, ready.body);
});
