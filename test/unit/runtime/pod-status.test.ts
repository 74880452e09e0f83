import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { V1Pod, V1PodStatus } from '@kubernetes/client-node';
import { podStatus, rfc3339, statusChanged, type PodRuntimeState, type PodStatusJson } from '../../../src/runtime/pod/status.ts';

const t0 = new Date('2026-05-01T10:00:00.750Z');
const t1 = new Date('2026-05-01T10:00:30.250Z');
const t2 = new Date('2026-05-01T10:01:00Z');
const basePod: V1Pod = { metadata: { name: 'web', namespace: 'default', uid: 'uid-1' }, spec: { nodeName: 'n', containers: [{ name: 'vm', image: 'ghcr.io/x/vm:1' }] } };

const pending: PodRuntimeState = {
  phase: 'Pending',
  waiting: { reason: 'WaitingForVmSlot', message: 'all 2 VM slots are in use' },
  hostIP: '10.0.0.5',
  vmReady: false,
  container: { name: 'vm', image: 'ghcr.io/x/vm:1', state: { kind: 'waiting', reason: 'ContainerCreating' }, ready: false, started: false, restartCount: 0 },
};
const running: PodRuntimeState = {
  phase: 'Running',
  startTime: t0,
  hostIP: '10.0.0.5',
  podIP: '10.244.0.7',
  vmReady: true,
  container: {
    name: 'vm', image: 'ghcr.io/x/vm:1', imageID: 'ghcr.io/x/vm@sha256:abc', containerID: 'vmlet://uid-1',
    state: { kind: 'running', startedAt: t1 }, ready: true, started: true, restartCount: 0,
  },
};

const cond = (s: PodStatusJson, type: string) => s.conditions?.find((c) => c.type === type);
/** What the server would hand back: the posted JSON, round-tripped, inside a pod. */
const posted = (s: PodStatusJson): V1Pod => ({ ...basePod, status: JSON.parse(JSON.stringify(s)) as V1PodStatus });

test('times are RFC 3339 to the second, like metav1.Time', () => {
  assert.equal(rfc3339(t0), '2026-05-01T10:00:00Z');
  assert.equal(rfc3339(new Date('2026-05-01T10:00:59.999Z')), '2026-05-01T10:00:59Z');
});

test('a pod waiting for a VM slot is Pending with the reason, scheduled, not ready to start containers', () => {
  const s = podStatus(basePod, pending, t0);
  assert.equal(s.phase, 'Pending');
  assert.equal(s.reason, 'WaitingForVmSlot');
  assert.equal(s.message, 'all 2 VM slots are in use');
  assert.equal(s.hostIP, '10.0.0.5');
  assert.deepEqual(s.hostIPs, [{ ip: '10.0.0.5' }]);
  assert.equal(s.podIP, undefined);
  assert.equal(s.startTime, undefined);
  assert.deepEqual(
    s.conditions?.map((c) => [c.type, c.status, c.reason, c.lastTransitionTime]),
    [
      ['PodReadyToStartContainers', 'False', undefined, '2026-05-01T10:00:00Z'],
      ['Initialized', 'True', undefined, '2026-05-01T10:00:00Z'],
      ['ContainersReady', 'False', 'ContainersNotReady', '2026-05-01T10:00:00Z'],
      ['Ready', 'False', 'ContainersNotReady', '2026-05-01T10:00:00Z'],
      ['PodScheduled', 'True', undefined, '2026-05-01T10:00:00Z'],
    ],
  );
  assert.equal(cond(s, 'Ready')?.message, 'containers with unready status: [vm]');
  assert.deepEqual(s.containerStatuses, [
    { name: 'vm', image: 'ghcr.io/x/vm:1', imageID: '', started: false, ready: false, restartCount: 0, state: { waiting: { reason: 'ContainerCreating' } }, lastState: {} },
  ]);
});

test('a running, ready VM: every condition True, IPs, start time and the container status in wire shape', () => {
  const s = podStatus(basePod, running, t2);
  assert.equal(s.phase, 'Running');
  assert.equal(s.reason, undefined);
  assert.equal(s.podIP, '10.244.0.7');
  assert.deepEqual(s.podIPs, [{ ip: '10.244.0.7' }]);
  assert.equal(s.startTime, '2026-05-01T10:00:00Z');
  assert.deepEqual(s.conditions?.map((c) => `${c.type}=${c.status}`), ['PodReadyToStartContainers=True', 'Initialized=True', 'ContainersReady=True', 'Ready=True', 'PodScheduled=True']);
  assert.deepEqual(s.containerStatuses?.[0], {
    name: 'vm', image: 'ghcr.io/x/vm:1', imageID: 'ghcr.io/x/vm@sha256:abc', containerID: 'vmlet://uid-1',
    started: true, ready: true, restartCount: 0, state: { running: { startedAt: '2026-05-01T10:00:30Z' } }, lastState: {},
  });
});

test('lastTransitionTime is kept for conditions whose status did not change and moves for those that did', () => {
  const first = podStatus(basePod, pending, t0);
  const booted = podStatus(posted(first), { ...running, container: { ...running.container, ready: false } }, t1);
  assert.equal(cond(booted, 'PodScheduled')?.lastTransitionTime, '2026-05-01T10:00:00Z');
  assert.equal(cond(booted, 'Ready')?.lastTransitionTime, '2026-05-01T10:00:00Z');
  assert.equal(cond(booted, 'PodReadyToStartContainers')?.lastTransitionTime, '2026-05-01T10:00:30Z');
  const ready = podStatus(posted(booted), running, t2);
  assert.equal(cond(ready, 'Ready')?.lastTransitionTime, '2026-05-01T10:01:00Z');
  assert.equal(cond(ready, 'PodReadyToStartContainers')?.lastTransitionTime, '2026-05-01T10:00:30Z');
});

test('kept times also come from a status typed with Date objects', () => {
  const current: V1PodStatus = { conditions: [{ type: 'PodScheduled', status: 'True', lastTransitionTime: t0 }] };
  const s = podStatus({ ...basePod, status: current }, running, t2);
  assert.equal(cond(s, 'PodScheduled')?.lastTransitionTime, '2026-05-01T10:00:00Z');
});

test('the start time is kept from the current status when the runtime does not know it (after a vmlet restart)', () => {
  const s = podStatus({ ...basePod, status: { startTime: '2026-04-30T08:00:00Z' as unknown as Date } }, { ...running, startTime: undefined }, t2);
  assert.equal(s.startTime, '2026-04-30T08:00:00Z');
});

test('a restarted main process: restartCount and the last termination in lastState', () => {
  const s = podStatus(basePod, {
    ...running,
    container: { ...running.container, restartCount: 2, lastTermination: { exitCode: 137, reason: 'Error', startedAt: t0, finishedAt: t1 } },
  }, t2);
  assert.equal(s.containerStatuses?.[0]?.restartCount, 2);
  assert.deepEqual(s.containerStatuses?.[0]?.lastState, {
    terminated: { exitCode: 137, reason: 'Error', startedAt: '2026-05-01T10:00:00Z', finishedAt: '2026-05-01T10:00:30Z', containerID: 'vmlet://uid-1' },
  });
});

test('a pod whose process exited 0 under restartPolicy Never is Succeeded, with PodCompleted and a terminated state', () => {
  const s = podStatus(basePod, {
    ...running,
    phase: 'Succeeded',
    vmReady: false,
    container: { ...running.container, ready: false, state: { kind: 'terminated', exitCode: 0, reason: 'Completed', startedAt: t1, finishedAt: t2 } },
  }, t2);
  assert.equal(s.phase, 'Succeeded');
  assert.equal(cond(s, 'Ready')?.reason, 'PodCompleted');
  assert.equal(cond(s, 'ContainersReady')?.reason, 'PodCompleted');
  assert.equal(cond(s, 'PodReadyToStartContainers')?.status, 'False');
  assert.equal(s.containerStatuses?.[0]?.started, false);
  assert.deepEqual(s.containerStatuses?.[0]?.state, {
    terminated: { exitCode: 0, reason: 'Completed', startedAt: '2026-05-01T10:00:30Z', finishedAt: '2026-05-01T10:01:00Z', containerID: 'vmlet://uid-1' },
  });
});

test('a killed process carries its signal and message', () => {
  const s = podStatus(basePod, { ...running, phase: 'Failed', container: { ...running.container, ready: false, state: { kind: 'terminated', exitCode: 137, signal: 9, reason: 'OOMKilled', message: 'out of memory', finishedAt: t2 } } }, t2);
  assert.deepEqual(s.containerStatuses?.[0]?.state, { terminated: { exitCode: 137, signal: 9, reason: 'OOMKilled', message: 'out of memory', finishedAt: '2026-05-01T10:01:00Z', containerID: 'vmlet://uid-1' } });
});

test('a refused spec: Failed with the reason on the pod and on the waiting container', () => {
  const s = podStatus(basePod, { ...pending, phase: 'Failed', waiting: { reason: 'UnsupportedPodSpec', message: 'spec.hostNetwork: ...' }, container: { ...pending.container, state: { kind: 'waiting', reason: 'UnsupportedPodSpec', message: 'spec.hostNetwork: ...' } } }, t0);
  assert.equal(s.phase, 'Failed');
  assert.equal(s.reason, 'UnsupportedPodSpec');
  assert.deepEqual(s.containerStatuses?.[0]?.state, { waiting: { reason: 'UnsupportedPodSpec', message: 'spec.hostNetwork: ...' } });
});

test('with init containers, Initialized is False until the VM container starts (or the runtime says so)', () => {
  const withInit: V1Pod = { ...basePod, spec: { ...basePod.spec!, initContainers: [{ name: 'migrate', image: 'x' }, { name: 'seed', image: 'x' }] } };
  const waiting = podStatus(withInit, pending, t0);
  assert.equal(cond(waiting, 'Initialized')?.status, 'False');
  assert.equal(cond(waiting, 'Initialized')?.reason, 'ContainersNotInitialized');
  assert.equal(cond(waiting, 'Initialized')?.message, 'containers with incomplete status: [migrate seed]');
  assert.equal(cond(podStatus(withInit, { ...pending, initialized: true }, t0), 'Initialized')?.status, 'True');
  assert.equal(cond(podStatus(withInit, running, t0), 'Initialized')?.status, 'True');
});

test('readiness gates hold Ready back until their conditions are True; those conditions are kept', () => {
  const gated: V1Pod = { ...basePod, spec: { ...basePod.spec!, readinessGates: [{ conditionType: 'lb.example.com/ready' }] } };
  const missing = podStatus(gated, running, t2);
  assert.equal(cond(missing, 'Ready')?.status, 'False');
  assert.equal(cond(missing, 'Ready')?.reason, 'ReadinessGatesNotReady');
  assert.equal(cond(missing, 'Ready')?.message, 'corresponding condition of pod readiness gate "lb.example.com/ready" does not exist.');
  assert.equal(cond(missing, 'ContainersReady')?.status, 'True');

  const falseGate = { ...gated, status: { conditions: [{ type: 'lb.example.com/ready', status: 'False', lastTransitionTime: '2026-05-01T09:00:00Z' as unknown as Date }] } };
  assert.match(cond(podStatus(falseGate, running, t2), 'Ready')?.message ?? '', /is not "True", but False/);

  const open = { ...gated, status: { conditions: [{ type: 'lb.example.com/ready', status: 'True', lastTransitionTime: '2026-05-01T09:00:00Z' as unknown as Date }] } };
  const s = podStatus(open, running, t2);
  assert.equal(cond(s, 'Ready')?.status, 'True');
  assert.deepEqual(cond(s, 'lb.example.com/ready'), { type: 'lb.example.com/ready', status: 'True', lastTransitionTime: '2026-05-01T09:00:00Z' });
});

test('qosClass set by the API server is carried along', () => {
  assert.equal(podStatus({ ...basePod, status: { qosClass: 'Guaranteed' } }, running, t2).qosClass, 'Guaranteed');
});

test('statusChanged: a status read back from the server equals the one posted, whatever its key order', () => {
  const s = podStatus(basePod, running, t2);
  assert.equal(statusChanged(undefined, s), true);
  const back = JSON.parse(JSON.stringify(s)) as PodStatusJson;
  // The server answers in Go struct order, with lastProbeTime null and fields vmlet does not write.
  const reordered = {
    qosClass: 'BestEffort',
    ...back,
    conditions: [...back.conditions!].reverse().map((c) => ({ lastProbeTime: null, ...c })),
    containerStatuses: back.containerStatuses!.map(({ state, name, ...rest }) => ({ state, name, ...rest })),
  } as unknown as V1PodStatus;
  assert.equal(statusChanged(reordered, podStatus(posted(s), running, t2)), false);
});

test('statusChanged ignores condition times only', () => {
  const a = podStatus(basePod, running, t1);
  const b = podStatus(basePod, running, t2);
  assert.notEqual(a.conditions?.[0]?.lastTransitionTime, b.conditions?.[0]?.lastTransitionTime);
  assert.equal(statusChanged(a, b), false);
  const change = (s: Partial<PodRuntimeState>) => statusChanged(a, podStatus(basePod, { ...running, ...s }, t1));
  assert.equal(change({ podIP: '10.244.0.8' }), true);
  assert.equal(change({ phase: 'Failed' }), true);
  assert.equal(change({ waiting: { reason: 'X', message: 'y' } }), true);
  assert.equal(change({ container: { ...running.container, restartCount: 1 } }), true);
  assert.equal(change({ container: { ...running.container, ready: false } }), true);
  assert.equal(change({ container: { ...running.container, state: { kind: 'running', startedAt: t2 } } }), true);
});

test('statusChanged sees a pod-level reason that should go away', () => {
  const waiting = podStatus(basePod, { ...running, waiting: { reason: 'WaitingForVmSlot', message: 'm' } }, t1);
  assert.equal(statusChanged(waiting, podStatus(basePod, running, t1)), true);
});

test('statusChanged compares Date-typed times with their posted strings', () => {
  const s = podStatus(basePod, running, t2);
  const typed = { ...s, startTime: new Date('2026-05-01T10:00:00Z') } as unknown as V1PodStatus;
  assert.equal(statusChanged(typed, s), false);
});

test('init containers: those not started wait in PodInitializing, a completed one is terminated, and Initialized names the incomplete ones', () => {
  const pod: V1Pod = { ...basePod, spec: { ...basePod.spec!, initContainers: [{ name: 'fetch', image: 'ghcr.io/x/vm:1' }, { name: 'migrate', image: 'ghcr.io/x/vm:1' }] } };
  const state: PodRuntimeState = {
    ...running, phase: 'Pending', initialized: false,
    container: { ...pending.container, state: { kind: 'waiting', reason: 'PodInitializing' } },
    initContainers: [{
      name: 'fetch', image: 'ghcr.io/x/vm:1', imageID: 'ghcr.io/x/vm@sha256:abc', containerID: 'vmlet://uid-1-fetch',
      state: { kind: 'terminated', exitCode: 0, reason: 'Completed', startedAt: t0, finishedAt: t1 }, ready: false, started: false, restartCount: 0,
    }],
  };
  const s = podStatus(pod, state, t2);
  assert.deepEqual(cond(s, 'Initialized'), { type: 'Initialized', status: 'False', reason: 'ContainersNotInitialized', message: 'containers with incomplete status: [migrate]', lastTransitionTime: '2026-05-01T10:01:00Z' });
  assert.deepEqual(s.initContainerStatuses?.map((c) => [c.name, c.state]), [
    ['fetch', { terminated: { exitCode: 0, reason: 'Completed', startedAt: '2026-05-01T10:00:00Z', finishedAt: '2026-05-01T10:00:30Z', containerID: 'vmlet://uid-1-fetch' } }],
    ['migrate', { waiting: { reason: 'PodInitializing' } }],
  ]);
  assert.deepEqual(s.containerStatuses?.[0]?.state, { waiting: { reason: 'PodInitializing' } });
  assert.ok(statusChanged(posted(podStatus(pod, { ...state, initContainers: [] }, t2)).status, s), 'a change in an init container is a change to post');
});

test('a crash-looping container keeps its last termination, message included, beside the back-off it waits in', () => {
  const s = podStatus(basePod, {
    ...running,
    container: {
      ...running.container, restartCount: 3, ready: false, started: false,
      state: { kind: 'waiting', reason: 'CrashLoopBackOff', message: 'back-off 40s restarting failed container=vm pod=web_default(uid-1)' },
      lastTermination: { exitCode: 128, reason: 'StartError', message: 'exec nosuch: executable file not found in $PATH', finishedAt: t1 },
    },
  }, t2);
  assert.deepEqual(s.containerStatuses?.[0]?.state, { waiting: { reason: 'CrashLoopBackOff', message: 'back-off 40s restarting failed container=vm pod=web_default(uid-1)' } });
  assert.deepEqual(s.containerStatuses?.[0]?.lastState, { terminated: { exitCode: 128, reason: 'StartError', message: 'exec nosuch: executable file not found in $PATH', finishedAt: '2026-05-01T10:00:30Z', containerID: 'vmlet://uid-1' } });
});

test('hybrid pods: containerStatuses list every spec container in spec order, and Ready needs all of them', () => {
  const pod: V1Pod = {
    metadata: { name: 'runner', namespace: 'default', uid: 'uid-2', annotations: { 'vmlet.dev/vm-container': 'build' } },
    spec: { nodeName: 'n', containers: [{ name: 'helper', image: 'busybox' }, { name: 'build', image: 'ghcr.io/x/vm:1' }, { name: 'svc', image: 'redis' }] },
  };
  const build = { ...running.container, name: 'build' };
  const helper = { name: 'helper', image: 'busybox', imageID: 'busybox@sha256:1', containerID: 'docker://abc', state: { kind: 'running' as const, startedAt: t1 }, ready: true, started: true, restartCount: 2 };
  // "svc" not created yet: it waits in ContainerCreating, and the pod is not ready.
  const s = podStatus(pod, { ...running, container: build, sidecars: [helper] }, t2);
  assert.deepEqual(s.containerStatuses?.map((c) => [c.name, Object.keys(c.state ?? {})[0], c.ready, c.restartCount]), [
    ['helper', 'running', true, 2], ['build', 'running', true, 0], ['svc', 'waiting', false, 0],
  ]);
  assert.equal(s.containerStatuses?.[0]?.containerID, 'docker://abc');
  assert.equal(s.containerStatuses?.[2]?.state?.waiting?.reason, 'ContainerCreating');
  assert.equal(cond(s, 'ContainersReady')?.status, 'False');
  assert.equal(cond(s, 'ContainersReady')?.message, 'containers with unready status: [svc]');
  assert.equal(cond(s, 'Ready')?.status, 'False');
  const svc = { ...helper, name: 'svc', image: 'redis', restartCount: 0 };
  const all = podStatus(pod, { ...running, container: build, sidecars: [helper, svc] }, t2);
  assert.equal(cond(all, 'ContainersReady')?.status, 'True');
  assert.equal(cond(all, 'Ready')?.status, 'True');
  // The VM container unready: named alone.
  const vmDown = podStatus(pod, { ...running, container: { ...build, ready: false }, sidecars: [helper, svc] }, t2);
  assert.equal(cond(vmDown, 'Ready')?.message, 'containers with unready status: [build]');
});

test('native sidecars: listed with the init containers, complete once started, and counted for readiness', () => {
  const pod: V1Pod = { ...basePod, spec: { ...basePod.spec!, initContainers: [{ name: 'proxy', image: 'envoy', restartPolicy: 'Always' }, { name: 'migrate', image: 'busybox' }] } };
  const proxy = { name: 'proxy', image: 'envoy', containerID: 'docker://p', state: { kind: 'running' as const, startedAt: t0 }, ready: false, started: false, restartCount: 0 };
  const migrate = { name: 'migrate', image: 'busybox', containerID: 'docker://m', state: { kind: 'terminated' as const, exitCode: 0, reason: 'Completed', startedAt: t0, finishedAt: t1 }, ready: false, started: false, restartCount: 0 };
  // Not started yet (its startup probe has not passed): Initialized names it.
  let s = podStatus(pod, { ...running, initialized: false, initContainers: [], nativeSidecars: [proxy] }, t2);
  assert.equal(cond(s, 'Initialized')?.message, 'containers with incomplete status: [proxy migrate]');
  assert.deepEqual(s.initContainerStatuses?.map((c) => [c.name, Object.keys(c.state ?? {})[0]]), [['proxy', 'running'], ['migrate', 'waiting']]);
  // Started, migrate done, the VM container Ready; the pod is Ready only with the native sidecar ready too.
  s = podStatus(pod, { ...running, initialized: true, initContainers: [migrate], nativeSidecars: [{ ...proxy, started: true }] }, t2);
  assert.equal(cond(s, 'Initialized')?.status, 'True');
  assert.equal(cond(s, 'ContainersReady')?.message, 'containers with unready status: [proxy]');
  assert.deepEqual(s.containerStatuses?.map((c) => c.name), ['vm'], 'native sidecars are not in containerStatuses');
  s = podStatus(pod, { ...running, initialized: true, initContainers: [migrate], nativeSidecars: [{ ...proxy, started: true, ready: true }] }, t2);
  assert.equal(cond(s, 'Ready')?.status, 'True');
});
