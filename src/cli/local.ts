// `vmlet ps`, `vmlet logs` and `vmlet exec`: the pods of the vmlet running on this host, through its local
// socket (<image-cache-dir>/vmlet.sock, mode 0600), which serves the kubelet API's own endpoints (/pods,
// /containerLogs, /exec over WebSocket v5.channel.k8s.io) without TLS: the socket's mode is the access
// check. They work with or without an API server; kubectl is the way in a cluster.
import type { V1Pod, V1PodList } from '@kubernetes/client-node';
import type { Command } from 'commander';
import http from 'node:http';
import path from 'node:path';
import type { RawData } from 'ws';
import { defaultCacheDir } from '../config/schema.ts';

/** The local API cannot be reached or refused the request; the message is one line for the user. */
export class LocalApiError extends Error {
  override name = 'LocalApiError';
}

/** The socket: --socket, else $VMLET_SOCKET, else <$VMLET_IMAGE_CACHE_DIR or the default cache dir>/vmlet.sock. */
export function localSocketPath(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return flag ?? (env.VMLET_SOCKET || path.join(env.VMLET_IMAGE_CACHE_DIR || defaultCacheDir(), 'vmlet.sock'));
}

interface CommonFlags {
  socket?: string;
  namespace?: string;
}

export function addLocalCommands(program: Command): void {
  const common = (cmd: Command) =>
    cmd
      .option('--socket <path>', 'local socket of the vmlet to ask [env VMLET_SOCKET] (default <image-cache-dir>/vmlet.sock)')
      .option('-n, --namespace <ns>', 'namespace of the pod (default: default, or the one in NAMESPACE/NAME)');

  common(program.command('ps'))
    .description('List the pods of the vmlet on this host (static pods, and pods from the cluster)')
    .option('-o, --output <format>', 'table (default) or json')
    .action(async (flags: CommonFlags & { output?: string }) => {
      const pods = await listPods(localSocketPath(flags.socket));
      if (flags.output === 'json') return void process.stdout.write(`${JSON.stringify({ kind: 'PodList', apiVersion: 'v1', metadata: {}, items: pods }, null, 2)}\n`);
      if (flags.output && flags.output !== 'table') throw new LocalApiError(`--output must be table or json (got "${flags.output}")`);
      process.stdout.write(podTable(pods, new Date()));
    });

  common(program.command('logs <pod>'))
    .description("Print a pod's container log (the output of its command in the VM)")
    .option('-c, --container <name>', 'container (default: the pod\'s first, the VM)')
    .option('-f, --follow', 'keep streaming new output')
    .option('--tail <lines>', 'only the last lines')
    .option('--timestamps', 'prefix each line with its time')
    .action(async (name: string, flags: CommonFlags & { container?: string; follow?: boolean; tail?: string; timestamps?: boolean }) => {
      const socket = localSocketPath(flags.socket);
      const pod = await findPod(socket, name, flags.namespace);
      const container = flags.container ?? pod.spec!.containers[0]!.name;
      const q = new URLSearchParams();
      if (flags.follow) q.set('follow', 'true');
      if (flags.timestamps) q.set('timestamps', 'true');
      if (flags.tail !== undefined) {
        if (!/^\d+$/.test(flags.tail)) throw new LocalApiError(`--tail must be a whole number (got "${flags.tail}")`);
        q.set('tailLines', flags.tail);
      }
      const res = await request(socket, `/containerLogs/${enc(pod)}/${encodeURIComponent(container)}?${q.toString()}`);
      if (res.statusCode !== 200) throw new LocalApiError(`logs of ${pod.metadata!.namespace}/${pod.metadata!.name}: ${(await body(res)).trim()}`);
      await new Promise<void>((resolve, reject) => {
        res.pipe(process.stdout, { end: false });
        res.once('end', resolve);
        res.once('error', reject);
      });
    });

  common(program.command('exec <pod> [command...]'))
    .description('Run a command in a pod\'s VM: vmlet exec [-i] [-t] POD -- CMD [ARGS...]; exits with the command\'s exit code')
    .option('-c, --container <name>', 'container (default: the pod\'s first, the VM)')
    .option('-i, --stdin', 'pass stdin to the command')
    .option('-t, --tty', 'give the command a terminal')
    .action(async (name: string, argv: string[], flags: CommonFlags & { container?: string; stdin?: boolean; tty?: boolean }) => {
      const command = argv[0] === '--' ? argv.slice(1) : argv;
      if (command.length === 0) throw new LocalApiError('exec needs a command after the pod, e.g. vmlet exec POD -- uname -a');
      const socket = localSocketPath(flags.socket);
      const pod = await findPod(socket, name, flags.namespace);
      const container = flags.container ?? pod.spec!.containers[0]!.name;
      process.exitCode = await exec(socket, pod, container, command, { stdin: Boolean(flags.stdin), tty: Boolean(flags.tty) });
    });
}

/** The pods the vmlet at `socket` knows, with their status. */
export async function listPods(socket: string): Promise<V1Pod[]> {
  const res = await request(socket, '/pods');
  const text = await body(res);
  if (res.statusCode !== 200) throw new LocalApiError(`the vmlet at ${socket} answered ${res.statusCode}: ${text.trim()}`);
  return (JSON.parse(text) as V1PodList).items;
}

/**
 * NAME or NAMESPACE/NAME; a static pod also by the name in its manifest (vmlet names it `<name>-<node>`,
 * as the kubelet does).
 */
async function findPod(socket: string, ref: string, namespace: string | undefined): Promise<V1Pod> {
  const slash = ref.indexOf('/');
  const ns = slash >= 0 ? ref.slice(0, slash) : (namespace ?? 'default');
  const name = slash >= 0 ? ref.slice(slash + 1) : ref;
  const pods = (await listPods(socket)).filter((p) => p.metadata?.namespace === ns);
  const pod = pods.find((p) => p.metadata?.name === name) ?? pods.find((p) => p.metadata?.name === `${name}-${p.spec?.nodeName ?? ''}`);
  if (!pod) {
    const known = pods.map((p) => p.metadata!.name).join(', ');
    throw new LocalApiError(`pod "${ns}/${name}" is not on this node (${known ? `pods in ${ns}: ${known}` : `no pods in namespace ${ns}`})`);
  }
  return pod;
}

/** One HTTP request on the socket; a socket nobody serves is a one-line error. */
function request(socket: string, urlPath: string): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath: socket, path: urlPath, headers: { host: 'localhost' } }, resolve);
    req.once('error', (err: NodeJS.ErrnoException) => reject(unreachable(socket, err)));
  });
}

function unreachable(socket: string, err: NodeJS.ErrnoException): LocalApiError {
  if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
    return new LocalApiError(`no vmlet runs at ${socket} (${err.code}): start one with vmlet run, or pass --socket (or VMLET_SOCKET) with the socket of the one that runs`);
  }
  if (err.code === 'EACCES') return new LocalApiError(`no permission to use ${socket}: it belongs to the user that runs vmlet (mode 0600)`);
  return new LocalApiError(`cannot reach the vmlet at ${socket}: ${err.message}`);
}

function body(res: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.once('error', reject);
  });
}

function enc(pod: V1Pod): string {
  return `${encodeURIComponent(pod.metadata!.namespace!)}/${encodeURIComponent(pod.metadata!.name!)}`;
}

/** The table of `vmlet ps`. */
export function podTable(pods: V1Pod[], now: Date): string {
  const rows = [['NAMESPACE/NAME', 'PHASE', 'READY', 'RESTARTS', 'AGE', 'IP']];
  for (const p of pods) {
    const statuses = p.status?.containerStatuses ?? [];
    const ready = statuses.filter((c) => c.ready).length;
    const restarts = statuses.reduce((n, c) => n + (c.restartCount ?? 0), 0);
    const cs = statuses[0]?.state;
    const why = cs?.waiting?.reason ?? (p.status?.phase !== 'Succeeded' && p.status?.phase !== 'Running' ? cs?.terminated?.reason : undefined) ?? p.status?.reason;
    const phase = `${p.status?.phase ?? 'Unknown'}${why && why !== p.status?.phase ? ` (${why})` : ''}`;
    const since = p.metadata?.annotations?.['kubernetes.io/config.seen'] ?? p.status?.startTime ?? p.metadata?.creationTimestamp;
    rows.push([
      `${p.metadata?.namespace}/${p.metadata?.name}`, phase, `${ready}/${p.spec?.containers.length ?? 0}`, String(restarts),
      since ? age(now.getTime() - new Date(since).getTime()) : '<unknown>', p.status?.podIP ?? '<none>',
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]! + 3))).join('')).join('\n') + '\n';
}

/** kubectl's age: 45s, 5m10s, 3h, 2d. */
function age(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 120) return `${s}s`;
  if (s < 600) return `${Math.floor(s / 60)}m${s % 60}s`;
  if (s < 3 * 3600) return `${Math.floor(s / 60)}m`;
  if (s < 48 * 3600) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

const CHANNEL = { stdin: 0, stdout: 1, stderr: 2, error: 3, resize: 4, close: 255 } as const;

/** Runs `command` over the exec endpoint (WebSocket, v5.channel.k8s.io); resolves with its exit code. */
async function exec(socket: string, pod: V1Pod, container: string, command: string[], o: { stdin: boolean; tty: boolean }): Promise<number> {
  const q = new URLSearchParams();
  for (const arg of command) q.append('command', arg);
  q.set('output', '1');
  if (!o.tty) q.set('error', '1');
  if (o.stdin) q.set('input', '1');
  if (o.tty) q.set('tty', '1');
  const { WebSocket } = await import('ws'); // only `vmlet local exec` needs it
  const ws = new WebSocket(`ws+unix://${socket}:/exec/${enc(pod)}/${encodeURIComponent(container)}?${q.toString()}`, ['v5.channel.k8s.io']);
  const send = (channel: number, data: Buffer | string) => {
    const payload = typeof data === 'string' ? Buffer.from(data) : data;
    if (ws.readyState === WebSocket.OPEN) ws.send(Buffer.concat([Buffer.from([channel]), payload]));
  };
  const stdin = process.stdin;
  const rawMode = o.tty && o.stdin && stdin.isTTY;
  const size = () => JSON.stringify({ Width: process.stdout.columns || 80, Height: process.stdout.rows || 24 });
  const onResize = () => send(CHANNEL.resize, size());
  const onInput = (d: Buffer) => send(CHANNEL.stdin, d);
  const onEnd = () => {
    if (ws.readyState === WebSocket.OPEN) ws.send(Buffer.from([CHANNEL.close, CHANNEL.stdin]));
  };
  let status = '';
  try {
    return await new Promise<number>((resolve, reject) => {
      ws.once('unexpected-response', (_req, res) => {
        void body(res).then((text) => {
          let message = text.trim();
          try {
            message = (JSON.parse(text) as { message?: string }).message ?? message;
          } catch {
            // plain text
          }
          reject(new LocalApiError(`exec in ${pod.metadata!.namespace}/${pod.metadata!.name}: ${message || `HTTP ${res.statusCode}`}`));
        });
      });
      ws.once('error', (err: NodeJS.ErrnoException) => reject(err.code ? unreachable(socket, err) : new LocalApiError(`exec: ${err.message}`)));
      ws.once('open', () => {
        if (o.tty) {
          onResize();
          process.stdout.on('resize', onResize);
        }
        if (o.stdin) {
          if (rawMode) stdin.setRawMode(true);
          stdin.on('data', onInput);
          stdin.once('end', onEnd);
          stdin.resume();
        }
      });
      ws.on('message', (data: RawData) => {
        const msg = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
        if (msg.length === 0) return;
        const payload = msg.subarray(1);
        if (msg[0] === CHANNEL.stdout) process.stdout.write(payload);
        else if (msg[0] === CHANNEL.stderr) process.stderr.write(payload);
        else if (msg[0] === CHANNEL.error) status += payload.toString('utf8');
      });
      ws.once('close', () => resolve(exitCodeOf(status)));
    });
  } finally {
    if (o.stdin) {
      stdin.off('data', onInput);
      stdin.off('end', onEnd);
      stdin.pause();
      if (rawMode) stdin.setRawMode(false);
    }
    process.stdout.off('resize', onResize);
  }
}

/** The exit code in the session's final Status (as kubectl reads it); a failure that is not one is printed. */
function exitCodeOf(status: string): number {
  if (!status.trim()) return 0;
  let s: { status?: string; message?: string; reason?: string; details?: { causes?: Array<{ reason?: string; message?: string }> } };
  try {
    s = JSON.parse(status) as typeof s;
  } catch {
    process.stderr.write(`vmlet: ${status.trim()}\n`);
    return 1;
  }
  if (s.status === 'Success') return 0;
  const code = s.reason === 'NonZeroExitCode' ? Number(s.details?.causes?.find((c) => c.reason === 'ExitCode')?.message) : NaN;
  if (Number.isInteger(code)) return code;
  process.stderr.write(`vmlet: ${s.message ?? status.trim()}\n`);
  return 1;
}
