// kubectl exec, attach, logs, port-forward and cp on a VM pod, as a user runs them: the real kubectl,
// through the real kube-apiserver (over TLS with its kubelet client certificate) to vmlet's kubelet port,
// to a QEMU VM booted from the Linux test guest. The node declares ExtendWebSocketsToKubelet, so the API
// server passes kubectl's WebSockets through; with kubectl's WebSockets turned off
// (KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false) the same commands arrive as SPDY/3.1. One pod serves all tests:
// its main process (Node in the guest) logs lines to stdout and stderr, echoes what comes on its stdin,
// and serves two TCP ports (8080 echoes, 8081 greets).
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { V1Pod } from '@kubernetes/client-node';
import { startCluster, type Cluster } from '../harness/cluster.ts';
import { runCommand } from '../harness/exec.ts';
import { httpGet, tlsAgent } from '../harness/https.ts';
import { parsePrometheus } from '../unit/kubelet/prometheus-text.ts';
import { waitFor } from '../harness/processes.ts';
import { startRegistry, type Registry } from '../harness/registry.ts';
import { killVmProcessesUnder, runVmlet, VmletProcess } from '../harness/vmlet.ts';
import { ensureTestGuest } from '../guest/build.ts';
import { guestImageSource, importArgs } from '../guest/image.ts';

const NODE = 'stream-node';
const POD = 'box';
let cluster: Cluster;
let registry: Registry;
let vmlet: VmletProcess;
const children = new Set<ChildProcessWithoutNullStreams>();

// The pod's main process. Plain ES5-ish JavaScript for the guest's Node; no files needed in the image.
const MAIN = `
const net = require('net');
console.log('out 1'); console.error('err 1'); console.log('out 2'); console.error('err 2'); console.log('out 3');
process.stdin.on('data', (d) => console.log('stdin: ' + String(d).trim()));
net.createServer((s) => s.pipe(s)).listen(8080, '127.0.0.1');
net.createServer((s) => s.end('hello from 8081\\n')).listen(8081, '127.0.0.1');
let n = 0; setInterval(() => console.log('tick ' + (++n)), 1000);
`;

/** kubectl's own switches between WebSocket (its default) and SPDY/3.1 towards the API server. */
const SPDY = { KUBECTL_REMOTE_COMMAND_WEBSOCKETS: 'false', KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false' };
const TRANSPORTS = [['websocket', {}], ['spdy', SPDY]] as const;

const kubectl = async (args: string[], input?: string, env: NodeJS.ProcessEnv = {}) =>
  runCommand(cluster.binaries.kubectl, [`--kubeconfig=${cluster.adminKubeconfig}`, ...args], { ...(input !== undefined ? { input } : {}), env: { ...process.env, ...env }, timeoutMs: 120_000 });
const ok = async (args: string[], input?: string) => {
  const r = await kubectl(args, input);
  assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};

/** A long-running kubectl (port-forward, logs -f, attach) whose output the test watches; killed in after(). */
function kubectlProcess(args: string[], env: NodeJS.ProcessEnv = {}): { child: ChildProcessWithoutNullStreams; output: () => string } {
  const child = spawn(cluster.binaries.kubectl, [`--kubeconfig=${cluster.adminKubeconfig}`, ...args], { env: { ...process.env, ...env } });
  children.add(child);
  child.on('exit', () => children.delete(child));
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  return { child, output: () => out };
}

before(async () => {
  const guest = await ensureTestGuest();
  [cluster, registry] = await Promise.all([startCluster(), startRegistry({})]);
  const build = path.join(cluster.dir, 'build-store');
  assert.equal((await runVmlet([...importArgs('guest:1', await guestImageSource(guest)), `--store=${build}`], {}, 240_000)).code, 0);
  const image = `${registry.host}/vmlet/test-guest:1`;
  assert.equal((await runVmlet(['image', 'push', 'guest:1', image, `--store=${build}`], {}, 240_000)).code, 0);
  await ok(['create', 'serviceaccount', 'default']);
  const dir = path.join(cluster.dir, NODE);
  vmlet = await VmletProcess.start({ kubeconfig: await cluster.nodeKubeconfig(NODE), nodeName: NODE, dir, args: await cluster.kubeletTlsArgs(dir) });
  await vmlet.waitUntilUp(120_000);
  const pod = {
    apiVersion: 'v1', kind: 'Pod', metadata: { name: POD, namespace: 'default' },
    spec: {
      nodeName: NODE, automountServiceAccountToken: false, terminationGracePeriodSeconds: 5,
      containers: [{ name: 'vm', image, command: ['node', '-e', MAIN], stdin: true }],
    },
  };
  await ok(['apply', '-f', '-'], JSON.stringify(pod));
  await waitFor('pod box Ready', async () => {
    const p = JSON.parse(await ok(['get', 'pod', POD, '-o', 'json'])) as V1Pod;
    return p.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True' ? p : undefined;
  }, { timeoutMs: 300_000, intervalMs: 1000 });
  // The main process has started its servers once it ticks.
  await waitFor('the main process ticks', async () => ((await kubectl(['logs', POD])).stdout.includes('tick 1') ? true : undefined), { timeoutMs: 60_000, intervalMs: 1000 });
});

after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await vmlet?.stop();
  // VMs outlive vmlet on purpose; the test's own must not outlive the test.
  if (vmlet) await killVmProcessesUnder(vmlet.dir);
  await Promise.all([cluster?.stop(), registry?.stop()]);
});

/**
 * The transports of the `count` streaming sessions that started after `from`. vmlet logs one line per session
 * as it ends, with its duration, so the line may land after kubectl has exited: wait for `count` of them (and a
 * session of the previous test may end, and be logged, after `from`: the start time tells it apart).
 */
async function sessionTransports(kind: string, from: number, count: number): Promise<string[]> {
  const read = async () =>
    (await vmlet.logs()).filter((l) => l.kind === kind && Date.parse(l.time) - Number(l.ms) >= from).map((l) => String(l.transport));
  await waitFor(`${count} ${kind} session(s) logged`, async () => ((await read()).length >= count ? true : undefined), { timeoutMs: 30_000, intervalMs: 200 }).catch(() => undefined);
  return read();
}

for (const [transport, env] of TRANSPORTS) {
  test(`kubectl exec (${transport}) runs a command in the VM with its stdout, stderr and exit code`, async () => {
    const from = Date.now();
    const r = await kubectl(['exec', POD, '--', 'sh', '-c', 'echo to-out; echo to-err >&2; uname -s; hostname; exit 3'], undefined, env);
    assert.equal(r.code, 3, r.stderr);
    assert.equal(r.stdout, `to-out\nLinux\n${POD}\n`, 'the VM is named after its pod');
    assert.match(r.stderr, /to-err/);
    assert.match(r.stderr, /command terminated with exit code 3/);
    const zero = await kubectl(['exec', POD, '-c', 'vm', '--', 'true'], undefined, env);
    assert.equal(zero.code, 0, zero.stderr);
    assert.deepEqual(await sessionTransports('exec', from, 2), [transport, transport], 'the sessions reached vmlet over this transport');
  });

  test(`kubectl exec -i (${transport}) passes stdin through to the command, end of input included`, async () => {
    const input = Array.from({ length: 2000 }, (_, i) => `line ${i}`).join('\n') + '\n';
    const r = await kubectl(['exec', '-i', POD, '--', 'sh', '-c', 'wc -l; md5sum'], input, env);
    assert.equal(r.code, 0, r.stderr);
    // wc consumed the input; md5sum gets none: the end of stdin arrived.
    assert.match(r.stdout, /^\s*2000\n/);
    const echoed = await kubectl(['exec', '-i', POD, '--', 'cat'], 'über data\n', env);
    assert.equal(echoed.stdout, 'über data\n');
  });
}

test('kubectl exec -it gets a terminal of the client size, and a resize reaches it', async () => {
  const dir = await mkdtemp(path.join(cluster.dir, 'tty-'));
  const ttyFile = path.join(dir, 'tty');
  const kc = `${cluster.binaries.kubectl} --kubeconfig=${cluster.adminKubeconfig}`;
  // script(1) gives kubectl a real terminal; its size is set first, and the pty's name saved for the resize.
  const inner = `stty rows 33 cols 111; tty > ${ttyFile}; ${kc} exec -it ${POD} -- sh -c 'stty size; read x; stty size; tty'`;
  const script = spawn('script', ['-qfec', inner, '/dev/null']);
  children.add(script);
  let out = '';
  script.stdout.on('data', (d: Buffer) => (out += d.toString()));
  script.stderr.on('data', (d: Buffer) => (out += d.toString()));
  await waitFor('the first size in the VM', async () => (out.includes('33 111') ? true : undefined), { timeoutMs: 60_000, intervalMs: 200 });
  const pts = (await readFile(ttyFile, 'utf8')).trim();
  await runCommand('stty', ['-F', pts, 'rows', '50', 'cols', '120']);
  await runCommand('pkill', ['-WINCH', '-f', `exec -it ${POD}`]);
  await new Promise((r) => setTimeout(r, 1500)); // the resize travels ahead of the line below
  script.stdin.write('\r');
  const code = await new Promise<number | null>((resolve) => script.on('exit', (c) => resolve(c)));
  assert.match(out, /50 120/, out);
  assert.match(out, /\/dev\/pts\/\d+/, 'the command ran on a terminal in the guest');
  assert.equal(code, 0, out);
});

test('kubectl attach -i reaches the running main process: its live output and its stdin', async () => {
  const { child, output } = kubectlProcess(['attach', '-i', POD, '-c', 'vm']);
  await waitFor('a tick through attach', async () => (/tick \d+/.test(output()) ? true : undefined), { timeoutMs: 60_000, intervalMs: 200 });
  child.stdin.write('hello main\n');
  await waitFor('the main process echoes stdin', async () => (output().includes('stdin: hello main') ? true : undefined), { timeoutMs: 30_000, intervalMs: 200 });
  child.kill('SIGINT');
  // What came through attach also went to the log.
  await waitFor('echo in the log', async () => ((await kubectl(['logs', POD])).stdout.includes('stdin: hello main') ? true : undefined), { timeoutMs: 30_000, intervalMs: 500 });
});

test('kubectl logs: all, --tail, --since, --timestamps, --limit-bytes, and -f that follows new lines', async () => {
  const all = await ok(['logs', POD]);
  // stdout and stderr are two pipes: each keeps its order, their interleaving is the guest's to decide.
  const first = all.split('\n').slice(0, 5);
  assert.deepEqual(first.filter((l) => l.startsWith('out')), ['out 1', 'out 2', 'out 3']);
  assert.deepEqual(first.filter((l) => l.startsWith('err')), ['err 1', 'err 2']);
  const tail = (await ok(['logs', POD, '--tail=2'])).trimEnd().split('\n');
  assert.equal(tail.length, 2);
  assert.match(tail[1]!, /^(tick \d+|stdin: .*)$/);
  const ts = (await ok(['logs', POD, '--timestamps', '--tail=1'])).trim();
  assert.match(ts, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z /);
  const recent = await ok(['logs', POD, '--since=3s']);
  assert.ok(!recent.includes('out 1'), 'the first lines are older than 3 s');
  assert.match(recent, /tick \d+/);
  const limited = await ok(['logs', POD, '--limit-bytes=7']);
  assert.equal(limited, all.slice(0, 7));
  const { child, output } = kubectlProcess(['logs', '-f', '--tail=1', POD]);
  const last = Number(/tick (\d+)/.exec(tail.join('\n'))?.[1] ?? 0);
  await waitFor('a new tick while following', async () => {
    const ticks = [...output().matchAll(/tick (\d+)/g)].map((m) => Number(m[1]));
    return ticks.some((t) => t > last + 1) ? true : undefined;
  }, { timeoutMs: 60_000, intervalMs: 200 });
  child.kill('SIGINT');
});

for (const [transport, env] of TRANSPORTS) test(`kubectl port-forward (${transport}): two ports, concurrent connections, and 8 MiB through and back checksummed`, async () => {
  const from = Date.now();
  const { child, output } = kubectlProcess(['port-forward', `pod/${POD}`, ':8080', ':8081'], env);
  const ports = await waitFor('two forwarded ports', async () => {
    const m = [...output().matchAll(/Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)/g)];
    return m.length >= 2 ? new Map(m.map((x) => [Number(x[2]), Number(x[1])])) : undefined;
  }, { timeoutMs: 60_000, intervalMs: 200 });
  const greet = async () => {
    const s = net.connect(ports.get(8081)!, '127.0.0.1');
    let text = '';
    for await (const d of s) text += String(d);
    return text;
  };
  assert.deepEqual(await Promise.all([greet(), greet(), greet()]), Array(3).fill('hello from 8081\n'));
  const echo = async (bytes: number) => {
    const data = randomBytes(bytes);
    const s = net.connect(ports.get(8080)!, '127.0.0.1');
    const hash = createHash('sha256');
    let got = 0;
    const done = new Promise<void>((resolve, reject) => {
      s.on('data', (d: Buffer) => {
        hash.update(d);
        got += d.length;
        if (got >= bytes) {
          s.end();
          resolve();
        }
      });
      s.on('error', reject);
    });
    s.write(data);
    await done;
    assert.equal(hash.digest('hex'), createHash('sha256').update(data).digest('hex'));
  };
  // Under TCG the guest moves about 1 MiB/s each way through the agent channel: 8 MiB keeps this short.
  await Promise.all([echo(8 * 1024 * 1024), echo(1024 * 1024), echo(10)]);
  assert.ok(!/error/i.test(output()), output());
  child.kill('SIGINT');
  assert.deepEqual(await sessionTransports('port-forward', from, 1), [transport]);
});

test('kubectl cp copies a file into the VM and back out unchanged', async () => {
  const dir = await mkdtemp(path.join(cluster.dir, 'cp-'));
  const src = path.join(dir, 'in.bin');
  const data = randomBytes(3 * 1024 * 1024 + 17);
  await writeFile(src, data);
  await ok(['cp', src, `${POD}:/tmp/in.bin`]);
  const sum = (await ok(['exec', POD, '--', 'sha256sum', '/tmp/in.bin'])).split(/\s+/)[0];
  assert.equal(sum, createHash('sha256').update(data).digest('hex'));
  const back = path.join(dir, 'back.bin');
  await ok(['cp', `${POD}:/tmp/in.bin`, back]);
  assert.deepEqual(await readFile(back), data);
});

test('bad requests get clear answers and leave vmlet serving: no such container, no such program, garbage after the upgrade', async () => {
  const noContainer = await kubectl(['exec', POD, '-c', 'nope', '--', 'true']);
  assert.notEqual(noContainer.code, 0);
  assert.match(noContainer.stderr, /container .*nope.* not (found|valid)/i);
  const missing = await kubectl(['exec', POD, '--', '/no/such/program']);
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, /no\/such\/program/);
  // Straight to the kubelet port: an upgrade, then bytes that are no SPDY frame, with and without credentials.
  const url = new URL(vmlet.kubeletUrl);
  const tls = await import('node:tls');
  const cert = await cluster.issueClientCert('kube-apiserver-kubelet-client', ['system:masters']);
  const garbage = async (withCert: boolean) => {
    const auth = withCert ? { cert: await readFile(cert.certFile), key: await readFile(cert.keyFile) } : {};
    const sock = tls.connect({ host: url.hostname, port: Number(url.port), rejectUnauthorized: false, ...auth });
    await new Promise((r) => sock.once('secureConnect', r));
    let answer = '';
    sock.on('data', (d: Buffer) => (answer += d.toString('latin1')));
    sock.on('error', () => undefined);
    sock.write(`POST /exec/default/${POD}/vm?command=true&output=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n`);
    sock.write(randomBytes(4096));
    await new Promise((r) => sock.once('close', r));
    return answer;
  };
  assert.match(await garbage(false), /^HTTP\/1\.1 401/, 'no credentials: refused before any SPDY');
  assert.match(await garbage(true), /^HTTP\/1\.1 101/, 'upgraded, then closed on the garbage');
  const again = await kubectl(['exec', POD, '--', 'echo', 'still here']);
  assert.equal(again.stdout, 'still here\n');
});

test('/metrics/resource and /stats/summary report the running VM pod with non-zero CPU and memory, and /run answers with a command output', async () => {
  // Straight to the kubelet port as the API server (and metrics-server) reach it: the API server's node
  // proxy refuses loopback node addresses, so this test plays the scraper with the same client certificate.
  const cert = await cluster.issueClientCert('kube-apiserver-kubelet-client', ['system:masters']);
  const agent = tlsAgent({ ca: await readFile(cluster.caFile, 'utf8'), cert: await readFile(cert.certFile, 'utf8'), key: await readFile(cert.keyFile, 'utf8') });
  try {
    const metrics = await httpGet(`${vmlet.kubeletUrl}/metrics/resource`, { agent });
    assert.equal(metrics.status, 200, metrics.body);
    const { samples } = parsePrometheus(metrics.body);
    const pod = (name: string) => samples.find((x) => x.name === name && x.labels.pod === POD && x.labels.namespace === 'default');
    assert.ok((pod('pod_cpu_usage_seconds_total')?.value ?? 0) > 0, metrics.body);
    assert.ok((pod('pod_memory_working_set_bytes')?.value ?? 0) > 1024 * 1024, metrics.body);
    assert.ok(samples.some((x) => x.name === 'container_cpu_usage_seconds_total' && x.labels.pod === POD && x.labels.container === 'vm' && x.value > 0));
    const summary = await httpGet(`${vmlet.kubeletUrl}/stats/summary`, { agent });
    assert.equal(summary.status, 200);
    const body = JSON.parse(summary.body) as { node: { nodeName: string }; pods: { podRef: { name: string; uid: string }; cpu?: { usageCoreNanoSeconds?: number }; memory?: { workingSetBytes?: number } }[] };
    assert.equal(body.node.nodeName, NODE);
    const box = body.pods.find((p) => p.podRef.name === POD);
    assert.ok((box?.cpu?.usageCoreNanoSeconds ?? 0) > 0 && (box?.memory?.workingSetBytes ?? 0) > 0, summary.body);
    // The legacy /run: a command's output in the response body.
    const { request } = await import('undici');
    const run = await request(`${vmlet.kubeletUrl}/run/default/${POD}/vm?cmd=echo%20ran%20here`, { method: 'POST', dispatcher: agent });
    assert.equal(run.statusCode, 200);
    assert.equal(await run.body.text(), 'ran here\n');
  } finally {
    await agent.close();
  }
});

test('kubectl logs --previous shows the run before a restart, and the restart count goes up', async () => {
  const before = JSON.parse(await ok(['get', 'pod', POD, '-o', 'json'])) as V1Pod;
  const restarts = before.status?.containerStatuses?.[0]?.restartCount ?? 0;
  const none = await kubectl(['logs', POD, '--previous']);
  assert.notEqual(none.code, 0);
  assert.match(none.stderr, /previous terminated container "vm" in pod "box" not found/);
  // The guest's busybox has no pgrep: the main process is the one whose command line has the server's
  // greeting (the bracket keeps this shell's own command line from matching).
  await ok(['exec', POD, '--', 'sh', '-c', 'kill $(for p in /proc/[0-9]*; do grep -q "hello from 80[8]1" $p/cmdline 2>/dev/null && echo ${p#/proc/}; done)']);
  await waitFor('the restart', async () => {
    const p = JSON.parse(await ok(['get', 'pod', POD, '-o', 'json'])) as V1Pod;
    return (p.status?.containerStatuses?.[0]?.restartCount ?? 0) > restarts ? p : undefined;
  }, { timeoutMs: 60_000, intervalMs: 500 });
  const previous = await ok(['logs', POD, '--previous']);
  assert.match(previous, /stdin: hello main/, 'the previous run had the attach input');
  await waitFor('the new run logs', async () => ((await ok(['logs', POD])).includes('tick 1') ? true : undefined), { timeoutMs: 30_000, intervalMs: 500 });
  assert.ok(!(await ok(['logs', POD])).includes('stdin: hello main'), 'the current log is the new run only');
});
