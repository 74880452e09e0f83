// Hybrid pods (issue 8), against a real kube-apiserver, kubectl, registry, QEMU and podman: the VM
// container runs in the VM, every other container runs as a sidecar on podman's Docker API. A pod shaped
// like GitLab Runner's Kubernetes executor pod (a "build" VM container and a "helper" sidecar): exec into
// both (two kernels), logs of the sidecar, both Running/Ready, the helper reaches a port the VM serves on
// the pod IP; a sidecar that exits is restarted with back-off; kill -9 of vmlet keeps the sidecar running
// and the new vmlet adopts it; deleting the pod removes the sidecar from the engine. Sidecars' hooks and
// probes (readiness through a port another sidecar publishes), the network following a restart of the
// sidecar that owns it, and a restart for a new image in the pod's spec.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { V1Pod } from '@kubernetes/client-node';
import { waitFor } from '../harness/processes.ts';
import { VmPods } from '../harness/vm-pods.ts';

let env: VmPods;
/** A hostPath directory the pods may use (vmlet's --host-path-prefix). */
const hostDir = mkdtempSync(path.join(tmpdir(), 'vmlet-hybrid-host-'));

/** An IPv4 address of this host that podman's bridge network reaches: the Node's (and so the pods') IP. */
function hostAddress(): string {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  throw new Error('no non-loopback IPv4 address on this host');
}

before(async () => {
  env = await VmPods.start({
    nodeName: 'hybrid-node', podman: true, nodeIp: hostAddress(),
    vmletArgs: ['--vm-slots=2', '--crash-loop-back-off-initial=1s', '--crash-loop-back-off-max=4s', `--host-path-prefix=${hostDir}`],
  });
});

after(async () => {
  await env?.stop();
  rmSync(hostDir, { recursive: true, force: true });
});

const status = (p: V1Pod, name: string) => p.status?.containerStatuses?.find((s) => s.name === name);

/** Our containers of a pod on podman; state "running" or what podman says otherwise ("Exited (1) ..."). */
async function engineContainers(uid: string): Promise<Array<{ id: string; name: string; state: string }>> {
  const r = await env.podman!.cli(['ps', '-a', '--no-trunc', '--filter', `label=vmlet.dev/pod-uid=${uid}`, '--format', '{{.ID}} {{.Names}} {{.Status}}']);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.trim().split('\n').filter(Boolean).map((l) => {
    const [id, name, ...status] = l.split(' ');
    return { id: id!, name: name!, state: status[0] === 'Up' ? 'running' : status.join(' ') };
  });
}

// The VM serves on 8080; the helper asks it through the pod IP, as GitLab's helper talks to the build.
const SERVER = "require('http').createServer((q, s) => s.end('hello from the VM\\n')).listen(8080, '0.0.0.0')";

test('a GitLab-Runner-shaped pod: the build container is the VM, the helper a sidecar; exec, logs, status, and the helper reaches the VM on the pod IP', async () => {
  await env.apply(env.manifest('runner', { name: 'build', command: ['node', '-e', SERVER], ports: [{ containerPort: 8080 }] }, {
    containers: [
      { name: 'build', image: env.image, command: ['node', '-e', SERVER], ports: [{ containerPort: 8080 }] },
      {
        name: 'helper', image: env.busybox, command: ['sh', '-c', 'echo helper up on $(POD_NAME); exec sleep 100000'],
        env: [
          { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
          { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
        ],
        volumeMounts: [{ name: 'repo', mountPath: '/builds' }],
      },
    ],
    volumes: [{ name: 'repo', emptyDir: {} }],
  }));
  const pod = await env.waitReady('runner');
  assert.deepEqual(pod.status?.containerStatuses?.map((s) => [s.name, Object.keys(s.state ?? {})[0], s.ready]), [['build', 'running', true], ['helper', 'running', true]]);
  assert.match(status(pod, 'helper')?.containerID ?? '', /^docker:\/\/[0-9a-f]{64}$/);

  // Two kernels: the VM's own, and the host's (the sidecar's).
  const vmKernel = (await env.kubectl('exec', 'runner', '-c', 'build', '--', 'uname', '-r')).trim();
  const hostKernel = (await env.kubectl('exec', 'runner', '-c', 'helper', '--', 'uname', '-r')).trim();
  assert.notEqual(vmKernel, hostKernel);
  assert.match(await env.kubectl('exec', 'runner', '-c', 'helper', '--', 'sh', '-c', 'echo $POD_IP; ls -d /builds; hostname'), /\/builds\nrunner\n$/);
  await waitFor('the helper logged', async () => ((await env.kubectl('logs', 'runner', '-c', 'helper')) === 'helper up on runner\n' ? true : undefined), { timeoutMs: 30_000, intervalMs: 500 });

  // The emptyDir is the same host directory for the VM (virtiofs) and the sidecar (bind mount).
  await env.kubectl('exec', 'runner', '-c', 'helper', '--', 'sh', '-c', 'echo from-helper > /builds/marker');

  // The helper reaches the VM's containerPort on the pod IP (forwarded from the host IP into the guest).
  const podIP = pod.status?.podIP;
  const got = await waitFor('the helper reaches the VM on the pod IP', async () => {
    // busybox-static's wget crashes in its resolver; nc speaks the HTTP.
    const r = await env.cluster.kubectl(['exec', 'runner', '-c', 'helper', '--', 'sh', '-c', `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${podIP} 8080`]);
    return r.code === 0 && r.stdout.includes('200 OK') ? r.stdout : undefined;
  }, { timeoutMs: 60_000, intervalMs: 1000 });
  assert.match(got, /\r?\n\r?\nhello from the VM\n$/);
  const events = (await env.events('runner')).map((e) => `${e.type}/${e.reason}: ${e.message}`);
  assert.ok(events.some((e) => e.startsWith('Normal/Pulling: Pulling image') && e.includes('busybox')), events.join('\n'));
  assert.ok(events.some((e) => e.startsWith('Normal/Started: Started container helper')), events.join('\n'));
});

test('kill -9 of vmlet: the sidecar keeps running (the same engine container) and the new vmlet adopts it; delete removes it', async () => {
  const before = await env.pod('runner');
  const uid = before.metadata!.uid!;
  const [running] = (await engineContainers(uid)).filter((c) => c.state === 'running');
  assert.ok(running, 'the helper runs on podman');
  await env.restartVmlet();
  assert.deepEqual((await engineContainers(uid)).filter((c) => c.state === 'running').map((c) => c.id), [running.id]);
  // The adopted sidecar answers exec and keeps its restart count.
  await waitFor('exec into the adopted helper', async () => {
    const r = await env.cluster.kubectl(['exec', 'runner', '-c', 'helper', '--', 'cat', '/builds/marker']);
    return r.code === 0 && r.stdout === 'from-helper\n' ? true : undefined;
  }, { timeoutMs: 60_000, intervalMs: 1000 });
  const after = await env.waitReady('runner');
  assert.equal(status(after, 'helper')?.containerID, `docker://${running.id}`);
  assert.equal(status(after, 'helper')?.restartCount, 0);

  await env.delete('runner');
  assert.deepEqual(await engineContainers(uid), []);
});

test('a sidecar that exits 1 is restarted with back-off, each run a new engine container', async () => {
  await env.apply(env.manifest('crashy', {}, {
    containers: [
      { name: 'vm', image: env.image, command: ['sh', '-c', 'exec sleep 100000'] },
      { name: 'flaky', image: env.busybox, command: ['sh', '-c', 'echo run; sleep 1; exit 1'] },
    ],
  }));
  const pod = await env.waitForPod('crashy', 'the sidecar restarted twice', (p) => ((status(p, 'flaky')?.restartCount ?? 0) >= 2 ? p : undefined), 240_000);
  const flaky = status(pod, 'flaky')!;
  assert.equal(flaky.lastState?.terminated?.exitCode, 1);
  assert.equal(status(pod, 'vm')?.ready, true);
  const events = (await env.events('crashy')).map((e) => `${e.type}/${e.reason}: ${e.message}`);
  assert.ok(events.some((e) => e.startsWith('Warning/BackOff: Back-off restarting failed container flaky')), events.join('\n'));
  assert.equal(await env.kubectl('logs', 'crashy', '-c', 'flaky', '--previous'), 'run\n');
  await env.delete('crashy');
  assert.deepEqual(await engineContainers(pod.metadata!.uid!), []);
});

test('sidecars have hooks and probes, share the first one\'s network after it restarts, and restart for a new image', async () => {
  // "proxy" owns the pod's network; "web" joins it and serves on 8082, which "proxy" publishes on the pod IP.
  const web = (image: string) => ({
    name: 'web', image, command: ['sh', '-c', 'mkdir -p /www && echo web > /www/index.html && exec httpd -f -p 8082 -h /www'],
    ports: [{ containerPort: 8082 }],
    readinessProbe: { httpGet: { path: '/', port: 8082 }, periodSeconds: 1 },
    livenessProbe: { exec: { command: ['sh', '-c', 'test ! -e /tmp/die'] }, periodSeconds: 1, failureThreshold: 1 },
    lifecycle: { preStop: { exec: { command: ['sh', '-c', 'echo stopped-by-prestop > /host/prestop'] } } },
    volumeMounts: [{ name: 'host', mountPath: '/host' }],
  });
  await env.apply(env.manifest('probed', {}, {
    containers: [
      { name: 'vm', image: env.image, command: ['sh', '-c', 'exec sleep 100000'] },
      {
        name: 'proxy', image: env.busybox, command: ['sh', '-c', 'exec sleep 100000'],
        lifecycle: { postStart: { exec: { command: ['sh', '-c', 'echo post-started > /tmp/post-started'] } } },
        readinessProbe: { exec: { command: ['cat', '/tmp/ready'] }, periodSeconds: 1 },
      },
      web(env.busybox!),
    ],
    volumes: [{ name: 'host', hostPath: { path: hostDir } }],
  }));
  const state = (p: V1Pod) => p.status?.containerStatuses?.map((s) => `${s.name}:${Object.keys(s.state ?? {})[0]}:${s.ready}:${s.restartCount}`).join(' ');
  // web is Ready through its httpGet probe on the published port; proxy runs but is not Ready (no /tmp/ready).
  let pod = await env.waitForPod('probed', 'web Ready, proxy not', (p) => (state(p) === 'vm:running:true:0 proxy:running:false:0 web:running:true:0' ? p : undefined), 240_000);
  assert.equal(pod.status?.conditions?.find((c) => c.type === 'Ready')?.status, 'False');
  assert.equal(await env.kubectl('exec', 'probed', '-c', 'proxy', '--', 'cat', '/tmp/post-started'), 'post-started\n', 'postStart ran');
  await env.kubectl('exec', 'probed', '-c', 'proxy', '--', 'touch', '/tmp/ready');
  pod = await env.waitReady('probed');
  assert.equal(state(pod), 'vm:running:true:0 proxy:running:true:0 web:running:true:0');

  // A failed liveness probe: Killing, preStop, a new run.
  await env.kubectl('exec', 'probed', '-c', 'web', '--', 'touch', '/tmp/die');
  pod = await env.waitForPod('probed', 'web restarted for its liveness probe', (p) => ((status(p, 'web')?.restartCount ?? 0) >= 1 && status(p, 'web')?.ready ? p : undefined), 120_000);
  assert.match(status(pod, 'web')?.lastState?.terminated?.message ?? '', /Container web failed liveness probe, will be restarted/);
  assert.equal(readFileSync(path.join(hostDir, 'prestop'), 'utf8'), 'stopped-by-prestop\n', 'preStop ran before the kill');
  rmSync(path.join(hostDir, 'prestop'));
  let events = (await env.events('probed')).map((e) => `${e.type}/${e.reason}: ${e.message}`);
  assert.ok(events.some((e) => e === 'Normal/Killing: Container web failed liveness probe, will be restarted'), events.join('\n'));
  assert.ok(events.some((e) => e.startsWith('Warning/Unhealthy: Readiness probe failed')), events.join('\n'));

  // The network's owner dies: it is started again, and web is restarted to join its new network.
  const proxyId = status(pod, 'proxy')!.containerID!.replace('docker://', '');
  assert.equal((await env.podman!.cli(['kill', proxyId])).code, 0);
  pod = await env.waitForPod('probed', 'proxy and web in a new network', (p) => ((status(p, 'proxy')?.restartCount ?? 0) >= 1 && (status(p, 'web')?.restartCount ?? 0) >= 2 && status(p, 'web')?.ready ? p : undefined), 120_000);
  events = (await env.events('probed')).map((e) => `${e.type}/${e.reason}: ${e.message}`);
  assert.ok(events.some((e) => e.startsWith('Normal/Killing: Container web shares the network of container proxy')), events.join('\n'));
  const viaLocalhost = await waitFor('proxy reaches web on localhost', async () => {
    const r = await env.cluster.kubectl(['exec', 'probed', '-c', 'proxy', '--', 'sh', '-c', `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 127.0.0.1 8082`]);
    return r.code === 0 && r.stdout.includes('200 OK') ? r.stdout : undefined;
  }, { timeoutMs: 30_000, intervalMs: 1000 });
  assert.match(viaLocalhost, /\nweb\n$/);

  // A new image for web in the pod's spec: it is restarted with it.
  const busybox2 = await env.podman!.buildBusyboxImage(env.registry, 'busybox:2');
  const before = status(pod, 'web')!.restartCount;
  await env.kubectl('patch', 'pod', 'probed', '--type=json', '-p', JSON.stringify([{ op: 'replace', path: '/spec/containers/2/image', value: busybox2 }]));
  pod = await env.waitForPod('probed', 'web runs the new image', (p) => (status(p, 'web')?.image === busybox2 && status(p, 'web')!.restartCount > before && status(p, 'web')?.ready ? p : undefined), 120_000);
  events = (await env.events('probed')).map((e) => `${e.type}/${e.reason}: ${e.message}`);
  assert.ok(events.some((e) => e === 'Normal/Killing: Container web definition changed, will be restarted'), events.join('\n'));
  assert.ok(events.some((e) => e.startsWith('Normal/Pulling: Pulling image') && e.includes('busybox:2')), events.join('\n'));

  // Deletion runs web's preStop.
  rmSync(path.join(hostDir, 'prestop'), { force: true });
  await env.delete('probed');
  assert.equal(readFileSync(path.join(hostDir, 'prestop'), 'utf8'), 'stopped-by-prestop\n', 'preStop ran at deletion');
  // web joined proxy's network: both are removed all the same (the one that joined first).
  assert.deepEqual(await engineContainers(pod.metadata!.uid!), []);
});

test('init containers: a native sidecar starts first and stays, a container-image init container runs on the engine in its network, one with the VM image runs in the VM', async () => {
  const work = [{ name: 'work', mountPath: '/work' }];
  await env.apply(env.manifest('inits', {}, {
    initContainers: [
      {
        name: 'proxy', image: env.busybox, restartPolicy: 'Always', ports: [{ containerPort: 8090 }],
        command: ['sh', '-c', 'mkdir -p /www && echo proxied > /www/index.html && exec httpd -f -p 8090 -h /www'],
        startupProbe: { tcpSocket: { port: 8090 }, periodSeconds: 1 },
      },
      {
        // Reaches the native sidecar on localhost: they share a network namespace.
        name: 'fetch', image: env.busybox, volumeMounts: work,
        command: ['sh', '-c', `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 127.0.0.1 8090 | tail -1 > /work/fetched && echo fetched`],
      },
      { name: 'in-vm', image: env.image, volumeMounts: work, command: ['sh', '-c', 'cp /work/fetched /work/seen-by-vm'] },
    ],
    containers: [{ name: 'vm', image: env.image, volumeMounts: work, command: ['sh', '-c', 'cat /work/seen-by-vm; exec sleep 100000'] }],
    volumes: [{ name: 'work', emptyDir: {} }],
  }));
  const pod = await env.waitReady('inits');
  const inits = pod.status?.initContainerStatuses ?? [];
  assert.deepEqual(inits.map((s) => [s.name, Object.keys(s.state ?? {})[0], s.state?.terminated?.exitCode]), [['proxy', 'running', undefined], ['fetch', 'terminated', 0], ['in-vm', 'terminated', 0]]);
  assert.equal(inits[0]?.started, true);
  assert.match(inits[1]?.containerID ?? '', /^docker:\/\/[0-9a-f]{64}$/);
  assert.equal(cond(pod, 'Initialized'), 'True');
  assert.equal(await env.kubectl('logs', 'inits', '-c', 'fetch'), 'fetched\n');
  await waitFor('the VM container printed what the chain fetched', async () => ((await env.kubectl('logs', 'inits', '-c', 'vm')) === 'proxied\n' ? true : undefined), { timeoutMs: 30_000, intervalMs: 500 });
  // The native sidecar keeps running beside the VM; exec reaches it.
  assert.equal(await env.kubectl('exec', 'inits', '-c', 'proxy', '--', 'cat', '/www/index.html'), 'proxied\n');
  const uid = pod.metadata!.uid!;
  await env.delete('inits');
  assert.deepEqual(await engineContainers(uid), []);
});

function cond(p: V1Pod, type: string): string | undefined {
  return p.status?.conditions?.find((c) => c.type === type)?.status;
}

test('a GitLab-Runner-style job through kubectl attach: the helper fetches into the shared volume from its shell\'s stdin, the build runs it in the VM from its own', async () => {
  const repo = [{ name: 'repo', mountPath: '/builds' }];
  await env.apply(env.manifest('job', {}, {
    restartPolicy: 'Never',
    containers: [
      { name: 'build', image: env.image, command: ['sh'], stdin: true, stdinOnce: true, volumeMounts: repo },
      { name: 'helper', image: env.busybox, command: ['sh'], stdin: true, stdinOnce: true, volumeMounts: repo },
    ],
    volumes: [{ name: 'repo', emptyDir: {} }],
  }));
  await env.waitReady('job');
  const attach = async (container: string, script: string): Promise<string> => {
    const r = await env.cluster.kubectl(['attach', 'job', '-c', container, '-i', '-q'], { input: script });
    assert.equal(r.code, 0, `attach -c ${container}: ${r.stderr}`);
    return r.stdout;
  };
  const fetched = await attach('helper', 'mkdir -p /builds/project && echo 1.2.3 > /builds/project/VERSION && echo \'echo "built $(cat /builds/project/VERSION) on $(uname -m)"\' > /builds/project/build.sh && echo fetched\nexit 0\n');
  assert.equal(fetched, 'fetched\n');
  const built = await attach('build', 'sh /builds/project/build.sh\nexit 0\n');
  assert.match(built, /^built 1\.2\.3 on \S+\n$/);
  // Both shells ended with 0 under restartPolicy Never: the job pod Succeeded.
  const pod = await env.waitForPod('job', 'Succeeded', (p) => (p.status?.phase === 'Succeeded' ? p : undefined), 120_000);
  assert.deepEqual(pod.status?.containerStatuses?.map((s) => [s.name, s.state?.terminated?.exitCode]), [['build', 0], ['helper', 0]]);
  await env.delete('job');
});
