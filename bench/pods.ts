// Benchmark: what vmlet adds to a pod's life, and what a fleet of node agents costs the API server.
//   1. Kubelet overhead per pod start (BENCH_PODS, default 7, pods one after the other, image already in
//      the store): from the POST of the pod to its Ready condition seen on a watch, minus the driver's
//      boot to agent-ready of that VM (vmlet's log: "VM booted to agent-ready in N ms", from the disk clone
//      to the agent's HELLO). p50 and p90, and where the rest goes (vmlet's "pod container running" line).
//      Target: p50 <= 200 ms.
//   2. API requests per pod lifecycle (POST -> Running -> Ready -> DELETE -> object gone), by the node's
//      user, from the audit log (apiserver_request_total cannot be split by user; its delta over all users
//      is printed beside it), minus the node's own heartbeat (Lease renewals). Target: <= 12.
//   3. SIMULATION: BENCH_FLEET_NODES (default 200) node agents in this one process — each its own
//      identity, KubeApi, NodeController (registration, Lease, status, Node watch) and PodController (pod
//      watch, a PodRuntime on a no-op hypervisor that boots nothing; no pods are scheduled) — against the
//      real kube-apiserver: API requests per node per second over BENCH_FLEET_WINDOW_MS (default 120 s)
//      after BENCH_FLEET_WARMUP_MS (default 30 s), and RSS and V8 heap per node.
// Run: npm run bench -- pods      (BENCH_PODS_PARTS=start,fleet; either alone: BENCH_PODS_PARTS=fleet)
import { fork, type ChildProcess } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CoreV1Event, V1Pod } from '@kubernetes/client-node';
import { request, type Agent } from 'undici';
import { startCluster, type Cluster } from '../test/harness/cluster.ts';
import { tlsAgent } from '../test/harness/https.ts';
import { isReady, VmPods } from '../test/harness/vm-pods.ts';

const PARTS = (process.env.BENCH_PODS_PARTS ?? 'start,fleet').split(',');
const PODS = Number(process.env.BENCH_PODS ?? 7);
const FLEET_NODES = Number(process.env.BENCH_FLEET_NODES ?? 200);
const FLEET_WARMUP_MS = Number(process.env.BENCH_FLEET_WARMUP_MS ?? 30_000);
const FLEET_WINDOW_MS = Number(process.env.BENCH_FLEET_WINDOW_MS ?? 120_000);
/** The simulated nodes' Lease renewal interval (vmlet's default: 10 s). */
const FLEET_LEASE_MS = Number(process.env.BENCH_FLEET_LEASE_MS ?? 10_000);
const NODE = 'bench-pods';

/** Nearest-rank percentile. */
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.max(0, Math.ceil(p * xs.length) - 1)]!;
const ms = (x: number) => `${Math.round(x)} ms`;
const mb = (b: number) => (b / 2 ** 20).toFixed(2);

/** The admin's REST calls: undici with the cluster CA and an admin client certificate. */
class Admin {
  private constructor(private readonly cluster: Cluster, readonly agent: Agent) {}

  static async connect(cluster: Cluster): Promise<Admin> {
    const id = await cluster.issueClientCert('bench-admin', ['system:masters']);
    return new Admin(cluster, tlsAgent({ ca: cluster.caCert, cert: id.cert, key: id.key }));
  }

  async call<T>(method: 'GET' | 'POST' | 'DELETE', urlPath: string, body?: unknown): Promise<T> {
    const res = await request(this.cluster.url + urlPath, {
      method, dispatcher: this.agent,
      ...(body !== undefined ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } } : {}),
    });
    const text = await res.body.text();
    if (res.statusCode >= 300) throw new Error(`${method} ${urlPath}: HTTP ${res.statusCode}: ${text.slice(0, 300)}`);
    return JSON.parse(text) as T;
  }
}

interface Seen {
  uid?: string;
  /** Wall-clock ms (Date.now(), to line up with vmlet's log) when the watch delivered each moment. */
  runningAt?: number;
  readyAt?: number;
  goneAt?: number;
}

/** One watch on the namespace's pods; records when each pod was first seen Running, Ready, and deleted. */
class PodWatch {
  readonly seen = new Map<string, Seen>();
  private readonly abort = new AbortController();

  async start(admin: Admin, cluster: Cluster, namespace: string): Promise<void> {
    const list = await admin.call<{ metadata: { resourceVersion: string } }>('GET', `/api/v1/namespaces/${namespace}/pods`);
    const res = await request(`${cluster.url}/api/v1/namespaces/${namespace}/pods?watch=1&timeoutSeconds=3600&resourceVersion=${list.metadata.resourceVersion}`, {
      dispatcher: admin.agent, signal: this.abort.signal, bodyTimeout: 0,
    });
    if (res.statusCode !== 200) throw new Error(`watch: HTTP ${res.statusCode}`);
    let buf = '';
    res.body.on('data', (d: Buffer) => {
      const now = Date.now();
      buf += d.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.trim()) continue;
        const ev = JSON.parse(line) as { type: string; object: V1Pod };
        const name = ev.object.metadata?.name ?? '';
        const s = this.seen.get(name) ?? {};
        this.seen.set(name, s);
        s.uid ??= ev.object.metadata?.uid;
        if (ev.type === 'DELETED') s.goneAt ??= now;
        else {
          if (ev.object.status?.phase === 'Running') s.runningAt ??= now;
          if (isReady(ev.object)) s.readyAt ??= now;
        }
      }
    });
    res.body.on('error', () => undefined);
  }

  /** Waits (checking every 5 ms: the time itself was taken when the event arrived) for a moment of a pod. */
  async until(name: string, what: keyof Omit<Seen, 'uid'>, timeoutMs: number): Promise<number> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const t = this.seen.get(name)?.[what];
      if (t !== undefined) return t;
      if (Date.now() > end) throw new Error(`pod ${name}: not ${what} within ${timeoutMs / 1000} s`);
      await sleep(5);
    }
  }

  stop(): void {
    this.abort.abort();
  }
}

interface AuditEvent {
  auditID: string;
  verb: string;
  user: { username: string };
  objectRef?: { resource?: string; subresource?: string; namespace?: string; name?: string };
  requestReceivedTimestamp: string;
}

async function auditEvents(cluster: Cluster, user: (name: string) => boolean): Promise<Array<AuditEvent & { at: number; key: string }>> {
  const text = await readFile(cluster.auditLogFile, 'utf8');
  const byId = new Map<string, AuditEvent & { at: number; key: string }>();
  for (const line of text.split('\n')) {
    if (!line.includes('system:node:')) continue;
    const ev = JSON.parse(line) as AuditEvent;
    if (!user(ev.user.username) || byId.has(ev.auditID)) continue;
    const r = ev.objectRef;
    const key = `${ev.verb} ${r?.resource ?? '(non-resource)'}${r?.subresource ? `/${r.subresource}` : ''}`;
    byId.set(ev.auditID, { ...ev, at: Date.parse(ev.requestReceivedTimestamp), key });
  }
  return [...byId.values()];
}

function countBy<T>(xs: T[], key: (x: T) => string): Map<string, number> {
  const m = new Map<string, number>();
  for (const x of xs) m.set(key(x), (m.get(key(x)) ?? 0) + 1);
  return m;
}

const listing = (m: Map<string, number>, per = 1) => [...m].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}: ${+(v / per).toFixed(2)}`).join(', ');

/** apiserver_request_total over resource requests, by verb and resource (all users). */
function resourceRequests(metrics: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const line of metrics.split('\n')) {
    if (!line.startsWith('apiserver_request_total{') || /[{,]resource=""/.test(line)) continue;
    const label = (name: string) => new RegExp(`[{,]${name}="([^"]*)"`).exec(line)?.[1] ?? '';
    const key = `${label('verb').toLowerCase()} ${label('resource')}${label('subresource') ? `/${label('subresource')}` : ''}`;
    counts.set(key, (counts.get(key) ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1)));
  }
  return counts;
}

async function podStarts(): Promise<void> {
  console.log(`parts 1 and 2: ${PODS} pods one after the other on one vmlet (QEMU, TCG), image already in the store`);
  const env = await VmPods.start({ nodeName: NODE });
  const watch = new PodWatch();
  try {
    const admin = await Admin.connect(env.cluster);
    await watch.start(admin, env.cluster, 'default');
    const lifecycle = async (name: string) => {
      const tCreate = Date.now();
      const created = await admin.call<V1Pod>('POST', '/api/v1/namespaces/default/pods', env.manifest(name));
      const tReady = await watch.until(name, 'readyAt', 300_000);
      // Running for a moment, so that the delete is not part of the start.
      await sleep(1000);
      const tDelete = Date.now();
      await admin.call('DELETE', `/api/v1/namespaces/default/pods/${name}`);
      const tGone = await watch.until(name, 'goneAt', 120_000);
      return { name, uid: created.metadata!.uid!, tCreate, tReady, tDelete, tGone };
    };
    console.log('warm-up pod (pulls the image into the store; not counted) ...');
    await lifecycle('warm-up');
    await sleep(2000);
    const metricsBefore = resourceRequests(await env.cluster.apiServerMetrics());
    const runs: Array<Awaited<ReturnType<typeof lifecycle>>> = [];
    for (let i = 1; i <= PODS; i++) {
      const r = await lifecycle(`pod-${i}`);
      runs.push(r);
      console.log(`  pod-${i}: Ready ${ms(r.tReady - r.tCreate)} after the POST; gone ${ms(r.tGone - r.tDelete)} after the DELETE`);
      // vmlet's last requests for the pod (an Event it did not wait for) land before the next POST.
      await sleep(2000);
    }
    const tEnd = Date.now();
    const metricsAfter = resourceRequests(await env.cluster.apiServerMetrics());

    // 1. Overhead: vmlet's own log says how long the driver took, and where the rest went.
    const logs = await env.vmlet.logs();
    const line = (uid: string, msg: (m: string) => boolean) => logs.find((l) => l.uid === uid && msg(l.msg));
    const rows = runs.map((r) => {
      const boot = line(r.uid, (m) => m.startsWith('VM booted to agent-ready'));
      const running = line(r.uid, (m) => m === 'pod container running');
      if (!boot || !running) throw new Error(`no boot/running log line for ${r.name} (${r.uid})`);
      const t = running.ms as Record<string, number>;
      const startedAt = Date.parse(running.time) - t.running!;
      const total = r.tReady - r.tCreate;
      const bootMs = boot.bootMs as number;
      return {
        name: r.name, total, boot: bootMs, overhead: total - bootMs,
        parts: {
          'POST → vmlet starts the pod (watch, queue, first status patch)': startedAt - r.tCreate,
          'checks, env, volumes': t.prepared!,
          'pull skipped (image in the store)': t.pulled! - t.prepared!,
          'disk clone': t.cloned! - t.pulled!,
          'pod.json, mounts, hostname': t.setUp! - t.ready!,
          'main process start, probes': t.running! - t.setUp!,
          'status patch → Ready seen on the watch': r.tReady - (startedAt + t.running!),
        },
      };
    });
    console.log('');
    console.log('| pod | POST → Ready seen | driver boot to agent-ready | overhead |');
    console.log('|---|---|---|---|');
    for (const r of rows) console.log(`| ${r.name} | ${ms(r.total)} | ${ms(r.boot)} | ${ms(r.overhead)} |`);
    const over = rows.map((r) => r.overhead);
    console.log('');
    console.log(`kubelet overhead per pod start (N=${rows.length}): p50 ${ms(pct(over, 0.5))}, p90 ${ms(pct(over, 0.9))} (target p50 <= 200 ms: ${pct(over, 0.5) <= 200 ? 'met' : 'MISSED'})`);
    console.log(`driver boot to agent-ready: p50 ${ms(pct(rows.map((r) => r.boot), 0.5))}; POST → Ready: p50 ${ms(pct(rows.map((r) => r.total), 0.5))}`);
    console.log('breakdown of the overhead (p50 of each part):');
    for (const k of Object.keys(rows[0]!.parts)) {
      const xs = rows.map((r) => r.parts[k as keyof typeof r.parts]);
      console.log(`  ${k}: p50 ${ms(pct(xs, 0.5))}, p90 ${ms(pct(xs, 0.9))}`);
    }

    // 2. Requests per lifecycle: each request of the node's user falls in the lifecycle under way.
    const user = `system:node:${NODE}`;
    const events = (await auditEvents(env.cluster, (u) => u === user)).filter((e) => e.at >= runs[0]!.tCreate && e.at < tEnd);
    const heartbeat = (k: string) => k.includes('leases');
    // The node's own: its Node, and watches (re-established every 5-10 minutes, whatever the pods do).
    const nodeOwn = (k: string) => k.includes(' nodes') || k.startsWith('watch ');
    const perPod = runs.map((r, i) => {
      const until = runs[i + 1]?.tCreate ?? tEnd;
      return events.filter((e) => e.at >= r.tCreate && e.at < until);
    });
    const podReqs = perPod.map((es) => es.filter((e) => !heartbeat(e.key) && !nodeOwn(e.key)).length);
    const all = perPod.flat();
    console.log('');
    console.log(`API requests by ${user} per pod lifecycle (POST → Ready → DELETE → gone; audit log):`);
    console.log(`  per pod: ${podReqs.join(', ')}; mean ${(podReqs.reduce((a, b) => a + b, 0) / runs.length).toFixed(2)} (target <= 12: ${Math.max(...podReqs) <= 12 ? 'met' : 'MISSED'})`);
    console.log(`  by kind, mean per pod: ${listing(countBy(all.filter((e) => !heartbeat(e.key) && !nodeOwn(e.key)), (e) => e.key), runs.length)}`);
    console.log(`  left out as the node's own (mean per lifecycle): ${listing(countBy(all.filter((e) => heartbeat(e.key) || nodeOwn(e.key)), (e) => e.key), runs.length) || 'none'}`);
    const last = runs[runs.length - 1]!;
    const since = (at: number) => (at < last.tReady ? `+${at - last.tCreate}` : at < last.tDelete ? `Ready+${at - last.tReady}` : `DELETE+${at - last.tDelete}`);
    const order = perPod[perPod.length - 1]!.sort((a, b) => a.at - b.at).map((e) => `${since(e.at)} ms ${e.key}`);
    console.log(`  ${last.name}, in order (ms from the POST, from Ready seen, from the DELETE): ${order.join('; ')}`);
    const evList = await admin.call<{ items: CoreV1Event[] }>('GET', '/api/v1/namespaces/default/events');
    const ours = evList.items.filter((e) => runs.some((r) => r.uid === e.involvedObject.uid) && e.source?.component === 'vmlet');
    console.log(`  of which Events (POST events), mean per pod by reason: ${listing(countBy(ours, (e) => e.reason ?? ''), runs.length)}`);
    const delta = new Map([...metricsAfter].map(([k, v]) => [k, v - (metricsBefore.get(k) ?? 0)] as const).filter(([, v]) => v > 0));
    console.log(`  cross-check, apiserver_request_total delta over the ${runs.length} lifecycles, ALL users (admin's POST/DELETE/list, controllers, leases included), per pod: ${listing(delta, runs.length)}`);
  } finally {
    watch.stop();
    await env.cluster.kubectl(['delete', 'pod', '--all', '--wait=true', '--timeout=60s']).catch(() => undefined);
    await env.stop();
  }
}

interface FleetReport {
  event: 'up' | 'memory' | 'stopped';
  nodes?: number;
  startMs?: number;
  rss?: number;
  heap?: number;
  cpuMicros?: number;
}

/**
 * Part 3: the simulated node agents run in a child process of their own (bench/sim/fleet.ts), so that
 * its memory is theirs alone: its RSS and heap are read after start-up (imports done, no node yet) and
 * again at the end of the window.
 */
async function fleet(): Promise<void> {
  console.log('');
  console.log(`part 3: SIMULATION — ${FLEET_NODES} node agents in one process (no VMs: a no-op hypervisor), Lease every ${FLEET_LEASE_MS / 1000} s`);
  const cluster = await startCluster();
  let child: ChildProcess | undefined;
  try {
    // The identities first: certificates are the harness's cost, not a node's.
    const names = Array.from({ length: FLEET_NODES }, (_, i) => `sim-${String(i).padStart(3, '0')}`);
    const kubeconfigs: Record<string, string> = {};
    for (const name of names) kubeconfigs[name] = await cluster.nodeKubeconfig(name);
    const spec = path.join(cluster.dir, 'fleet.json');
    await writeFile(spec, JSON.stringify({ kubeconfigs, dir: cluster.dir, leaseMs: FLEET_LEASE_MS }));
    const proc = fork(path.join(import.meta.dirname, 'sim', 'fleet.ts'), [spec], { execArgv: ['--expose-gc', '--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child = proc;
    const reports: FleetReport[] = [];
    proc.on('message', (m: FleetReport) => reports.push(m));
    const next = async (event: FleetReport['event']): Promise<FleetReport> => {
      for (;;) {
        const i = reports.findIndex((r) => r.event === event);
        if (i >= 0) return reports.splice(i, 1)[0]!;
        if (proc.exitCode !== null) throw new Error(`the fleet process exited (${proc.exitCode}) before "${event}"`);
        await sleep(100);
      }
    };
    const base = await next('memory');
    const up = await next('up');
    const n = up.nodes!;
    console.log(`${n} simulated nodes registered and heartbeating in ${(up.startMs! / 1000).toFixed(1)} s; ${FLEET_WARMUP_MS / 1000} s warm-up, then ${FLEET_WINDOW_MS / 1000} s measured ...`);
    await sleep(FLEET_WARMUP_MS);
    const from = Date.now();
    proc.send('cpu');
    const cpu0 = await next('memory');
    const m0 = resourceRequests(await cluster.apiServerMetrics());
    await sleep(FLEET_WINDOW_MS);
    const m1 = resourceRequests(await cluster.apiServerMetrics());
    const until = Date.now();
    proc.send('cpu');
    const mem = await next('memory');
    const ready = (await cluster.kubectl(['get', 'nodes', '--no-headers'])).stdout.split('\n').filter((l) => / Ready /.test(l)).length;
    const audited = (await auditEvents(cluster, (u) => u.startsWith('system:node:sim-'))).filter((e) => e.at >= from && e.at < until);
    const seconds = (until - from) / 1000;
    const metricTotal = [...m1].reduce((a, [k, v]) => a + v - (m0.get(k) ?? 0), 0);
    const cpuMs = (mem.cpuMicros! - cpu0.cpuMicros!) / 1000;
    console.log('');
    console.log(`| SIMULATION: ${n} node agents in one process, no VMs, Lease every ${FLEET_LEASE_MS / 1000} s | value |`);
    console.log('|---|---|');
    console.log(`| API requests per node per second (audit log, the nodes' users, ${seconds.toFixed(0)} s) | ${(audited.length / n / seconds).toFixed(4)} (${(audited.length / seconds).toFixed(1)}/s for the fleet) |`);
    console.log(`| all requests to the API server (apiserver_request_total, all users) | ${(metricTotal / seconds).toFixed(1)}/s |`);
    console.log(`| RSS per node | ${mb((mem.rss! - base.rss!) / n)} MiB (process ${mb(mem.rss!)} MiB; ${mb(base.rss!)} MiB with everything loaded and no node) |`);
    console.log(`| V8 heap used per node (after GC) | ${mb((mem.heap! - base.heap!) / n)} MiB (${mb(mem.heap!)} MiB; ${mb(base.heap!)} MiB with no node) |`);
    console.log(`| CPU of the process per node | ${(cpuMs / seconds / n).toFixed(3)} ms/s (${((cpuMs / 1000 / seconds) * 100).toFixed(1)}% of a core for the fleet) |`);
    console.log(`| Nodes Ready (kubectl get nodes) | ${ready} of ${n} |`);
    console.log('');
    console.log(`requests in the window by kind, per node per minute: ${listing(countBy(audited, (e) => e.key), (n * seconds) / 60)}`);
    proc.send('stop');
    await next('stopped');
  } finally {
    child?.kill('SIGKILL');
    await cluster.stop();
  }
}

if (PARTS.includes('start')) await podStarts();
if (PARTS.includes('fleet')) await fleet();
