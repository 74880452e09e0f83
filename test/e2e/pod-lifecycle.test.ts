// The pod lifecycle of a VM pod, against a real kube-apiserver, kubectl, registry and QEMU: init containers
// run in the VM in order (a failed one again after its back-off), each restartPolicy after the main process
// exits, a command the VM cannot start, a VM that dies (booted again from a fresh clone), and
// activeDeadlineSeconds. vmlet runs with a 1 s crash-loop back-off so that restarts come quickly.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { V1Pod } from '@kubernetes/client-node';
import { waitFor } from '../harness/processes.ts';
import { isReady, VmPods } from '../harness/vm-pods.ts';

let env: VmPods;

before(async () => {
  env = await VmPods.start({ nodeName: 'lifecycle-node', vmletArgs: ['--vm-slots=2', '--crash-loop-back-off-initial=1s', '--crash-loop-back-off-max=4s'] });
});

after(async () => {
  await env?.stop();
});

const main = (p: V1Pod) => p.status?.containerStatuses?.[0];
const reasons = async (name: string) => (await env.events(name)).map((e) => `${e.type}/${e.reason}: ${e.message}`);

test('init containers run in the VM in order before the main process; a failing one runs again; each has its logs', async () => {
  // `fetch` fails on its first run (no marker yet) and succeeds on the second; `prepare` sees its output.
  await env.apply(env.manifest('with-init', { command: ['sh', '-c', 'cat /tmp/steps; exec sleep 100000'] }, {
    initContainers: [
      { name: 'fetch', image: env.image, command: ['sh', '-c', 'echo fetch >> /tmp/steps; if [ ! -e /tmp/fetched ]; then touch /tmp/fetched; echo first try fails >&2; exit 2; fi; echo fetched'] },
      { name: 'prepare', image: env.image, command: ['sh', '-c', 'echo prepare >> /tmp/steps; echo "prepared after $(grep -c fetch /tmp/steps) fetch runs"'], env: [{ name: 'STEP', value: 'two' }] },
    ],
  }));
  const pod = await env.waitReady('with-init');
  const inits = pod.status?.initContainerStatuses ?? [];
  assert.deepEqual(inits.map((s) => [s.name, s.state?.terminated?.reason, s.state?.terminated?.exitCode, s.restartCount]), [
    ['fetch', 'Completed', 0, 1],
    ['prepare', 'Completed', 0, 0],
  ]);
  assert.equal(inits[0]?.lastState?.terminated?.exitCode, 2, 'the failed first run is the last state');
  assert.equal(pod.status?.conditions?.find((c) => c.type === 'Initialized')?.status, 'True');
  assert.equal(await env.kubectl('logs', 'with-init', '-c', 'prepare'), 'prepared after 2 fetch runs\n');
  assert.equal(await env.kubectl('logs', 'with-init', '-c', 'fetch'), 'fetched\n');
  assert.equal(await env.kubectl('logs', 'with-init', '-c', 'fetch', '--previous'), 'first try fails\n');
  await waitFor('the main process logged the steps', async () => ((await env.kubectl('logs', 'with-init')) === 'fetch\nfetch\nprepare\n' ? true : undefined), { timeoutMs: 30_000, intervalMs: 500 });
  const events = await reasons('with-init');
  assert.ok(events.some((e) => e.startsWith('Normal/Started: Started init container fetch')), events.join('\n'));
  await env.delete('with-init');
});

test('restartPolicy OnFailure restarts a failing main process in the same VM with back-off until it succeeds; Never fails the pod with the exit code', async () => {
  // Fails twice (markers on the VM's disk), then succeeds.
  const script = 'n=$(cat /tmp/runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > /tmp/runs; echo "run $n"; [ $n -ge 3 ]';
  await env.apply(env.manifest('on-failure', { command: ['sh', '-c', script] }, { restartPolicy: 'OnFailure' }));
  await env.apply(env.manifest('never', { command: ['sh', '-c', 'echo bye; exit 3'] }, { restartPolicy: 'Never' }));
  const done = await env.waitForPod('on-failure', 'Succeeded', (p) => p.status?.phase === 'Succeeded' && p);
  assert.equal(main(done)?.restartCount, 2);
  assert.equal(main(done)?.state?.terminated?.exitCode, 0);
  assert.equal(main(done)?.lastState?.terminated?.exitCode, 1);
  assert.ok((await reasons('on-failure')).some((e) => e.startsWith('Warning/BackOff: Back-off restarting failed container vm in pod on-failure_default')));
  const failed = await env.waitForPod('never', 'Failed', (p) => p.status?.phase === 'Failed' && p);
  assert.equal(main(failed)?.state?.terminated?.exitCode, 3);
  assert.equal(main(failed)?.state?.terminated?.reason, 'Error');
  assert.equal(main(failed)?.restartCount, 0);
  const uids = [done.metadata!.uid!, failed.metadata!.uid!];
  await waitFor('their VMs stopped', async () => ((await Promise.all(uids.map((u) => env.qemuPids(u)))).flat().length === 0 ? true : undefined), { timeoutMs: 60_000 });
  await Promise.all([env.delete('on-failure'), env.delete('never')]);
});

test('a command the VM cannot start is StartError, then CrashLoopBackOff with the kubelet\'s message, and the VM is not booted again', async () => {
  await env.apply(env.manifest('no-such-command', { command: ['no-such-command', '--flag'] }));
  const pod = await env.waitForPod('no-such-command', 'CrashLoopBackOff after a StartError', (p) => {
    const c = main(p);
    return c?.state?.waiting?.reason === 'CrashLoopBackOff' && c.lastState?.terminated?.reason === 'StartError' && (c.restartCount ?? 0) >= 1 && p;
  });
  const c = main(pod)!;
  assert.match(c.lastState?.terminated?.message ?? '', /no-such-command: executable file not found in \$PATH/);
  assert.equal(c.lastState?.terminated?.exitCode, 128);
  assert.match(c.state?.waiting?.message ?? '', /^back-off \d+s restarting failed container=vm pod=no-such-command_default\(/);
  assert.equal((await env.qemuPids(pod.metadata!.uid)).length, 1, 'one VM, kept: the process is what restarts');
  assert.ok((await reasons('no-such-command')).some((e) => /^Warning\/Failed: Error: failed to start container "vm" in the VM: exec no-such-command: executable file not found/.test(e)));
  assert.equal((await env.vmlet.admin('/healthz')).status, 200);
  await env.delete('no-such-command');
});

test('a VM that dies is booted again from a fresh clone of its image, and the pod is Ready again with the restart counted', async () => {
  await env.apply(env.manifest('crashy-vm'));
  const first = await env.waitReady('crashy-vm');
  const uid = first.metadata!.uid!;
  await env.kubectl('exec', 'crashy-vm', '--', 'sh', '-c', 'echo scratch > /root/scratch && sync');
  assert.equal(await env.kubectl('exec', 'crashy-vm', '--', 'cat', '/root/scratch'), 'scratch\n');
  const [pid] = await env.qemuPids(uid);
  assert.ok(pid);
  process.kill(pid, 'SIGKILL');
  const again = await env.waitForPod('crashy-vm', 'Ready after a new boot', (p) => isReady(p) && (main(p)?.restartCount ?? 0) >= 1 && p);
  assert.equal(main(again)?.lastState?.terminated?.reason, 'VmExited');
  const [pid2] = await env.qemuPids(uid);
  assert.ok(pid2 && pid2 !== pid, 'a new QEMU process');
  const r = await env.cluster.kubectl(['exec', 'crashy-vm', '--', 'cat', '/root/scratch']);
  assert.notEqual(r.code, 0, 'what the dead VM wrote is gone: a fresh clone');
  assert.ok((await reasons('crashy-vm')).some((e) => e.startsWith('Warning/VmExited: The VM exited')));
  await env.delete('crashy-vm');
});

test('activeDeadlineSeconds: the pod fails with DeadlineExceeded once it has run that long, and its VM is stopped', async () => {
  await env.apply(env.manifest('deadline', {}, { activeDeadlineSeconds: 40 }));
  const pod = await env.waitForPod('deadline', 'Failed with DeadlineExceeded', (p) => p.status?.phase === 'Failed' && p, 300_000);
  assert.equal(pod.status?.reason, 'DeadlineExceeded');
  assert.equal(pod.status?.message, 'Pod was active on the node longer than the specified deadline');
  assert.ok((await reasons('deadline')).includes('Normal/DeadlineExceeded: Pod was active on the node longer than the specified deadline'));
  await waitFor('its VM stopped', async () => ((await env.qemuPids(pod.metadata!.uid)).length === 0 ? true : undefined), { timeoutMs: 60_000 });
  await env.delete('deadline');
});

test('kill -9 of vmlet with two running pods: the new vmlet adopts both VMs (same processes), they stay Ready throughout, and exec still gets the container env', async () => {
  await env.apply(env.manifest('keep-a', { env: [{ name: 'WHO', value: 'a' }] }));
  await env.apply(env.manifest('keep-b', {
    command: ['sh', '-c', 'echo ok > /tmp/ready; exec sleep 100000'], env: [{ name: 'WHO', value: 'b' }],
    readinessProbe: { exec: { command: ['cat', '/tmp/ready'] }, periodSeconds: 2 },
  }));
  const [a, b] = await Promise.all([env.waitReady('keep-a'), env.waitReady('keep-b')]);
  const readySince = (p: V1Pod) => p.status?.conditions?.find((c) => c.type === 'Ready')?.lastTransitionTime;
  const pids = [...(await env.qemuPids(a.metadata!.uid)), ...(await env.qemuPids(b.metadata!.uid))];
  assert.equal(pids.length, 2);

  await env.restartVmlet();
  const adopted = await env.vmlet.waitForLog('the VMs adopted', (l) => /adopted those with a pod/.test(l.msg), 60_000);
  assert.deepEqual([...(adopted as unknown as { adopted: string[] }).adopted].sort(), [a.metadata!.uid, b.metadata!.uid].sort());
  assert.deepEqual([...(await env.qemuPids(a.metadata!.uid)), ...(await env.qemuPids(b.metadata!.uid))], pids, 'the same QEMU processes');
  // Long enough for the readiness probe to run a few times under the new vmlet.
  await new Promise((r) => setTimeout(r, 8000));
  for (const [before, name] of [[a, 'keep-a'], [b, 'keep-b']] as const) {
    const now = await env.pod(name);
    assert.ok(isReady(now), `${name} Ready`);
    assert.equal(readySince(now), readySince(before), `${name} never left Ready`);
    assert.equal(main(now)?.restartCount, 0);
    assert.equal(await env.kubectl('exec', name, '--', 'sh', '-c', 'echo $WHO'), `${name.slice(-1)}\n`);
  }
  // keep-a stays for the next test.
  await env.delete('keep-b');
  await waitFor('its VM stopped', async () => ((await env.qemuPids(b.metadata!.uid)).length === 0 ? true : undefined), { timeoutMs: 60_000 });
});

test('a new image for the VM container (kubectl set image) stops its VM and boots a new one from that image; the pod is Ready again with one restart', async () => {
  // keep-a's VM was booted by the vmlet before the kill -9 above: the image it runs comes from pod.json.
  const before = await env.pod('keep-a');
  const uid = before.metadata!.uid!;
  const [pid] = await env.qemuPids(uid);
  assert.ok(pid);
  const bootId = async () => (await env.kubectl('exec', 'keep-a', '--', 'cat', '/proc/sys/kernel/random/boot_id')).trim();
  const bootBefore = await bootId();
  // The same image named by its digest: another image reference, which is what the kubelet compares.
  const digest = /@(sha256:[a-f0-9]{64})$/.exec(main(before)!.imageID)![1]!;
  const byDigest = `${env.image.replace(/:[^:/]+$/, '')}@${digest}`;
  await env.kubectl('set', 'image', 'pod/keep-a', `vm=${byDigest}`);
  const after = await env.waitForPod('keep-a', 'Ready on the new image', (p) => isReady(p) && main(p)?.image === byDigest && main(p)?.restartCount === 1 && p);
  assert.equal(main(after)?.imageID, `${byDigest}@${digest}`);
  assert.match(main(after)?.lastState?.terminated?.message ?? '', /image changed to .*@sha256:/);
  assert.notEqual(await bootId(), bootBefore, 'a new boot');
  const pids = await env.qemuPids(uid);
  assert.equal(pids.length, 1, 'one VM: the old one stopped');
  assert.notEqual(pids[0], pid, 'a new QEMU process');
  assert.equal(await env.kubectl('exec', 'keep-a', '--', 'sh', '-c', 'echo $WHO'), 'a\n', 'the container env in the new VM');
  assert.ok((await reasons('keep-a')).some((e) => /^Normal\/Killing: Container vm definition changed .* will be restarted$/.test(e)), (await reasons('keep-a')).join('\n'));
  await env.delete('keep-a');
  await waitFor('its VM stopped', async () => ((await env.qemuPids(uid)).length === 0 ? true : undefined), { timeoutMs: 60_000 });
});

test('an emptyDir that outgrows its sizeLimit gets the pod evicted, in the kubelet\'s words, and its VM stopped', async () => {
  await env.apply(env.manifest('too-much-scratch', {
    command: ['sh', '-c', 'dd if=/dev/zero of=/scratch/fill bs=1024 count=4096 && sync; exec sleep 100000'],
    volumeMounts: [{ name: 'scratch', mountPath: '/scratch' }],
  }, { volumes: [{ name: 'scratch', emptyDir: { sizeLimit: '1Mi' } }] }));
  const pod = await env.waitForPod('too-much-scratch', 'Failed with Evicted', (p) => p.status?.phase === 'Failed' && p, 300_000);
  assert.equal(pod.status?.reason, 'Evicted');
  assert.equal(pod.status?.message, 'Usage of EmptyDir volume "scratch" exceeds the limit "1Mi". ');
  assert.ok((await reasons('too-much-scratch')).some((e) => e.startsWith('Warning/Evicted: Usage of EmptyDir volume "scratch" exceeds the limit "1Mi"')));
  await waitFor('its VM stopped', async () => ((await env.qemuPids(pod.metadata!.uid)).length === 0 ? true : undefined), { timeoutMs: 60_000 });
  await env.delete('too-much-scratch');
});
