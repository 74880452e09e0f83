// Benchmark: what vmlet adds to the start of a hybrid pod's sidecar (issue 8), against `podman run` of the
// same image through the same engine, in the same run. Target: vmlet / podman run, p50 <= 1.2x.
//   - A real podman (`podman system service`, test/harness/podman.ts: its own storage, runc, vfs) and a
//     test registry; the busybox test image is pushed there and pulled into podman once, so every start
//     below finds it present.
//   - BENCH_SIDECARS_RUNS (default 10) rounds, each of the four paths once, in an order rotated every
//     round (to spread the machine's noise over all of them); every container is killed and removed,
//     untimed, before the next start. One untimed round first (the first container sets up the bridge).
//       podman run   `podman --remote --url unix://<socket> run -d IMAGE sleep 3600`, from the spawn to
//                    its exit (`run -d` returns once the container is started): the baseline.
//       vmlet        a SidecarSet (src/runtime/sidecar-set.ts) for a pod of two containers (the VM
//                    container, which SidecarSet leaves alone, and a busybox sidecar running
//                    `sleep 3600`), on a SidecarEngine connected once beforehand: from start() until the
//                    sidecar's state is running (list of the pod's containers, hasImage, create with
//                    vmlet's labels on the bridge network, start, inspect, Events and status callbacks).
//       API direct   dockerode create + start of the same create body (createBody()), for context: the
//                    engine's own share of the Docker-API path, with nothing of vmlet's around it.
//     A fourth, also for context: the local `podman run -d` (no service: the CLI on the same storage).
// Run: npm run bench -- sidecars      (BENCH_SIDECARS_RUNS=30 for more rounds; about 1 minute for 10)
import { randomUUID } from 'node:crypto';
import { loadavg } from 'node:os';
import type { V1Pod } from '@kubernetes/client-node';
import Docker from 'dockerode';
import { createLogger } from '../src/observability/log.ts';
import { SidecarSet } from '../src/runtime/sidecar-set.ts';
import { createBody, SidecarEngine } from '../src/sidecars/index.ts';
import { startPodman, type Podman } from '../test/harness/podman.ts';
import { startRegistry, type Registry } from '../test/harness/registry.ts';
import { ensureTestDependencies } from '../test/harness/setup.ts';

const RUNS = Number(process.env.BENCH_SIDECARS_RUNS ?? 10);
const TARGET = 1.2;

/** Nearest-rank percentile. */
const pct = (xs: number[], p: number): number => [...xs].sort((a, b) => a - b)[Math.max(0, Math.ceil(p * xs.length) - 1)]!;
const ms = (x: number): string => `${x.toFixed(1)} ms`;
const now = (): number => performance.now();
const load = (): string => loadavg().map((x) => x.toFixed(2)).join(' ');

type PathName = 'podman run' | 'vmlet' | 'API direct' | 'podman run (local)';
const PATHS: PathName[] = ['podman run', 'vmlet', 'API direct', 'podman run (local)'];

/** Engine calls of vmlet's path, each with its duration, in the order they started. */
type Calls = Array<{ method: string; ms: number; startedAt: number }>;

/** The engine as SidecarSet sees it, with every call timed (the calls themselves are the real ones). */
function timedEngine(engine: SidecarEngine, calls: Calls): SidecarEngine {
  return new Proxy(engine, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        const t0 = now();
        const r = (v as (...a: unknown[]) => unknown).apply(target, args);
        if (r instanceof Promise) {
          return r.finally(() => calls.push({ method: String(prop), ms: now() - t0, startedAt: t0 }));
        }
        return r;
      };
    },
  });
}

function hybridPod(image: string, round: number): V1Pod {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: `bench-sidecars-${round}`, namespace: 'default', uid: randomUUID() },
    spec: {
      restartPolicy: 'Always',
      containers: [
        { name: 'build', image: 'example.invalid/vm/linux:1', command: ['sleep', '3600'] },
        { name: 'helper', image, command: ['sleep', '3600'] },
      ],
    },
  };
}

async function main(): Promise<void> {
  console.log(`sidecar start, ${RUNS} rounds; load (1/5/15 min) at the start: ${load()}`);
  const binaries = await ensureTestDependencies();
  let registry: Registry | undefined;
  let podman: Podman | undefined;
  try {
    registry = await startRegistry({ binaries });
    podman = await startPodman({ binaries, insecureRegistries: [registry.host] });
    const pm = podman;
    const image = await pm.buildBusyboxImage(registry);
    const engine = await SidecarEngine.connect({ socket: pm.dockerHost });
    await engine.pull(image);
    if (!(await engine.hasImage(image))) throw new Error(`${image} is not in podman's store after the pull`);
    const docker = new Docker({ socketPath: pm.socketPath });
    const log = createLogger('warn', { component: 'bench-sidecars' });
    const v = await engine.version();
    console.log(`engine: ${v.name} ${v.version} (API ${v.apiVersion}) at ${pm.dockerHost}; image ${image} present`);

    const podmanRun = async (remote: boolean): Promise<{ ms: number; id: string }> => {
      const args = [...(remote ? ['--remote', '--url', pm.dockerHost] : []), 'run', '-d', image, 'sleep', '3600'];
      const t0 = now();
      const r = await pm.cli(args);
      const t = now() - t0;
      if (r.code !== 0) throw new Error(`podman ${args.join(' ')} exited with ${r.code}: ${r.stderr || r.stdout}`);
      return { ms: t, id: r.stdout.trim().split('\n').pop()! };
    };

    const vmlet = async (round: number): Promise<{ ms: number; calls: Calls; cleanUp: () => Promise<void> }> => {
      const calls: Calls = [];
      const timed = timedEngine(engine, calls);
      const events: string[] = [];
      let runningAt: number | undefined;
      const set: SidecarSet = new SidecarSet({
        engine: () => Promise.resolve(timed),
        pod: hybridPod(image, round),
        hostIP: '127.0.0.1',
        log,
        event: (_type, reason) => events.push(reason),
        changed: () => {
          if (runningAt === undefined && set.states()[0]?.state.kind === 'running') runningAt = now();
        },
        env: () => Promise.resolve({}),
        mounts: () => Promise.resolve([]),
        pullSecrets: () => Promise.resolve([]),
      });
      const t0 = now();
      await set.start();
      const state = set.states()[0]!;
      if (runningAt === undefined || state.state.kind !== 'running') {
        throw new Error(`the sidecar is not running after start(): ${JSON.stringify(state.state)}; events ${events.join(', ')}`);
      }
      return {
        ms: runningAt - t0,
        calls: calls.filter((c) => c.startedAt < runningAt!),
        // SIGKILL first: `sleep` as PID 1 ignores SIGTERM, and a stop would wait out its grace period.
        cleanUp: async () => {
          const id = set.containerId('helper');
          if (id) await engine.kill(id);
          await set.stop(0);
        },
      };
    };

    const direct = async (round: number): Promise<{ ms: number; id: string; parts: Record<string, number> }> => {
      const pod = hybridPod(image, round);
      const body = createBody({
        pod: { namespace: 'default', name: pod.metadata!.name!, uid: pod.metadata!.uid! },
        container: { ...pod.spec!.containers[1]!, name: 'direct' },
        env: [], command: ['sleep', '3600'], restartCount: 0, mounts: [],
        networkMode: 'bridge', publishOn: '127.0.0.1', hostname: pod.metadata!.name!,
      });
      const t0 = now();
      const c = await docker.createContainer(body.options);
      const t1 = now();
      await c.start();
      const t2 = now();
      return { ms: t2 - t0, id: c.id, parts: { create: t1 - t0, start: t2 - t1 } };
    };

    const times = new Map<PathName, number[]>(PATHS.map((p) => [p, []]));
    const breakdown = new Map<string, number[]>();
    const directParts = new Map<string, number[]>();
    const once = async (path: PathName, round: number, counted: boolean): Promise<void> => {
      let t: number;
      let cleanUp: () => Promise<void>;
      if (path === 'vmlet') {
        const r = await vmlet(round);
        t = r.ms;
        cleanUp = r.cleanUp;
        if (counted) {
          const engineMs = r.calls.reduce((a, c) => a + c.ms, 0);
          for (const c of r.calls) breakdown.set(c.method, [...(breakdown.get(c.method) ?? []), c.ms]);
          breakdown.set('(outside engine calls)', [...(breakdown.get('(outside engine calls)') ?? []), t - engineMs]);
        }
      } else {
        const r: { ms: number; id: string; parts?: Record<string, number> } = path === 'API direct' ? await direct(round) : await podmanRun(path === 'podman run');
        t = r.ms;
        if (counted && r.parts) for (const [k, x] of Object.entries(r.parts)) directParts.set(k, [...(directParts.get(k) ?? []), x]);
        cleanUp = async () => {
          await engine.kill(r.id); // a forced remove would send SIGTERM and wait 10 s (sleep ignores it as PID 1)
          await engine.remove(r.id, { force: true });
        };
      }
      await cleanUp();
      if (counted) times.get(path)!.push(t);
      console.log(`  ${counted ? `round ${round}` : 'warm-up'}: ${path}: ${ms(t)}`);
    };

    for (const p of PATHS) await once(p, 0, false);
    for (let round = 1; round <= RUNS; round++) {
      for (let k = 0; k < PATHS.length; k++) await once(PATHS[(k + round) % PATHS.length]!, round, true);
    }
    const left = await docker.listContainers({ all: true });
    if (left.length > 0) console.log(`(${left.length} containers left on the engine: ${left.map((c) => c.Names?.[0]).join(', ')})`);

    console.log('');
    console.log(`| path (${RUNS} runs each, interleaved) | p50 | p90 | min | max |`);
    console.log('|---|---|---|---|---|');
    for (const p of PATHS) {
      const xs = times.get(p)!;
      console.log(`| ${p} | ${ms(pct(xs, 0.5))} | ${ms(pct(xs, 0.9))} | ${ms(Math.min(...xs))} | ${ms(Math.max(...xs))} |`);
    }
    console.log('');
    console.log('vmlet path, by engine call (p50 / p90 of each):');
    for (const [method, xs] of breakdown) console.log(`  ${method}: ${ms(pct(xs, 0.5))} / ${ms(pct(xs, 0.9))} (${(xs.length / RUNS).toFixed(0)} per start)`);
    console.log(`API direct, by call (p50 / p90): ${[...directParts].map(([k, xs]) => `${k} ${ms(pct(xs, 0.5))} / ${ms(pct(xs, 0.9))}`).join('; ')}`);
    const ratio = pct(times.get('vmlet')!, 0.5) / pct(times.get('podman run')!, 0.5);
    const apiRatio = pct(times.get('vmlet')!, 0.5) / pct(times.get('API direct')!, 0.5);
    console.log('');
    console.log(`vmlet / podman run, p50: ${ratio.toFixed(2)}x (target <= ${TARGET}x: ${ratio <= TARGET ? 'PASS' : 'MISS'}); vmlet / API direct, p50: ${apiRatio.toFixed(2)}x`);
    console.log(`load (1/5/15 min) at the end: ${load()}`);
  } finally {
    await podman?.stop();
    await registry?.stop();
  }
}

await main();
