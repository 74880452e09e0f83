// SidecarSet against an in-memory engine (the real engine is test/e2e/hybrid-pods.test.ts's podman):
// what it creates (env, $(VAR) expansion, mounts, network), restarts with restartCount + 1, adoption of a
// running container, stop and remove.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { V1Pod } from '@kubernetes/client-node';
import { createLogger } from '../../../src/observability/log.ts';
import { SidecarSet } from '../../../src/runtime/sidecar-set.ts';
import type { SidecarEngine, SidecarSummary } from '../../../src/sidecars/engine.ts';
import { containerHash, type SidecarSpec, type SidecarStatus } from '../../../src/sidecars/spec.ts';

interface FakeContainer {
  id: string;
  spec: SidecarSpec;
  running: boolean;
  exitCode?: number;
  exited?: () => void;
  removed?: boolean;
}

class FakeEngine {
  readonly containers: FakeContainer[] = [];
  readonly pulls: string[] = [];
  readonly stops: string[] = [];
  hasImage(): Promise<boolean> {
    return Promise.resolve(false);
  }
  pull(image: string): Promise<void> {
    this.pulls.push(image);
    return Promise.resolve();
  }
  create(spec: SidecarSpec): Promise<{ id: string; name: string; ignored: string[] }> {
    const id = `c${this.containers.length}`;
    this.containers.push({ id, spec, running: false });
    return Promise.resolve({ id, name: `vmlet_${spec.container.name}_${spec.restartCount ?? 0}`, ignored: [] });
  }
  start(id: string): Promise<void> {
    this.get(id).running = true;
    return Promise.resolve();
  }
  inspect(id: string): Promise<SidecarStatus> {
    const c = this.get(id);
    return Promise.resolve({ id, containerID: `docker://${id}`, imageID: 'sha256:img', startedAt: new Date(), ...(c.running ? {} : { finishedAt: new Date() }), oomKilled: false } as SidecarStatus);
  }
  wait(id: string, signal?: AbortSignal): Promise<{ exitCode: number }> {
    const c = this.get(id);
    return new Promise((resolve, reject) => {
      if (!c.running) return resolve({ exitCode: c.exitCode ?? 0 });
      c.exited = () => resolve({ exitCode: c.exitCode ?? 0 });
      signal?.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
    });
  }
  exit(id: string, code: number): void {
    const c = this.get(id);
    c.running = false;
    c.exitCode = code;
    c.exited?.();
  }
  stop(id: string): Promise<void> {
    this.stops.push(id);
    this.exit(id, 143);
    return Promise.resolve();
  }
  remove(id: string): Promise<void> {
    this.get(id).removed = true;
    return Promise.resolve();
  }
  list(): Promise<SidecarSummary[]> {
    return Promise.resolve(this.containers.filter((c) => !c.removed).map((c) => ({
      id: c.id, engineName: c.id, pod: c.spec.pod, containerName: c.spec.container.name, restartCount: c.spec.restartCount ?? 0, containerHash: containerHash(c.spec.container),
      engineState: c.running ? 'running' : 'exited', created: new Date(),
    })));
  }
  private get(id: string): FakeContainer {
    const c = this.containers.find((x) => x.id === id);
    if (!c) throw new Error(`no container ${id}`);
    return c;
  }
}

const pod: V1Pod = {
  metadata: { name: 'runner', namespace: 'ci', uid: 'u1' },
  spec: {
    restartPolicy: 'Always',
    containers: [
      { name: 'build', image: 'ghcr.io/x/vm:1' },
      { name: 'helper', image: 'busybox:1', command: ['sh', '-c', 'echo $(GREETING) $(NOPE)'], volumeMounts: [{ name: 'repo', mountPath: '/builds' }] },
      { name: 'svc', image: 'redis:7', ports: [{ containerPort: 6379 }] },
    ],
  },
};

function setFor(engine: FakeEngine, p: V1Pod = pod) {
  const events: string[] = [];
  let changes = 0;
  const set = new SidecarSet({
    engine: () => Promise.resolve(engine as unknown as SidecarEngine), pod: p, hostIP: '192.0.2.7', log: createLogger('error'),
    restartBackoff: { initialMs: 10, maxMs: 20 },
    event: (type, reason, message) => events.push(`${type}/${reason}: ${message}`),
    changed: () => changes++,
    env: (c) => Promise.resolve({ GREETING: `hi from ${c.name}` }),
    mounts: (c) => Promise.resolve((c.volumeMounts ?? []).map((m) => ({ hostPath: `/vms/u1/volumes/${m.name}`, containerPath: m.mountPath }))),
    pullSecrets: () => Promise.resolve([]),
  });
  return { set, events, changes: () => changes };
}

const until = async (what: string, check: () => boolean): Promise<void> => {
  for (let i = 0; i < 200; i++) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`timed out: ${what}`);
};

test('sidecars start in spec order: env, $(VAR) expansion, mounts, the first on the bridge, the others in its network', async () => {
  const engine = new FakeEngine();
  const { set, events } = setFor(engine);
  await set.start();
  assert.deepEqual(engine.pulls, ['busybox:1', 'redis:7']);
  const [helper, svc] = engine.containers;
  assert.deepEqual(helper!.spec.command, ['sh', '-c', 'echo hi from helper $(NOPE)']);
  assert.deepEqual(helper!.spec.env, [{ name: 'GREETING', value: 'hi from helper' }]);
  assert.deepEqual(helper!.spec.mounts, [{ hostPath: '/vms/u1/volumes/repo', containerPath: '/builds' }]);
  assert.equal(helper!.spec.networkMode, 'bridge');
  assert.equal(helper!.spec.publishOn, '192.0.2.7');
  assert.equal(helper!.spec.hostname, 'runner');
  assert.equal(svc!.spec.networkMode, `container:${helper!.id}`);
  // svc cannot publish its port on a shared network: the first one publishes it for the pod.
  assert.deepEqual(helper!.spec.publishPorts, [{ containerPort: 6379 }]);
  assert.equal(svc!.spec.publishPorts, undefined);
  assert.deepEqual(set.states().map((s) => [s.name, s.state.kind, s.ready, s.containerID]), [['helper', 'running', true, 'docker://c0'], ['svc', 'running', true, 'docker://c1']]);
  assert.ok(events.includes('Normal/Pulling: Pulling image "busybox:1"'), events.join('\n'));
  await set.stop(5);
  assert.deepEqual(engine.stops.sort(), ['c0', 'c1']);
  assert.ok(engine.containers.every((c) => c.removed));
});

test('an exit restarts the sidecar as a new container with restartCount + 1; the previous run serves logs --previous', async () => {
  const engine = new FakeEngine();
  const { set, events } = setFor(engine, { ...pod, spec: { ...pod.spec!, containers: pod.spec!.containers.slice(0, 2) } });
  await set.start();
  engine.exit('c0', 1);
  await until('restarted', () => set.states()[0]!.restartCount === 1 && set.states()[0]!.state.kind === 'running');
  const s = set.states()[0]!;
  assert.equal(s.lastTermination?.exitCode, 1);
  assert.equal(s.lastTermination?.reason, 'Error');
  assert.equal(engine.containers[1]!.spec.restartCount, 1);
  assert.equal(set.containerId('helper'), 'c1');
  assert.equal(set.containerId('helper', true), 'c0');
  engine.exit('c1', 1);
  await until('restarted again', () => set.states()[0]!.restartCount === 2 && set.states()[0]!.state.kind === 'running');
  assert.ok(engine.containers[0]!.removed, 'the run before the previous one is removed');
  assert.ok(events.some((e) => e.startsWith('Warning/BackOff: Back-off restarting failed container helper in pod runner_ci(u1)')), events.join('\n'));
  await set.stop(1);
});

test('adopt keeps a running sidecar (same container, same restart count) and restarts an exited one', async () => {
  const engine = new FakeEngine();
  const first = setFor(engine);
  await first.set.start();
  first.set.detach(); // vmlet goes away; then svc exits while it is down
  engine.exit('c1', 2);
  const { set } = setFor(engine);
  await set.adopt();
  const [helper, svc] = set.states();
  assert.equal(helper!.containerID, 'docker://c0');
  assert.equal(helper!.restartCount, 0);
  assert.equal(helper!.state.kind, 'running');
  assert.equal(svc!.restartCount, 1);
  assert.equal(svc!.containerID, 'docker://c2');
  assert.equal(engine.containers[2]!.spec.networkMode, 'container:c0');
  assert.equal(set.containerId('svc', true), 'c1');
  await set.stop(1);
});

test('a new run of the first sidecar is a new network: the others are restarted at once to join it', async () => {
  const engine = new FakeEngine();
  const { set, events } = setFor(engine);
  await set.start();
  engine.exit('c0', 137);
  await until('both in the new network', () => set.states().every((x) => x.state.kind === 'running' && x.restartCount === 1));
  const svc = engine.containers.filter((c) => c.spec.container.name === 'svc').at(-1)!;
  assert.equal(svc.spec.networkMode, `container:${set.containerId('helper')}`);
  assert.equal(set.states()[1]!.lastTermination?.message, 'Container svc shares the network of container helper, which was started again; restarting it to join the new network');
  assert.ok(events.includes('Normal/Killing: Container svc shares the network of container helper, which was started again; restarting it to join the new network'), events.join('\n'));
  await set.stop(1);
});

test('a sidecar whose image changes in the pod spec is restarted with the new image; the others keep running', async () => {
  const engine = new FakeEngine();
  const { set, events } = setFor(engine);
  await set.start();
  const changed: V1Pod = { ...pod, spec: { ...pod.spec!, containers: pod.spec!.containers.map((c) => (c.name === 'svc' ? { ...c, image: 'redis:8' } : c)) } };
  set.update(changed);
  await until('svc runs redis:8', () => engine.containers.some((c) => c.spec.container.image === 'redis:8' && c.running));
  assert.ok(events.includes('Normal/Killing: Container svc definition changed, will be restarted'), events.join('\n'));
  assert.deepEqual(set.states().map((x) => [x.name, x.image, x.restartCount, x.state.kind]), [['helper', 'busybox:1', 0, 'running'], ['svc', 'redis:8', 1, 'running']]);
  set.update(changed); // the same spec again: nothing restarts
  assert.equal(engine.containers.length, 3);
  await set.stop(1);
});

test('adopt restarts a running sidecar whose definition changed while vmlet was away', async () => {
  const engine = new FakeEngine();
  const first = setFor(engine);
  await first.set.start();
  first.set.detach();
  const changed: V1Pod = { ...pod, spec: { ...pod.spec!, containers: pod.spec!.containers.map((c) => (c.name === 'svc' ? { ...c, image: 'redis:8' } : c)) } };
  const { set, events } = setFor(engine, changed);
  await set.adopt();
  await until('svc runs redis:8', () => engine.containers.some((c) => c.spec.container.image === 'redis:8' && c.running));
  assert.equal(set.containerId('helper'), 'c0', 'the unchanged one is kept');
  assert.ok(events.includes('Normal/Killing: Container svc definition changed, will be restarted'), events.join('\n'));
  await set.stop(1);
});

test('native sidecars start first and own the network; init containers on the engine run once each, in it; sidecars join it later', async () => {
  const engine = new FakeEngine();
  const p: V1Pod = {
    ...pod,
    spec: {
      ...pod.spec!,
      restartPolicy: 'Never',
      initContainers: [
        { name: 'proxy', image: 'envoy:1', restartPolicy: 'Always', ports: [{ containerPort: 9901 }] },
        { name: 'migrate', image: 'busybox:1', command: ['sh', '-c', 'migrate'] },
        { name: 'in-vm', image: 'ghcr.io/x/vm:1', command: ['true'] },
      ],
      containers: pod.spec!.containers.slice(0, 2),
    },
  };
  const { set } = setFor(engine, p);
  assert.ok(set.has('migrate') && set.has('proxy') && !set.has('in-vm'), 'the init container with the VM image runs in the VM');
  assert.equal(await set.startNative('proxy'), true);
  const proxy = engine.containers[0]!;
  assert.equal(proxy.spec.container.name, 'proxy');
  assert.equal(proxy.spec.networkMode, 'bridge');
  assert.deepEqual(proxy.spec.publishPorts, undefined, 'helper has no ports to publish');
  assert.equal(await set.startNative('proxy'), true, 'a started native sidecar is not started again');
  assert.equal(engine.containers.length, 1);

  let running = '';
  const run = set.runInit('migrate', 0, (_at, id) => (running = id));
  await until('migrate runs', () => running !== '');
  const migrate = engine.containers[1]!;
  assert.equal(migrate.spec.networkMode, `container:${proxy.id}`);
  assert.equal(migrate.spec.publishOn, undefined);
  engine.exit(migrate.id, 3);
  const r = await run;
  assert.equal(r?.kind, 'exited');
  assert.equal(r?.kind === 'exited' && r.exitCode, 3);
  assert.equal(set.containerId('migrate'), migrate.id, 'kubectl logs -c migrate reads this run');

  await set.start();
  const helper = engine.containers.find((c) => c.spec.container.name === 'helper')!;
  assert.equal(helper.spec.networkMode, `container:${proxy.id}`);
  assert.equal(engine.containers.filter((c) => c.spec.container.name === 'proxy').length, 1, 'start() keeps the native sidecar');
  assert.deepEqual(set.states().map((x) => x.name), ['helper']);
  assert.deepEqual(set.nativeStates().map((x) => [x.name, x.state.kind, x.started]), [['proxy', 'running', true]]);

  // A native sidecar is restarted even with restartPolicy Never.
  engine.exit(proxy.id, 0);
  await until('proxy restarted', () => set.nativeStates()[0]!.restartCount === 1 && set.nativeStates()[0]!.state.kind === 'running');
  await set.stop(1);
});
