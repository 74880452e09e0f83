// Benchmark: the kubelet API as users reach it — the real kubectl through the real kube-apiserver to
// vmlet's kubelet port (SPDY/3.1 over TLS), to a QEMU VM pod (the Linux test guest, TCG here).
//   1. `kubectl exec POD -- true` latency against `kubectl get pod POD` (same kubectl, same API server,
//      no kubelet involved) as the baseline. Target: ratio <= 3.
//   2. `kubectl port-forward` throughput, BENCH_PF_MIB (default 1024) MiB from a server in the pod's VM,
//      against a direct connection to the same server in a VM of the same image through QEMU's own port
//      forward (no kubectl, API server, SPDY or agent). Target: >= 0.5x.
//   3. `kubectl logs -f` throughput: BENCH_LOG_MIB (default 6) MiB of log lines, followed from the start
//      until the last line arrives, against `kubectl exec -- cat` of the same bytes.
// Run: npm run bench -- kubelet      (BENCH_ROUNDS=10)
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { V1Pod } from '@kubernetes/client-node';
import { QemuDriver } from '../src/drivers/qemu/index.ts';
import { importImage } from '../src/images/build.ts';
import { ImageStore } from '../src/images/store/image-store.ts';
import { VmInstance } from '../src/runtime/vm-instance.ts';
import { startCluster } from '../test/harness/cluster.ts';
import { freePort, waitFor } from '../test/harness/processes.ts';
import { startRegistry } from '../test/harness/registry.ts';
import { runVmlet, VmletProcess } from '../test/harness/vmlet.ts';
import { ensureTestGuest } from '../test/guest/build.ts';
import { guestImageSource, importArgs } from '../test/guest/image.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 10);
// 1 GiB, the figure: about 4 minutes per path under TCG here.
const PF_BYTES = Number(process.env.BENCH_PF_MIB ?? 1024) * 1024 * 1024;
// Below the agent's 10 MiB rotation once the CRI prefix is added (kubectl logs reads the current file only).
const LOG_MIB = Number(process.env.BENCH_LOG_MIB ?? 6);
const MiB = 1024 ** 2;
const NODE = 'bench-kubelet';
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

// The pod's main process: a server that sends PF_BYTES to each connection, then the log lines for (3).
const SERVER = `
const net = require('net');
const chunk = Buffer.alloc(1 << 20, 'vmlet');
net.createServer((s) => {
  let left = Number(process.env.BYTES);
  const more = () => { while (left > 0) { const n = Math.min(left, chunk.length); left -= n; if (!s.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return s.once('drain', more); } s.end(); };
  more();
}).listen(8080, '0.0.0.0', () => console.log('listening'));
`;
const LOGGER = `const line = 'x'.repeat(99); const n = ${LOG_MIB} * 1024 * 1024 / 100; let i = 0;
const w = () => { while (i < n) { i++; if (!process.stdout.write(line + '\\n')) return process.stdout.once('drain', w); } console.log('END'); setInterval(() => {}, 1e9); }; w();`;

async function download(port: number, bytes: number): Promise<number> {
  const t0 = performance.now();
  const s = net.connect(port, '127.0.0.1');
  let got = 0;
  for await (const d of s) got += (d as Buffer).length;
  if (got !== bytes) throw new Error(`got ${got} bytes of ${bytes}`);
  return performance.now() - t0;
}

const guest = await ensureTestGuest((m) => console.log(`guest: ${m}`));
const [cluster, registry] = await Promise.all([startCluster(), startRegistry({})]);
let vmlet: VmletProcess | undefined;
let direct: VmInstance | undefined;
const children: ReturnType<typeof spawn>[] = [];
try {
  const build = path.join(cluster.dir, 'build-store');
  await runVmlet([...importArgs('guest:1', await guestImageSource(guest)), `--store=${build}`], {}, 240_000);
  const image = `${registry.host}/vmlet/test-guest:1`;
  await runVmlet(['image', 'push', 'guest:1', image, `--store=${build}`], {}, 240_000);
  await cluster.kubectl(['create', 'serviceaccount', 'default']);
  const dir = path.join(cluster.dir, NODE);
  vmlet = await VmletProcess.start({ kubeconfig: await cluster.nodeKubeconfig(NODE), nodeName: NODE, dir, args: ['--vm-slots=2', ...(await cluster.kubeletTlsArgs(dir))] });
  await vmlet.waitUntilUp(120_000);
  const pod = (name: string, script: string) => ({
    apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default' },
    spec: { nodeName: NODE, automountServiceAccountToken: false, terminationGracePeriodSeconds: 5, containers: [{ name: 'vm', image, command: ['node', '-e', script], env: [{ name: 'BYTES', value: String(PF_BYTES) }] }] },
  });
  await cluster.kubectl(['apply', '-f', '-'], { input: JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [pod('server', SERVER), pod('logger', LOGGER)] }) });
  for (const name of ['server', 'logger']) {
    await waitFor(`pod ${name} Ready`, async () => {
      const r = await cluster.kubectl(['get', 'pod', name, '-o', 'json']);
      const p = JSON.parse(r.stdout || '{}') as V1Pod;
      return p.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True' ? true : undefined;
    }, { timeoutMs: 400_000, intervalMs: 1000 });
  }

  // Ready means the VM runs the command; the server has started once it says so.
  await waitFor('server listening', async () => ((await cluster.kubectl(['logs', 'server'])).stdout.includes('listening') ? true : undefined), { timeoutMs: 120_000, intervalMs: 1000 });

  // 1. exec latency.
  const time = async (args: string[]) => {
    const t0 = performance.now();
    const r = await cluster.kubectl(args);
    if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')}: ${r.stderr}`);
    return performance.now() - t0;
  };
  await time(['exec', 'server', '--', 'true']);
  const get: number[] = [];
  const exec: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    get.push(await time(['get', 'pod', 'server']));
    exec.push(await time(['exec', 'server', '--', 'true']));
  }
  console.log(`kubectl get pod (baseline): median ${median(get).toFixed(0)} ms (${ROUNDS} rounds, ${Math.min(...get).toFixed(0)}–${Math.max(...get).toFixed(0)})`);
  console.log(`kubectl exec -- true:       median ${median(exec).toFixed(0)} ms (${Math.min(...exec).toFixed(0)}–${Math.max(...exec).toFixed(0)})`);
  console.log(`ratio exec/get: ${(median(exec) / median(get)).toFixed(2)}x (target <= 3x)`);

  // 2. port-forward throughput vs a direct connection through QEMU's forward, same image and server.
  const pf = spawn(cluster.binaries.kubectl, [`--kubeconfig=${cluster.adminKubeconfig}`, 'port-forward', 'pod/server', ':8080']);
  children.push(pf);
  let pfOut = '';
  pf.stdout.on('data', (d: Buffer) => (pfOut += d.toString()));
  const pfPort = await waitFor('port-forward', async () => Number(/127\.0\.0\.1:(\d+) -> 8080/.exec(pfOut)?.[1]) || undefined, { timeoutMs: 60_000, intervalMs: 200 });
  const viaPf = await download(pfPort, PF_BYTES);
  const store = new ImageStore(path.join(cluster.dir, 'direct-store'));
  await store.init();
  const stored = await importImage({ store, name: 'guest:direct', source: await guestImageSource(guest) });
  const hostPort = await freePort();
  direct = await VmInstance.launch({ store, driver: await QemuDriver.open(), vmDir: path.join(cluster.dir, 'direct-vms'), image: stored, name: 'direct', network: { mode: 'user', forwards: [{ protocol: 'tcp', hostPort, guestPort: 8080 }] } });
  await direct.agent.startMain({ id: 'server', argv: ['node', '-e', SERVER], env: { BYTES: String(PF_BYTES) } });
  // QEMU's forward accepts on the host before the guest listens: the server is up once its log says so.
  await waitFor('direct server listening', async () => {
    const logs = await direct!.agent.logs('server', {});
    let text = '';
    for await (const d of logs) text += String(d);
    return text.includes('listening') ? true : undefined;
  }, { timeoutMs: 60_000, intervalMs: 500 });
  const viaDirect = await download(hostPort, PF_BYTES);
  const rate = (ms: number) => PF_BYTES / MiB / (ms / 1000);
  console.log(`port-forward (kubectl → API server → vmlet → agent): ${(PF_BYTES / MiB).toFixed(0)} MiB in ${(viaPf / 1000).toFixed(1)} s = ${rate(viaPf).toFixed(1)} MiB/s`);
  console.log(`direct (QEMU user-net forward, same server):          ${(PF_BYTES / MiB).toFixed(0)} MiB in ${(viaDirect / 1000).toFixed(1)} s = ${rate(viaDirect).toFixed(1)} MiB/s`);
  console.log(`ratio port-forward/direct: ${(rate(viaPf) / rate(viaDirect)).toFixed(2)}x (target >= 0.5x)`);

  // 3. logs -f throughput vs exec cat of the same log file.
  await waitFor('logger done', async () => ((await cluster.kubectl(['logs', 'logger', '--tail=1'])).stdout.includes('END') ? true : undefined), { timeoutMs: 600_000, intervalMs: 2000 });
  const t0 = performance.now();
  const follow = spawn(cluster.binaries.kubectl, [`--kubeconfig=${cluster.adminKubeconfig}`, 'logs', '-f', 'logger']);
  children.push(follow);
  let bytes = 0;
  let tailText = '';
  await new Promise<void>((resolve) => follow.stdout.on('data', (d: Buffer) => {
    bytes += d.length;
    tailText = (tailText + d.toString('latin1')).slice(-8);
    if (tailText.includes('END\n')) resolve();
  }));
  const followMs = performance.now() - t0;
  follow.kill();
  const logFile = '/var/log/vmlet/vm.log'; // the agent's CRI log of container "vm" (src/agent/guest/main.ts)
  const catMs = await time(['exec', 'logger', '--', 'cat', logFile]);
  console.log(`kubectl logs -f: ${(bytes / MiB).toFixed(1)} MiB in ${(followMs / 1000).toFixed(1)} s = ${(bytes / MiB / (followMs / 1000)).toFixed(1)} MiB/s`);
  console.log(`kubectl exec cat of the CRI log (${logFile}, baseline): ${(catMs / 1000).toFixed(1)} s; ratio logs/cat time ${(followMs / catMs).toFixed(2)}x`);
} finally {
  for (const c of children) c.kill('SIGKILL');
  await direct?.stop(10_000).catch(() => undefined);
  // Pod VMs outlive vmlet on purpose (the next one adopts them): deleted first, so none is left running.
  await cluster.kubectl(['delete', 'pod', '--all', '--wait=true', '--timeout=60s']).catch(() => undefined);
  await vmlet?.stop();
  await Promise.all([cluster.stop(), registry.stop()]);
}
