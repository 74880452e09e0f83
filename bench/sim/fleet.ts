// The fleet simulation of bench/pods.ts (part 3), run by it as a child process so that this process's
// memory is the simulated nodes' alone. It reads the spec file named by argv[2] ({ kubeconfigs: {node:
// path}, dir, leaseMs }), starts one node agent per entry — its own identity and KubeApi, a NodeController
// (registration, Lease, status, Node watch) and a PodController (pod watch) with a PodRuntime on a no-op
// hypervisor that boots nothing — and reports over IPC: {event:'memory'} with RSS, heap and CPU, once
// everything is loaded (no node yet) and whenever the parent sends 'cpu'; {event:'up'} once all nodes are
// started; {event:'stopped'} after 'stop'. SIMULATION: no pod is scheduled and no VM is ever started.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { loadConfig } from '../../src/config/load.ts';
import { readHostFacts, sampleHost, type HostSample } from '../../src/host/facts.ts';
import { RegistryClient } from '../../src/images/registry/client.ts';
import { ImageStore } from '../../src/images/store/image-store.ts';
import { ApiHealth } from '../../src/kube/api-health.ts';
import { KubeApi } from '../../src/kube/client.ts';
import { loadKubeconfig } from '../../src/kube/kubeconfig.ts';
import { NodeController } from '../../src/kube/node/node-controller.ts';
import { PodController } from '../../src/kube/pods/pod-controller.ts';
import { createLogger } from '../../src/observability/log.ts';
import { AgentMetrics } from '../../src/observability/metrics.ts';
import { PodRuntime } from '../../src/runtime/pod-runtime.ts';
import { NoopHypervisor } from './noop-hypervisor.ts';

interface Spec {
  kubeconfigs: Record<string, string>;
  dir: string;
  leaseMs: number;
}

interface SimNode {
  node: NodeController;
  pods: PodController;
  api: KubeApi;
}

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc || !process.send) throw new Error('run by bench/pods.ts: node --expose-gc, with an IPC channel');
const send = (m: Record<string, unknown>) => process.send!(m);
const memory = () => {
  gc();
  gc();
  const u = process.memoryUsage();
  const c = process.cpuUsage();
  send({ event: 'memory', rss: u.rss, heap: u.heapUsed, cpuMicros: c.user + c.system });
};

const spec = JSON.parse(await readFile(process.argv[2]!, 'utf8')) as Spec;
const facts = await readHostFacts();
// One host under all the simulated nodes: one reading shared by them, taken at most every 5 s.
let sample: { at: number; value: Promise<HostSample> } | undefined;
const sharedSample = () => {
  if (!sample || Date.now() - sample.at > 5000) sample = { at: Date.now(), value: sampleHost(spec.dir) };
  return sample.value;
};
const probe = { usable: true, driver: 'qemu', accelerator: 'tcg', guestOSes: ['linux'], reason: 'QEMUReady', message: 'simulated node: no-op hypervisor, boots nothing' } as const;
const store = new ImageStore(path.join(spec.dir, 'sim-store'));
await store.init();
const registry = new RegistryClient({});
const log = createLogger('info', {}, path.join(spec.dir, 'fleet.log'));
const driver = new NoopHypervisor();
await sharedSample();
// Start-up's garbage (module compilation) collected and given back first, so that the base is the steady one.
gc();
await new Promise((resolve) => setTimeout(resolve, 5000));
memory();

async function startNode(name: string, kubeconfig: string): Promise<SimNode> {
  const base = loadConfig({ env: {}, flags: { nodeName: name, nodeIp: '127.0.0.1', imageCacheDir: path.join(spec.dir, 'sim', name) } });
  const config = { ...base, node: { ...base.node, leaseRenewInterval: spec.leaseMs } };
  const metrics = new AgentMetrics({ processMetrics: false });
  const nlog = log.child({ node: name });
  const api = new KubeApi(loadKubeconfig(kubeconfig), metrics, new ApiHealth(nlog.child({ component: 'apiserver' }), metrics), config.requestTimeout);
  const node = new NodeController(api, config, { facts, sample: sharedSample, probeHypervisor: async () => probe }, nlog.child({ component: 'node' }), metrics);
  await node.register();
  await node.renewLease();
  node.start();
  const pods: PodController = new PodController({ api, nodeName: name, log: nlog.child({ component: 'pods' }), metrics });
  const runtime = new PodRuntime({
    store, registry, driver, vmDir: path.join(config.imageCacheDir, 'vms'), nodeName: name, hostIP: '127.0.0.1', vmSlots: config.node.vmSlots,
    defaults: { defaultCpus: 1, defaultMemoryMiB: 1024, maxCpus: 2, maxMemoryMiB: 4096 }, hostPathPrefixes: [],
    lookups: { configMap: async () => undefined, secret: async () => undefined },
    log: nlog.child({ component: 'pod-runtime' }),
    changed: (uid) => pods.changed(uid),
    event: (pod, type, reason, message) => pods.event(pod, type, reason, message),
  });
  await pods.start(runtime);
  return { node, pods, api };
}

const t0 = Date.now();
const nodes: SimNode[] = [];
const entries = Object.entries(spec.kubeconfigs);
// Ten at a time: a fleet coming up together, without one burst of all registrations at once.
for (let i = 0; i < entries.length; i += 10) nodes.push(...(await Promise.all(entries.slice(i, i + 10).map(([n, k]) => startNode(n, k)))));
send({ event: 'up', nodes: nodes.length, startMs: Date.now() - t0 });

process.on('message', (m: string) => {
  if (m === 'cpu') memory();
  if (m === 'stop') {
    void Promise.all(nodes.map(async (s) => {
      await s.pods.stop().catch(() => undefined);
      await s.node.stop().catch(() => undefined);
      s.api.close();
    })).then(() => {
      send({ event: 'stopped' });
      process.disconnect();
    });
  }
});
