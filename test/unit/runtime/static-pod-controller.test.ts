// The static pod controller against a stand-in runtime (the real one is exercised end to end in
// test/e2e/standalone.test.ts): a pod is synced, its status logged on change and served with its status;
// a failed sync is retried after a back-off; a removed pod is removed from the runtime; a pod that
// references API objects never reaches the runtime and is listed Failed with the reason. And the table of
// `vmlet ps`.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import type { V1Pod } from '@kubernetes/client-node';
import { pino } from 'pino';
import { podTable } from '../../../src/cli/local.ts';
import type { PodRuntimeState } from '../../../src/runtime/pod/status.ts';
import { StaticPodController } from '../../../src/static/controller.ts';
import { parseManifest } from '../../../src/static/manifests.ts';

const POD = 'apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: vm, image: guest:1, command: [sleep, "1000"]}]\n';
const pod = (text = POD) => parseManifest('/d/web.yaml', text, 'n1')[0]!;

class FakeRuntime {
  readonly states = new Map<string, PodRuntimeState>();
  readonly calls: string[] = [];
  failNext = 0;
  changed?: (uid: string) => void;

  state(uid: string): PodRuntimeState | undefined {
    return this.states.get(uid);
  }

  async sync(p: V1Pod): Promise<void> {
    const uid = p.metadata!.uid!;
    // As the real runtime: a pod whose VM runs is left alone.
    if (this.states.get(uid)?.phase === 'Running') return;
    this.calls.push(`sync ${p.metadata!.name}`);
    if (this.failNext > 0) {
      this.failNext--;
      throw new Error('the registry did not answer');
    }
    this.states.set(uid, {
      phase: 'Running', hostIP: '127.0.0.1', podIP: '127.0.0.1', vmReady: true, startTime: new Date(),
      container: { name: 'vm', image: 'guest:1', state: { kind: 'running', startedAt: new Date() }, ready: true, started: true, restartCount: 0 },
    });
    this.changed?.(uid);
  }

  async remove(p: V1Pod): Promise<void> {
    this.calls.push(`remove ${p.metadata!.name}`);
    this.states.delete(p.metadata!.uid!);
  }
}

function setup() {
  const runtime = new FakeRuntime();
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
  const controller = new StaticPodController({ runtime, log });
  runtime.changed = (uid) => controller.changed(uid);
  return { runtime, lines, controller };
}

const until = async (what: string, check: () => boolean, ms = 5000) => {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
};

test('a static pod is synced once, served with its Running status, and each status change is logged once', async () => {
  const { runtime, lines, controller } = setup();
  controller.add(pod(), '/d/web.yaml');
  await until('Running', () => controller.pods()[0]?.status?.phase === 'Running');
  const served = controller.pods()[0]!;
  assert.equal(served.status?.containerStatuses?.[0]?.ready, true);
  await sleep(50);
  assert.deepEqual(runtime.calls, ['sync web-n1']);
  const statuses = lines.filter((l) => l.msg === 'static pod status').map((l) => l.phase);
  assert.deepEqual(statuses, ['Running'], 'logged when it changed, not on every pass');
  assert.ok(lines.some((l) => l.msg === 'static pod added' && l.file === '/d/web.yaml'));

  controller.remove(served);
  await until('removed', () => controller.pods().length === 0 && runtime.calls.includes('remove web-n1'));
  await controller.stop();
});

test('a failed sync is retried after a back-off and the failure is logged with the reason', async () => {
  const { runtime, lines, controller } = setup();
  runtime.failNext = 1;
  controller.add(pod());
  await until('Running after a retry', () => controller.pods()[0]?.status?.phase === 'Running', 5000);
  assert.deepEqual(runtime.calls, ['sync web-n1', 'sync web-n1']);
  const warn = lines.find((l) => l.msg === 'static pod sync failed; will retry');
  assert.equal(warn?.err, 'the registry did not answer');
  await controller.stop();
});

test('a pod that references a Secret never reaches the runtime: Failed, with the field named, and a Warning in the log', async () => {
  const { runtime, lines, controller } = setup();
  const p = pod(POD.replace('command: [sleep, "1000"]', 'command: [sleep, "1000"], env: [{name: A, valueFrom: {secretKeyRef: {name: s, key: k}}}]'));
  controller.add(p);
  await until('Failed', () => controller.pods()[0]?.status?.phase === 'Failed');
  const status = controller.pods()[0]!.status!;
  assert.equal(status.reason, 'StaticPodReferencesApiObjects');
  assert.match(status.message ?? '', /spec\.containers\[0\] \(vm\)\.env\[0\] \(A\) secretKeyRef "s" \(a Secret\)/);
  assert.deepEqual(runtime.calls, []);
  assert.ok(lines.some((l) => l.level === 40 && l.reason === 'FailedCreate'));
  await controller.stop();
});

test('vmlet ps: one row per pod with phase (and why), ready, restarts, age and IP', () => {
  const now = new Date('2026-01-01T12:00:00Z');
  const running: V1Pod = {
    metadata: { name: 'web-n1', namespace: 'default', annotations: { 'kubernetes.io/config.seen': '2026-01-01T11:59:15Z' } },
    spec: { containers: [{ name: 'vm' }] },
    status: { phase: 'Running', podIP: '10.0.2.15', containerStatuses: [{ name: 'vm', ready: true, restartCount: 2, image: '', imageID: '', state: { running: {} } }] },
  };
  const waiting: V1Pod = {
    metadata: { name: 'db-n1', namespace: 'infra' },
    spec: { containers: [{ name: 'vm' }] },
    status: { phase: 'Pending', startTime: new Date('2026-01-01T09:00:00Z'), containerStatuses: [{ name: 'vm', ready: false, restartCount: 0, image: '', imageID: '', state: { waiting: { reason: 'ContainerCreating' } } }] },
  };
  assert.equal(podTable([running, waiting], now), [
    'NAMESPACE/NAME   PHASE                         READY   RESTARTS   AGE   IP',
    'default/web-n1   Running                       1/1     2          45s   10.0.2.15',
    'infra/db-n1      Pending (ContainerCreating)   0/1     0          3h    <none>',
    '',
  ].join('\n'));
});
