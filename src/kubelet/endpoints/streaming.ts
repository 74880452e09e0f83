// /exec, /attach, /portForward and /run: the kubelet's streaming endpoints, which the API server proxies
// `kubectl exec/attach/port-forward` to. SPDY/3.1 upgrades (what the API server sends) and WebSocket
// upgrades (direct clients; API servers with ExtendWebSocketsToKubelet) end in the same session code.
import type { V1Pod } from '@kubernetes/client-node';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from '../../observability/log.ts';
import type { KubeletServer } from '../server.ts';
import { serveContainerLogs } from './logs.ts';
import { KubeletError, type KubeletProvider } from '../provider.ts';
import { runRemoteCommand } from '../streaming/session.ts';
import type { WantedStreams } from '../streaming/spdy-remote-command.ts';
import { isSpdyUpgrade, isWebSocketUpgrade } from '../streaming/upgrade.ts';

// The transports (the SPDY codec with pako, and ws) load with the first streaming session: an idle node
// does not carry them (the idle memory budget, BENCHMARKS.md).
let transports: Promise<{
  spdy: typeof import('../streaming/spdy-remote-command.ts');
  ws: typeof import('../streaming/websocket-remote-command.ts');
  portForward: typeof import('../streaming/spdy-port-forward.ts');
}> | undefined;
const loadTransports = () =>
  (transports ??= Promise.all([
    import('../streaming/spdy-remote-command.ts'), import('../streaming/websocket-remote-command.ts'), import('../streaming/spdy-port-forward.ts'),
  ]).then(([spdy, ws, portForward]) => ({ spdy, ws, portForward })));

export interface StreamingContext {
  req: IncomingMessage;
  url: URL;
  /** namespace, pod, container, and uid when the path has one. */
  params: Record<string, string | undefined>;
  provider: KubeletProvider;
  log: Logger;
  /** The kubelet's streaming timeouts. */
  streamCreationTimeoutMs?: number;
  idleTimeoutMs?: number;
}

/** The streams asked for in the query, as the kubelet's NewOptions reads them ("1" means yes). */
export function wantedStreams(url: URL): WantedStreams {
  const on = (k: string) => url.searchParams.get(k) === '1' || url.searchParams.get(k) === 'true';
  const tty = on('tty');
  const w = { stdin: on('input'), stdout: on('output'), stderr: on('error') && !tty, tty };
  if (!w.stdin && !w.stdout && !w.stderr) throw new KubeletError(400, 'BadRequest', 'you must specify at least 1 of stdin, stdout, stderr');
  return w;
}

/** The pod named by the path; 404 when this node does not know it, or its UID differs from the path's. */
export function podOf(ctx: StreamingContext): V1Pod {
  const { namespace = '', pod: name = '', uid } = ctx.params;
  const pod = ctx.provider.getPod(namespace, name);
  if (!pod || (uid && pod.metadata?.uid !== uid)) throw new KubeletError(404, 'NotFound', `pod "${namespace}/${name}" does not exist on this node`);
  return pod;
}

/** exec and attach: checks, upgrade, session. A KubeletError thrown before the upgrade is the server's to answer. */
export async function serveRemoteCommand(ctx: StreamingContext, socket: Duplex, head: Buffer, kind: 'exec' | 'attach'): Promise<void> {
  const command = ctx.url.searchParams.getAll('command');
  const container = ctx.params.container ?? '';
  // A KubeletError thrown before the upgrade is answered by the server (a Status, as the kubelet's).
  const wanted = wantedStreams(ctx.url);
  const pod = podOf(ctx);
  if (kind === 'exec' && command.length === 0) throw new KubeletError(400, 'BadRequest', 'you must specify at least one command for the container');
  const spdy = isSpdyUpgrade(ctx.req);
  if (!spdy && !isWebSocketUpgrade(ctx.req)) throw new KubeletError(400, 'BadRequest', 'Upgrade request required (SPDY/3.1 or websocket)');
  const opts = { ...(ctx.streamCreationTimeoutMs ? { streamCreationTimeoutMs: ctx.streamCreationTimeoutMs } : {}), ...(ctx.idleTimeoutMs ? { idleTimeoutMs: ctx.idleTimeoutMs } : {}) };
  let streams;
  try {
    const t = await loadTransports();
    streams = spdy ? await t.spdy.acceptSpdyRemoteCommand(ctx.req, socket, head, wanted, opts) : await t.ws.acceptWebSocketRemoteCommand(ctx.req, socket, head, wanted);
  } catch (err) {
    ctx.log.info({ pod: `${pod.metadata!.namespace}/${pod.metadata!.name}`, kind, err: (err as Error).message }, 'streaming session not set up');
    return;
  }
  const started = Date.now();
  const result = await runRemoteCommand(streams, (size) => {
    const o = { ...wanted, ...(size ? { size } : {}) };
    return kind === 'exec' ? ctx.provider.exec(pod, container, command, o) : ctx.provider.attach(pod, container, o);
  }, kind === 'exec' ? { command } : {});
  ctx.log.info({
    pod: `${pod.metadata!.namespace}/${pod.metadata!.name}`, container, kind, transport: spdy ? 'spdy' : 'websocket', protocol: streams.protocol, tty: wanted.tty,
    ...(kind === 'exec' ? { command: command[0] } : {}), ...result, ms: Date.now() - started,
  }, `${kind} session ended`);
}

export async function servePortForward(ctx: StreamingContext, socket: Duplex, head: Buffer): Promise<void> {
  const pod = podOf(ctx);
  if (!isSpdyUpgrade(ctx.req) && !isWebSocketUpgrade(ctx.req)) throw new KubeletError(400, 'BadRequest', 'port-forward needs a SPDY/3.1 or WebSocket upgrade');
  const name = `${pod.metadata!.namespace}/${pod.metadata!.name}`;
  const transport = isSpdyUpgrade(ctx.req) ? 'spdy' : 'websocket';
  const { portForward } = await loadTransports();
  const serve = transport === 'spdy' ? portForward.serveSpdyPortForward : portForward.serveWebSocketPortForward;
  const started = Date.now();
  await serve(ctx.req, socket, head, {
    dial: (port) => ctx.provider.portForward(pod, port),
    podName: pod.metadata!.name!, podUid: pod.metadata!.uid ?? '',
    ...(ctx.streamCreationTimeoutMs ? { streamCreationTimeoutMs: ctx.streamCreationTimeoutMs } : {}),
    ...(ctx.idleTimeoutMs ? { idleTimeoutMs: ctx.idleTimeoutMs } : {}),
    log: (msg, fields) => ctx.log.info({ pod: name, transport, ...fields }, msg),
  });
  ctx.log.info({ pod: name, kind: 'port-forward', transport, ms: Date.now() - started }, 'port-forward session ended');
}

/** POST /run/{ns}/{pod}/{container}?cmd=...: runs a command and answers with its output (stdout, then stderr). */
export async function serveRun(ctx: StreamingContext, res: ServerResponse): Promise<void> {
  const pod = podOf(ctx);
  const command = (ctx.url.searchParams.get('cmd') ?? '').split(' ').filter(Boolean);
  if (command.length === 0) throw new KubeletError(400, 'BadRequest', 'cmd is required');
  const p = await ctx.provider.exec(pod, ctx.params.container ?? '', command, { stdin: false, stdout: true, stderr: true, tty: false });
  const chunks: Buffer[] = [];
  const errChunks: Buffer[] = [];
  p.stdout?.on('data', (d: Buffer) => chunks.push(d));
  p.stderr?.on('data', (d: Buffer) => errChunks.push(d));
  await p.exited;
  const body = Buffer.concat([...chunks, ...errChunks]);
  res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': body.length });
  res.end(body);
}

/** Registers /exec, /attach, /portForward, /run and /containerLogs (the paths the API server proxies to). */
export function installStreaming(server: KubeletServer, timeouts: { streamCreationTimeoutMs?: number; idleTimeoutMs?: number } = {}): void {
  const upgradeOnly = () => {
    throw new KubeletError(400, 'BadRequest', 'Upgrade request required: use SPDY/3.1 or a WebSocket');
  };
  for (const kind of ['exec', 'attach'] as const) {
    for (const path of [`/${kind}/:namespace/:pod/:container`, `/${kind}/:namespace/:pod/:uid/:container`]) {
      server.route({ method: ['GET', 'POST'], path, handle: upgradeOnly, upgrade: (ctx, socket, head) => serveRemoteCommand({ ...ctx, ...timeouts }, socket, head, kind) });
    }
  }
  for (const path of ['/portForward/:namespace/:pod', '/portForward/:namespace/:pod/:uid']) {
    server.route({ method: ['GET', 'POST'], path, handle: upgradeOnly, upgrade: (ctx, socket, head) => servePortForward({ ...ctx, ...timeouts }, socket, head) });
  }
  for (const path of ['/run/:namespace/:pod/:container', '/run/:namespace/:pod/:uid/:container']) {
    server.route({ method: 'POST', path, handle: (ctx, res) => serveRun(ctx, res) });
  }
  server.route({ method: 'GET', path: '/containerLogs/:namespace/:pod/:container', handle: (ctx, res) => serveContainerLogs(ctx, res) });
}

