// Probes and lifecycle hooks of a VM pod, against a real kube-apiserver, kubectl, registry and QEMU. One VM
// runs a small server (Node.js in the test guest): HTTP on 8080 (its /healthz answers the code in
// /tmp/status), and the gRPC health service on 9090 (NOT_SERVING while /tmp/sick exists). The pod has a
// startup probe (tcpSocket), a readiness probe (httpGet) and a liveness probe (grpc), a postStart and a
// preStop hook; the hooks and the main process's SIGTERM leave their marks in a hostPath volume, so the
// test reads them on the host even after the VM is gone.
import assert from 'node:assert/strict';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { V1Pod } from '@kubernetes/client-node';
import { runCommand } from '../harness/exec.ts';
import { waitFor } from '../harness/processes.ts';
import { isReady, VmPods } from '../harness/vm-pods.ts';

let env: VmPods;
let shared: string;

const SERVER = `
const fs = require('fs'), http = require('http'), http2 = require('http2');
const mark = (m) => fs.appendFileSync('/shared/order', m + '\\n');
try { fs.unlinkSync('/tmp/sick'); } catch {}
process.on('SIGTERM', () => { mark('term'); process.exit(0); });
http.createServer((req, res) => {
  let code = 200;
  try { code = Number(fs.readFileSync('/tmp/status', 'utf8').trim()) || 200; } catch {}
  res.writeHead(req.url === '/healthz' ? code : 404).end('ok');
}).listen(8080, () => console.log('http on 8080'));
http2.createServer((req, res) => {
  const serving = !fs.existsSync('/tmp/sick');
  res.writeHead(200, { 'content-type': 'application/grpc' });
  const msg = Buffer.from([0x08, serving ? 1 : 2]);
  const frame = Buffer.alloc(5); frame.writeUInt32BE(msg.length, 1);
  res.addTrailers({ 'grpc-status': '0' });
  req.on('data', () => {});
  req.on('end', () => res.end(Buffer.concat([frame, msg])));
}).listen(9090);
`;

before(async () => {
  const nodeName = 'probes-node';
  // The hostPath volume lives under the cluster's dir (removed with it): the prefix is known only then.
  env = await VmPods.start({ nodeName, vmletArgs: ['--vm-slots=1', '--crash-loop-back-off-initial=1s', `--host-path-prefix=/tmp`] });
  shared = path.join(env.cluster.dir, 'shared');
  await mkdir(shared, { recursive: true });
});

after(async () => {
  await env?.stop();
});

const unhealthy = async (name: string) => (await env.events(name)).filter((e) => e.reason === 'Unhealthy').map((e) => e.message ?? '');

test('probes flip readiness and restart the container; postStart runs after it starts, preStop before it stops, within the grace period', async () => {
  await env.apply(env.manifest('probed', {
    command: ['node', '-e', SERVER],
    volumeMounts: [{ name: 'shared', mountPath: '/shared' }],
    startupProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1, failureThreshold: 120 },
    readinessProbe: { httpGet: { path: '/healthz', port: 'http' }, periodSeconds: 1, failureThreshold: 1 },
    livenessProbe: { grpc: { port: 9090 }, periodSeconds: 2, failureThreshold: 2, timeoutSeconds: 5 },
    ports: [{ name: 'http', containerPort: 8080 }],
    lifecycle: {
      postStart: { exec: { command: ['sh', '-c', 'echo poststart >> /shared/order'] } },
      preStop: { exec: { command: ['sh', '-c', 'echo prestop >> /shared/order'] } },
    },
  }, { volumes: [{ name: 'shared', hostPath: { path: shared } }], terminationGracePeriodSeconds: 20 }));
  const pod = await env.waitReady('probed', 300_000);
  const c = (p: V1Pod) => p.status!.containerStatuses![0]!;
  assert.equal(c(pod).started, true);
  assert.match(await readFile(path.join(shared, 'order'), 'utf8'), /^poststart\n/);

  // Readiness follows /healthz both ways; the container is not restarted for it.
  await env.kubectl('exec', 'probed', '--', 'sh', '-c', 'echo 500 > /tmp/status');
  await env.waitForPod('probed', 'not Ready', (p) => !isReady(p) && p, 60_000);
  assert.ok((await unhealthy('probed')).includes('Readiness probe failed: HTTP probe failed with statuscode: 500'), (await unhealthy('probed')).join('\n'));
  await env.kubectl('exec', 'probed', '--', 'sh', '-c', 'echo 200 > /tmp/status');
  const readyAgain = await env.waitReady('probed', 60_000);
  assert.equal(c(readyAgain).restartCount, 0);

  // Liveness (gRPC health) fails twice: preStop, SIGTERM, and the process starts again in the same VM.
  const [qemu] = await env.qemuPids(pod.metadata!.uid);
  await env.kubectl('exec', 'probed', '--', 'touch', '/tmp/sick');
  const restarted = await env.waitForPod('probed', 'restarted for liveness, Ready again', (p) => c(p).restartCount === 1 && isReady(p) && p, 120_000);
  assert.equal(c(restarted).lastState?.terminated?.exitCode, 0, 'it exited on SIGTERM by itself');
  assert.deepEqual(await env.qemuPids(pod.metadata!.uid), [qemu], 'the same VM');
  assert.ok((await unhealthy('probed')).some((m) => m.startsWith('Liveness probe failed: service unhealthy (responded with "NOT_SERVING")')));
  assert.ok((await env.events('probed')).some((e) => e.reason === 'Killing' && e.message === 'Container vm failed liveness probe, will be restarted'));
  assert.equal(await readFile(path.join(shared, 'order'), 'utf8'), 'poststart\nprestop\nterm\npoststart\n');

  // Deletion: preStop, then SIGTERM, then the VM goes.
  await env.delete('probed');
  assert.equal(await readFile(path.join(shared, 'order'), 'utf8'), 'poststart\nprestop\nterm\npoststart\nprestop\nterm\n');
  await waitFor('its VM stopped', async () => ((await env.qemuPids(pod.metadata!.uid)).length === 0 ? true : undefined), { timeoutMs: 60_000 });
});

test('a failing postStart hook kills the container (FailedPostStartHook) and the restart policy takes over', async () => {
  await env.apply(env.manifest('bad-hook', {
    lifecycle: { postStart: { exec: { command: ['sh', '-c', 'echo cannot set up >&2; exit 7'] } } },
  }, { restartPolicy: 'Never' }));
  const pod = await env.waitForPod('bad-hook', 'Failed', (p) => p.status?.phase === 'Failed' && p, 300_000);
  const t = pod.status?.containerStatuses?.[0]?.state?.terminated;
  assert.ok(t, JSON.stringify(pod.status?.containerStatuses));
  assert.match(t.message ?? '', /PostStartHookError: Exec lifecycle hook \(\[sh -c echo cannot set up >&2; exit 7\]\) for Container "vm" in Pod "bad-hook_default\(.*\)" failed - error: command 'sh -c echo cannot set up >&2; exit 7' exited with 7: cannot set up/);
  assert.ok((await env.events('bad-hook')).some((e) => e.type === 'Warning' && e.reason === 'FailedPostStartHook' && e.message === 'PostStartHook failed'));
  await env.delete('bad-hook');
});

test('a ConfigMap change reaches the guest while the pod runs; a projected service account token is one the API server issued for this pod', async () => {
  await env.kubectl('create', 'configmap', 'settings', '--from-literal=greeting=hello');
  await env.kubectl('create', 'service', 'clusterip', 'my-db', '--tcp=5432:5432');
  await env.apply(env.manifest('configured', {
    env: [{ name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } }],
    volumeMounts: [
      { name: 'settings', mountPath: '/etc/settings' }, { name: 'token', mountPath: '/var/run/secrets/tokens' },
      // subPath: one key of the ConfigMap as a file; subPathExpr: a directory of an emptyDir named after the pod.
      { name: 'settings', mountPath: '/etc/app/greeting.txt', subPath: 'greeting' },
      { name: 'scratch', mountPath: '/work', subPathExpr: '$(POD_NAME)' },
    ],
  }, {
    automountServiceAccountToken: false,
    volumes: [
      { name: 'settings', configMap: { name: 'settings' } },
      { name: 'scratch', emptyDir: {} },
      { name: 'token', projected: { sources: [{ serviceAccountToken: { path: 'vmlet-token', audience: 'vmlet-test', expirationSeconds: 3600 } }] } },
    ],
  }));
  const pod = await env.waitReady('configured');
  assert.equal(await env.kubectl('exec', 'configured', '--', 'cat', '/etc/settings/greeting'), 'hello');
  assert.equal(await env.kubectl('exec', 'configured', '--', 'cat', '/etc/app/greeting.txt'), 'hello', 'the subPath file');
  assert.notEqual((await env.cluster.kubectl(['exec', 'configured', '--', 'sh', '-c', 'echo x > /etc/app/greeting.txt'])).code, 0, 'read-only, as config volumes are');
  await env.kubectl('exec', 'configured', '--', 'sh', '-c', 'echo from-the-vm > /work/out');
  const hostFile = (await runCommand('find', [env.vmlet.dir, '-path', `*/${pod.metadata!.uid}/volumes/scratch/configured/out`])).stdout.trim();
  assert.ok(hostFile, 'the subPathExpr directory is <emptyDir>/<pod name> on the host');
  assert.equal(await readFile(hostFile, 'utf8'), 'from-the-vm\n');
  // Service links: the namespace's Services and the API server's own, as on any node.
  const ip = (svc: string) => env.kubectl('get', 'service', svc, '-o', 'jsonpath={.spec.clusterIP}');
  assert.equal(await env.kubectl('exec', 'configured', '--', 'sh', '-c', 'echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT $MY_DB_SERVICE_HOST $MY_DB_PORT'),
    `${await ip('kubernetes')}:443 ${await ip('my-db')} tcp://${await ip('my-db')}:5432\n`);

  const token = await env.kubectl('exec', 'configured', '--', 'cat', '/var/run/secrets/tokens/vmlet-token');
  const review = JSON.parse(await env.cluster.kubectl(['create', '-o', 'json', '-f', '-'], {
    input: JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: ['vmlet-test'] } }),
  }).then((r) => r.stdout)) as { status: { authenticated?: boolean; user?: { username?: string; extra?: Record<string, string[]> } } };
  assert.equal(review.status.authenticated, true, JSON.stringify(review.status));
  assert.equal(review.status.user?.username, 'system:serviceaccount:default:default');
  assert.deepEqual(review.status.user?.extra?.['authentication.kubernetes.io/pod-uid'], [pod.metadata!.uid]);

  await env.kubectl('patch', 'configmap', 'settings', '--type=merge', '-p', JSON.stringify({ data: { greeting: 'bonjour' } }));
  await waitFor('the new value in the guest', async () => {
    const r = await env.cluster.kubectl(['exec', 'configured', '--', 'cat', '/etc/settings/greeting']);
    return r.stdout === 'bonjour' ? true : undefined;
  }, { timeoutMs: 150_000, intervalMs: 2000 });
  await env.delete('configured');
});
