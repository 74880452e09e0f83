// The sidecar engine layer (src/sidecars/) against a real engine: podman's Docker-compatible API
// started by the harness, with a busybox image built here and pushed to real test registries (one
// plain, one with htpasswd basic auth). Pull with and without auth, create/start with env, workingDir,
// limits, a bind mount, labels and a user; logs (tail, timestamps, follow, one stream); exec with stdin
// and exit code, with a tty and its size; attach; stop within a grace period; list by pod UID; and the
// reason given when no engine is there.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import type { V1Container } from '@kubernetes/client-node';
import type { StreamedProcess } from '../../src/kubelet/provider.ts';
import {
  LABELS,
  SidecarEngine,
  SidecarEngineError,
  SidecarEngineUnavailable,
  type PodIdentity,
  type SidecarSpec,
} from '../../src/sidecars/index.ts';
import { startPodman, type Podman } from '../harness/podman.ts';
import { startRegistry, type Registry } from '../harness/registry.ts';
import { ensureTestDependencies } from '../harness/setup.ts';

const USER = { username: 'vmlet', password: 'sidecar-pass' };

let plain: Registry | undefined;
let secured: Registry | undefined;
let podman: Podman | undefined;
let engine: SidecarEngine;
let image: string;
let securedImage: string;
let hostDir: string;

before(async () => {
  const binaries = await ensureTestDependencies();
  const [a, b] = await Promise.allSettled([startRegistry({ binaries }), startRegistry({ binaries, auth: USER })]);
  if (a.status === 'fulfilled') plain = a.value;
  if (b.status === 'fulfilled') secured = b.value;
  if (!plain || !secured) throw a.status === 'rejected' ? a.reason : (b as PromiseRejectedResult).reason;
  podman = await startPodman({ binaries, insecureRegistries: [plain.host, secured.host] });
  image = await podman.buildBusyboxImage(plain);
  securedImage = await podman.buildBusyboxImage(secured);
  engine = await SidecarEngine.connect({ socket: podman.dockerHost });
  hostDir = await mkdtemp(path.join(os.tmpdir(), 'vmlet-sidecar-share-'));
  await chmod(hostDir, 0o777);
}, { timeout: 180_000 });

after(async () => {
  await podman?.stop();
  await Promise.all([plain?.stop(), secured?.stop()]);
  if (hostDir) await rm(hostDir, { recursive: true, force: true });
});

function pod(name = 'web'): PodIdentity {
  return { namespace: 'default', name, uid: randomUUID() };
}

function ctr(name: string, command: string[], extra: Partial<V1Container> = {}): V1Container {
  return { name, image, command, ...extra };
}

/** Creates and starts a sidecar; the image is pulled once. */
async function run(spec: Omit<SidecarSpec, 'pod'> & { pod?: PodIdentity }): Promise<string> {
  if (!(await engine.hasImage(image))) await engine.pull(image);
  const created = await engine.create({ pod: spec.pod ?? pod(), ...spec });
  await engine.start(created.id);
  return created.id;
}

async function readAll(stream: Readable | null): Promise<string> {
  if (!stream) return '';
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.from(c as Buffer));
  return Buffer.concat(chunks).toString('utf8');
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('the engine answers: ping and version name podman', async () => {
  await engine.ping();
  const v = await engine.version();
  assert.match(v.name, /podman/i);
  assert.match(v.version, /^\d+\.\d+/);
  assert.equal(v.os, 'linux');
});

test('an engine that is not there: SidecarEngineUnavailable names the socket', async () => {
  const missing = path.join(os.tmpdir(), `vmlet-no-engine-${process.pid}.sock`);
  await assert.rejects(SidecarEngine.connect({ socket: missing }), (err: unknown) => {
    assert.ok(err instanceof SidecarEngineUnavailable, String(err));
    assert.equal(err.endpoint, `unix://${missing}`);
    assert.match(err.message, new RegExp(`no container engine for sidecars at unix://${missing}: no socket there`));
    return true;
  });
  // DOCKER_HOST is what is used when nothing is configured.
  await assert.rejects(SidecarEngine.connect({ env: { DOCKER_HOST: `unix://${missing}` } }), (err: unknown) => {
    assert.ok(err instanceof SidecarEngineUnavailable);
    assert.match(err.message, /no socket there/);
    return true;
  });
  // A port where nothing listens.
  await assert.rejects(SidecarEngine.connect({ socket: 'tcp://127.0.0.1:1' }), /tcp:\/\/127\.0\.0\.1:1: connection refused/);
});

test('pull from the test registry, with progress', async () => {
  const progress: string[] = [];
  await engine.pull(image, { onProgress: (p) => progress.push(p.status) });
  assert.ok(await engine.hasImage(image));
  assert.ok(progress.length > 0, 'some progress was reported');
  await assert.rejects(engine.pull(`${plain!.host}/vmlet-test/missing:1`), (err: unknown) => {
    assert.ok(err instanceof SidecarEngineError);
    assert.equal(err.reason, 'ErrImagePull');
    assert.match(err.message, /missing/);
    return true;
  });
});

test('pull with auth: refused without credentials, done with a dockerconfigjson pull secret', async () => {
  await assert.rejects(engine.pull(securedImage), (err: unknown) => {
    assert.ok(err instanceof SidecarEngineError);
    assert.equal(err.reason, 'ErrImagePull');
    assert.match(err.message, /unauthorized|authentication required|401/i);
    return true;
  });
  const auth = Buffer.from(`${USER.username}:${USER.password}`).toString('base64');
  const dockerconfigjson = JSON.stringify({ auths: { [secured!.host]: { auth } } });
  await engine.pull(securedImage, {
    pullSecrets: [{ metadata: { name: 'regcred', namespace: 'default' }, type: 'kubernetes.io/dockerconfigjson', data: { '.dockerconfigjson': Buffer.from(dockerconfigjson).toString('base64') } }],
  });
  assert.ok(await engine.hasImage(securedImage));
});

test('create and start: env, workingDir, limits, a bind mount, labels, user, hostname, security context', async () => {
  if (!(await engine.hasImage(image))) await engine.pull(image);
  const p = pod('shell');
  const script = [
    'exec > /share/out 2>&1',
    'echo "env=$GREETING"',
    'echo "pwd=$(pwd)"',
    'echo "id=$(id -u):$(id -g)"',
    'echo "host=$(hostname)"',
    'echo "mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"',
    'echo "cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max)"',
    'echo "capbnd=$(grep CapBnd /proc/self/status | cut -f2)"',
    'touch /rootfs-write 2>/dev/null && echo rootfs=rw || echo rootfs=ro',
    'cat /ro/out >/dev/null && echo ro-share=readable',
  ].join('; ');
  const created = await engine.create({
    pod: p,
    container: ctr('shell', ['sh', '-c', script], {
      workingDir: '/work',
      resources: { limits: { cpu: '500m', memory: '64Mi' } },
      securityContext: { runAsUser: 1000, runAsGroup: 2000, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
    }),
    env: [{ name: 'GREETING', value: 'hello sidecar' }],
    mounts: [
      { hostPath: hostDir, containerPath: '/share' },
      { hostPath: hostDir, containerPath: '/ro', readOnly: true },
    ],
    labels: { 'example.com/extra': 'yes' },
  });
  assert.deepEqual(created.ignored, []);
  assert.equal(created.name, `vmlet_shell_shell_default_${p.uid}_0`);
  await engine.start(created.id);
  assert.deepEqual(await engine.wait(created.id), { exitCode: 0 });
  const out = await readFile(path.join(hostDir, 'out'), 'utf8');
  assert.match(out, /^env=hello sidecar$/m);
  assert.match(out, /^pwd=\/work$/m);
  assert.match(out, /^id=1000:2000$/m);
  assert.match(out, /^host=shell$/m);
  assert.match(out, /^mem=67108864$/m);
  assert.match(out, /^cpu=(50000|50000 100000)$/m);
  assert.match(out, /^capbnd=0000000000000000$/m);
  assert.match(out, /^rootfs=ro$/m);
  assert.match(out, /^ro-share=readable$/m);

  const s = await engine.inspect(created.id);
  assert.equal(s.running, false);
  assert.equal(s.exitCode, 0);
  assert.equal(s.state.kind, 'terminated');
  assert.equal(s.state.kind === 'terminated' && s.state.reason, 'Completed');
  assert.deepEqual(s.pod, p);
  assert.equal(s.containerName, 'shell');
  assert.equal(s.restartCount, 0);
  assert.equal(s.containerID, `docker://${s.id}`);
  assert.ok(s.startedAt && s.finishedAt && s.finishedAt >= s.startedAt, `started and finished times: ${JSON.stringify(s)}`);
  await engine.remove(created.id);
  await engine.remove(created.id); // already gone: fine
});

test('a failing command: terminated with its exit code and reason Error; runAsNonRoot on a root image is refused', async () => {
  const id = await run({ container: ctr('fail', ['sh', '-c', 'exit 42']) });
  assert.deepEqual(await engine.wait(id), { exitCode: 42 });
  const s = await engine.inspect(id);
  assert.equal(s.state.kind === 'terminated' && `${s.state.exitCode} ${s.state.reason}`, '42 Error');
  await engine.remove(id);
  await assert.rejects(
    engine.create({ pod: pod(), container: ctr('nonroot', ['true'], { securityContext: { runAsNonRoot: true } }) }),
    /runs as root and runAsNonRoot is true/,
  );
});

test('logs: all, tail, timestamps, one stream, follow', async () => {
  const id = await run({
    container: ctr('talker', ['sh', '-c', 'for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; while true; do sleep 0.2; [ -f /tmp/go ] && echo late && rm /tmp/go; done']),
  });
  const all = await until('five lines and the error', async () => {
    const text = await readAll(await engine.logs(id));
    return text.includes('oops') ? text : undefined;
  });
  assert.equal(all, 'line 1\nline 2\nline 3\nline 4\nline 5\noops\n');
  assert.equal(await readAll(await engine.logs(id, { tailLines: 2 })), 'line 5\noops\n');
  assert.equal(await readAll(await engine.logs(id, { stream: 'Stderr' })), 'oops\n');
  assert.equal(await readAll(await engine.logs(id, { stream: 'Stdout' })), 'line 1\nline 2\nline 3\nline 4\nline 5\n');
  assert.equal(await readAll(await engine.logs(id, { limitBytes: 10 })), 'line 1\nlin');
  const stamped = await readAll(await engine.logs(id, { timestamps: true, tailLines: 1 }));
  assert.match(stamped, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) oops\n$/);
  const future = await readAll(await engine.logs(id, { sinceTime: new Date(Date.now() + 60_000) }));
  assert.equal(future, '');

  const follow = await engine.logs(id, { follow: true, tailLines: 1 });
  let seen = '';
  follow.on('data', (c: Buffer) => (seen += c.toString()));
  const proc = await engine.exec(id, ['touch', '/tmp/go'], { stdin: false, stdout: true, stderr: true, tty: false });
  assert.equal((await proc.exited).exitCode, 0);
  await until('the followed log to get "late"', async () => (seen.includes('late') ? true : undefined));
  assert.equal(seen, 'oops\nlate\n');
  follow.destroy();
  await engine.remove(id, { force: true });
});

test('exec: stdin in, output out, the exit code; with a tty, its size', async () => {
  const id = await run({ container: ctr('idle', ['sh', '-c', 'trap "exit 0" TERM; while true; do sleep 0.2; done'], { workingDir: '/tmp' }) });
  const proc: StreamedProcess = await engine.exec(id, ['sh', '-c', 'cat; echo to-stderr >&2; pwd; echo "$EXTRA"; exit 3'], {
    stdin: true, stdout: true, stderr: true, tty: false, env: { EXTRA: 'extra-env' },
  });
  proc.stdin!.end('hello from stdin\n');
  const [out, err, exit] = await Promise.all([readAll(proc.stdout), readAll(proc.stderr), proc.exited]);
  assert.equal(out, 'hello from stdin\n/tmp\nextra-env\n');
  assert.equal(err, 'to-stderr\n');
  assert.deepEqual(exit, { exitCode: 3, signal: null });

  const tty = await engine.exec(id, ['sh', '-c', 'sleep 0.5; stty size'], { stdin: false, stdout: true, stderr: true, tty: true, size: { rows: 30, cols: 100 } });
  assert.equal(tty.stderr, null);
  const [ttyOut, ttyExit] = await Promise.all([readAll(tty.stdout), tty.exited]);
  assert.equal(ttyOut.trim(), '30 100');
  assert.equal(ttyExit.exitCode, 0);
  await engine.remove(id, { force: true });
});

test('attach: to the main process\'s stdin and stdout, its exit code; detach leaves it running', async () => {
  const id = await run({
    container: ctr('reader', ['sh', '-c', 'while read l; do echo "got:$l"; [ "$l" = bye ] && exit 5; done'], { stdin: true }),
  });
  const proc: StreamedProcess = await engine.attach(id, { stdin: true, stdout: true, stderr: true, tty: false });
  let out = '';
  proc.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  proc.stdin!.write('one\n');
  await until('the echo of "one"', async () => (out.includes('got:one') ? true : undefined));
  proc.stdin!.write('bye\n');
  assert.deepEqual(await proc.exited, { exitCode: 5, signal: null });
  assert.equal(out, 'got:one\ngot:bye\n');
  await engine.remove(id);

  // Detaching (the client went away) is not the end of the container. (podman 4.3 closes the main
  // process's stdin when an attached client with stdin leaves, so this one has no stdin.)
  const talker = await run({ container: ctr('ticker', ['sh', '-c', 'while true; do echo tick; sleep 0.2; done']) });
  const watcher = await engine.attach(talker, { stdin: false, stdout: true, stderr: false, tty: false });
  assert.equal(watcher.stdin, null);
  assert.equal(watcher.stderr, null);
  let ticks = '';
  watcher.stdout!.on('data', (c: Buffer) => (ticks += c.toString()));
  await until('a tick', async () => (ticks.includes('tick') ? true : undefined));
  watcher.close();
  assert.deepEqual(await watcher.exited, { exitCode: 0, signal: null });
  assert.equal((await engine.inspect(talker)).running, true, 'detaching does not stop the container');
  await engine.remove(talker, { force: true });

  const noStdin = await run({ container: ctr('nostdin', ['sleep', '30']) });
  await assert.rejects(engine.attach(noStdin, { stdin: true, stdout: true, stderr: true, tty: false }), /not started with stdin: true/);
  await engine.remove(noStdin, { force: true });
});

test('stop: SIGTERM within the grace period, SIGKILL after it', async () => {
  const graceful = await run({ container: ctr('graceful', ['sh', '-c', 'trap "echo got TERM; exit 7" TERM; echo ready; while true; do sleep 0.1; done']) });
  await until('ready', async () => ((await readAll(await engine.logs(graceful))).includes('ready') ? true : undefined));
  let t = Date.now();
  await engine.stop(graceful, 10);
  assert.ok(Date.now() - t < 5000, `a process that handles SIGTERM stops at once (took ${Date.now() - t} ms)`);
  const s = await engine.inspect(graceful);
  assert.equal(s.exitCode, 7);
  assert.match(await readAll(await engine.logs(graceful)), /got TERM/);
  await engine.stop(graceful, 10); // already stopped: fine

  const stubborn = await run({ container: ctr('stubborn', ['sh', '-c', 'trap "" TERM; echo ready; while true; do sleep 0.1; done']) });
  await until('ready', async () => ((await readAll(await engine.logs(stubborn))).includes('ready') ? true : undefined));
  t = Date.now();
  await engine.stop(stubborn, 2);
  const took = Date.now() - t;
  assert.ok(took >= 1500 && took < 10_000, `killed after the 2 s grace period (took ${took} ms)`);
  assert.equal((await engine.inspect(stubborn)).exitCode, 137);
  await Promise.all([engine.remove(graceful), engine.remove(stubborn)]);
});

test('list by pod UID: a pod\'s containers, with their names and restart counts, running or not', async () => {
  const a = pod('pod-a');
  const b = pod('pod-b');
  const a0 = await run({ pod: a, container: ctr('side', ['true']) });
  const a1 = await run({ pod: a, container: ctr('side', ['sleep', '30']), restartCount: 1 });
  const b0 = await run({ pod: b, container: ctr('other', ['sleep', '30']) });
  await engine.wait(a0);
  const listed = (await engine.list(a.uid)).sort((x, y) => x.restartCount - y.restartCount);
  assert.deepEqual(
    listed.map((c) => [c.id, c.containerName, c.restartCount, c.engineState, c.pod.name]),
    [[a0, 'side', 0, 'exited', 'pod-a'], [a1, 'side', 1, 'running', 'pod-a']],
  );
  const everything = await engine.list();
  assert.ok([a0, a1, b0].every((id) => everything.some((c) => c.id === id)), 'list() without a UID has every vmlet container');
  const s = await engine.inspect(a1);
  assert.equal(s.restartCount, 1);
  assert.equal(s.state.kind, 'running');
  // Labels a restarted vmlet adopts by.
  const raw = await podman!.cli(['inspect', '--format', `{{index .Config.Labels "${LABELS.podUid}"}}`, a1]);
  assert.equal(raw.stdout.trim(), a.uid);
  // A second container of the same name and run is a Conflict, not a silent duplicate.
  await assert.rejects(engine.create({ pod: a, container: ctr('side', ['true']), restartCount: 1 }), (err: unknown) => {
    assert.ok(err instanceof SidecarEngineError);
    assert.equal(err.reason, 'Conflict');
    return true;
  });
  await Promise.all([a0, a1, b0].map((id) => engine.remove(id, { force: true })));
  assert.deepEqual(await engine.list(a.uid), []);
});
