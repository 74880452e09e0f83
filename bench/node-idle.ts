// Benchmark: what an idle `vmlet run` costs its host and the cluster.
//   1. Resident memory of vmlet (the compiled build, as shipped) 60 s after start, against two baselines
//      measured in the same run: a bare Node.js process, and one that only loads @kubernetes/client-node.
//      Target: <= 80 MB.
//   2. API requests per minute at steady state, read from the API server's own metrics
//      (apiserver_request_total, resource requests only) with the API server's background traffic,
//      measured first without vmlet over the same window, subtracted. Cross-checked with the audit log,
//      which names the user of each request. Target: <= 7.
// Run: npm run bench -- node-idle   (about 6 minutes)
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startCluster, type Cluster } from '../test/harness/cluster.ts';
import { runCommand } from '../test/harness/exec.ts';
import { VmletProcess } from '../test/harness/vmlet.ts';

const WARMUP_MS = Number(process.env.BENCH_WARMUP_MS ?? 60_000);
const WINDOW_MS = Number(process.env.BENCH_WINDOW_MS ?? 180_000);
const NODE = 'bench-node';
const root = path.join(import.meta.dirname, '..');

/** apiserver_request_total over resource requests (non-resource URLs such as /metrics left out), by verb and resource. */
function resourceRequests(metrics: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const line of metrics.split('\n')) {
    if (!line.startsWith('apiserver_request_total{')) continue;
    if (/[{,]resource=""/.test(line)) continue;
    const label = (name: string) => new RegExp(`[{,]${name}="([^"]*)"`).exec(line)?.[1] ?? '';
    const key = `${label('verb')} ${label('resource')}${label('subresource') ? `/${label('subresource')}` : ''}`;
    counts.set(key, (counts.get(key) ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1)));
  }
  return counts;
}

function delta(after: Map<string, number>, before: Map<string, number>): Map<string, number> {
  const d = new Map<string, number>();
  for (const [k, v] of after) if (v - (before.get(k) ?? 0) > 0) d.set(k, v - (before.get(k) ?? 0));
  return d;
}

const sum = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
const breakdown = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}: ${v}`).join(', ');

async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
  if (!kb) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(kb) * 1024;
}

/** RSS of a Node.js process running `code`, `WARMUP_MS` after it started. */
async function baselineRss(code: string): Promise<number> {
  const child = spawn(process.execPath, ['--input-type=module', '-e', `${code}\nsetInterval(() => {}, 1000);`], { cwd: root, stdio: 'ignore' });
  try {
    await sleep(WARMUP_MS);
    return await rssBytes(child.pid!);
  } finally {
    child.kill('SIGKILL');
  }
}

/** Requests by `user` received in [since, until): distinct audit IDs (a watch has several stages). */
async function auditCount(cluster: Cluster, user: string, since: number, until: number): Promise<number> {
  const text = await readFile(cluster.auditLogFile, 'utf8');
  const ids = new Set<string>();
  for (const line of text.split('\n')) {
    if (!line.includes(user)) continue;
    const event = JSON.parse(line) as { auditID: string; user: { username: string }; requestReceivedTimestamp: string };
    const t = Date.parse(event.requestReceivedTimestamp);
    if (event.user.username === user && t >= since && t < until) ids.add(event.auditID);
  }
  return ids.size;
}

const mb = (b: number) => (b / 2 ** 20).toFixed(1);

async function main(): Promise<void> {
  console.log('building vmlet (npm run build) so that the shipped JavaScript is measured ...');
  const build = await runCommand('npm', ['run', 'build', '--silent'], { cwd: root, timeoutMs: 300_000 });
  if (build.code !== 0) throw new Error(`build failed:\n${build.stdout}${build.stderr}`);

  const cluster = await startCluster();
  let vmlet: VmletProcess | undefined;
  try {
    console.log(`baseline: API server alone for ${WINDOW_MS / 1000}s, and two bare Node.js processes ...`);
    const [bareRss, clientRss, apiBaseline] = await Promise.all([
      baselineRss(''),
      baselineRss("await import('@kubernetes/client-node');"),
      (async () => {
        const a = resourceRequests(await cluster.apiServerMetrics());
        await sleep(WINDOW_MS);
        return delta(resourceRequests(await cluster.apiServerMetrics()), a);
      })(),
    ]);

    console.log(`vmlet: starting, ${WARMUP_MS / 1000}s warm-up, then ${WINDOW_MS / 1000}s measured ...`);
    vmlet = await VmletProcess.start({
      kubeconfig: await cluster.nodeKubeconfig(NODE),
      nodeName: NODE,
      dir: path.join(cluster.dir, NODE),
      env: { VMLET_USE_DIST: '1' },
    });
    await vmlet.waitUntilUp();
    await sleep(WARMUP_MS);
    const rss = await rssBytes(vmlet.pid);
    const from = Date.now();
    const a = resourceRequests(await cluster.apiServerMetrics());
    await sleep(WINDOW_MS);
    const withVmletByKind = delta(resourceRequests(await cluster.apiServerMetrics()), a);
    const withVmlet = sum(withVmletByKind);
    const alone = sum(apiBaseline);
    const until = Date.now();
    const audited = await auditCount(cluster, `system:node:${NODE}`, from, until);

    const minutes = WINDOW_MS / 60_000;
    const perMinute = (withVmlet - alone) / minutes;
    console.log('');
    console.log('| measure | value | baseline (same run) | ratio | target |');
    console.log('|---|---|---|---|---|');
    console.log(`| RSS of idle vmlet after ${WARMUP_MS / 1000}s | ${mb(rss)} MB | bare node ${mb(bareRss)} MB; node + client-node ${mb(clientRss)} MB | ${(rss / bareRss).toFixed(2)}x bare, ${(rss / clientRss).toFixed(2)}x client-node | <= 80 MB |`);
    console.log(`| API requests/min (apiserver_request_total) | ${perMinute.toFixed(2)} | API server alone ${(alone / minutes).toFixed(2)}/min | ${(withVmlet / Math.max(1, alone)).toFixed(2)}x alone | <= 7 |`);
    console.log(`| API requests/min by system:node:${NODE} (audit log) | ${(audited / minutes).toFixed(2)} | - | - | <= 7 |`);
    console.log('');
    console.log(`requests in the ${minutes} min window, API server alone: ${breakdown(apiBaseline)}`);
    console.log(`requests in the ${minutes} min window, with vmlet:      ${breakdown(withVmletByKind)}`);
    console.log('');
    console.log(`RSS ${rss <= 80 * 2 ** 20 ? 'meets' : 'MISSES'} its target; requests/min ${perMinute <= 7 ? 'meets' : 'MISSES'} its target.`);
  } finally {
    await vmlet?.stop();
    await cluster.stop();
  }
}

await main();
