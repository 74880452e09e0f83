// One probe or lifecycle handler run against a container, as the kubelet runs them (pkg/kubelet/prober
// prober.go, pkg/probe/{exec,http,tcp,grpc}, pkg/kubelet/lifecycle/handlers.go): the same requests, the
// same success rules and the same failure words, so messages users search for read as they do on any node.
// The container is reached through a ProbeTarget (the VM's agent); `host` in httpGet/tcpSocket is reached
// from this host with a plain socket, as the kubelet dials it from the node.
import type { V1Container, V1HTTPGetAction, V1LifecycleHandler, V1Probe } from '@kubernetes/client-node';
import http, { type IncomingMessage } from 'node:http';
import http2 from 'node:http2';
import net, { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { goDuration } from '../../kube/go-duration.ts';
import { KUBERNETES_VERSION } from '../../version.ts';
import { expand } from '../pod/env.ts';

/** The container as a probe reaches it. */
export interface ProbeTarget {
  /**
   * Runs argv in the container with the container's environment and resolves with its exit code and output.
   * Should stop the process after timeoutMs; the handler stops waiting at that deadline in any case.
   */
  exec(argv: string[], timeoutMs: number): Promise<{ exitCode: number; stdout: string; stderr: string }>;
  /** A TCP connection to `port` on the pod's own network (inside the VM); rejects when it is refused. */
  connect(port: number, timeoutMs: number): Promise<Duplex>;
  /** The pod's IP: the host the requests name (URL, default Host header, gRPC authority). Default 127.0.0.1. */
  podIP?: string;
}

/**
 * What a target throws when the container cannot be reached at all (no VM, agent not connected): not the
 * container's failure, so the probe's result is `unknown` (not counted), as the kubelet throws away a
 * probe that errored.
 */
export class ProbeTargetUnavailable extends Error {
  override readonly name = 'ProbeTargetUnavailable';
}

/** What of the container a handler uses: named ports, and `env` for `$(VAR)` in exec probe commands. */
export type ProbeContainer = Pick<V1Container, 'name' | 'ports' | 'env'>;

export type ProbeResult = 'success' | 'failure' | 'unknown';

export interface ProbeOutcome {
  result: ProbeResult;
  /** Failure: the kubelet's words for it; success: the command output, response body or gRPC note. */
  message: string;
  /** A success with a warning (an HTTP redirect to another host, not followed): "Probe terminated redirects, ...". */
  warning?: boolean;
}

export interface HandlerOutcome {
  ok: boolean;
  /** When not ok: the kubelet's message ("Exec lifecycle hook ([cmd]) for Container ..."); else "". */
  message: string;
  /** The deadline (timeoutMs) passed before the handler finished. */
  timedOut?: boolean;
  /** Events the kubelet records along the way (LifecycleHTTPFallback), for the caller to post. */
  events?: { type: 'Warning'; reason: string; message: string }[];
}

/** The pod a lifecycle hook's message names, in the kubelet's format.Pod form: name_namespace(uid). */
export interface HookPod {
  name?: string;
  namespace?: string;
  uid?: string;
}

export interface HandlerOptions {
  pod?: HookPod;
  /** Ends the handler early (the container is being killed): a failure like a timeout. */
  signal?: AbortSignal;
}

/** The User-Agent of the kubelet's probes ("probe") and HTTP lifecycle hooks ("lifecycle"). */
export function kubeUserAgent(fragment: 'probe' | 'lifecycle'): string {
  const [major, minor] = KUBERNETES_VERSION.split('.');
  return `kube-${fragment}/${major}.${minor}`;
}

/** What the kubelet posts and shows for failed lifecycle hooks (it keeps the details out of events: they may hold secrets). */
/** How long a postStart hook may take before the container is killed for it. */
export const POST_START_TIMEOUT_MS = 120_000;

export const HOOK_FAILURE = {
  postStart: { reason: 'FailedPostStartHook', message: 'PostStartHook failed', waitingReason: 'PostStartHookError' },
  preStop: { reason: 'FailedPreStopHook', message: 'PreStop hook failed' },
} as const;

/** format.Pod: `name_namespace(uid)`. */
export function podDescription(pod: HookPod): string {
  return `${pod.name ?? ''}_${pod.namespace ?? ''}(${pod.uid ?? ''})`;
}

/**
 * The kubelet's message for a failed lifecycle handler (handlers.go Run), e.g.
 * `Exec lifecycle hook ([sh -c exit 1]) for Container "c" in Pod "p_ns(uid)" failed - error: ..., message: "..."`.
 * `output` is used by exec handlers only.
 */
export function hookFailureMessage(handler: V1LifecycleHandler, container: string, pod: string, error: string, output = ''): string {
  const where = `for Container ${goQuote(container)} in Pod ${goQuote(pod)} failed - error: ${error}`;
  if (handler.exec) return `Exec lifecycle hook ([${(handler.exec.command ?? []).join(' ')}]) ${where}, message: ${goQuote(output)}`;
  if (handler.httpGet) return `HTTP lifecycle hook (${handler.httpGet.path ?? ''}) ${where}`;
  if (handler.sleep) return `Sleep lifecycle hook (${handler.sleep.seconds}) ${where}`;
  return `Cannot run handler: ${error}`;
}

/** The probe's timeoutSeconds in ms (default 1 s, at least 1 s as validation requires). */
export function probeTimeoutMs(probe: V1Probe): number {
  return Math.max(1, probe.timeoutSeconds ?? 1) * 1000;
}

const MAX_OUTPUT = 10 * 1024;
const EXIT_TIMEOUT = Symbol('timeout');

/** Runs one probe once; never rejects. */
export async function runProbe(probe: V1Probe, target: ProbeTarget, container: ProbeContainer): Promise<ProbeOutcome> {
  const timeoutMs = probeTimeoutMs(probe);
  try {
    if (probe.exec) return await execProbe(probe.exec.command ?? [], target, container, timeoutMs);
    if (probe.httpGet) return await httpProbe(probe.httpGet, target, container, timeoutMs);
    if (probe.tcpSocket) return await tcpProbe(probe.tcpSocket.port, probe.tcpSocket.host, target, container, timeoutMs);
    if (probe.grpc) return await grpcProbe(probe.grpc.port, probe.grpc.service ?? '', target, timeoutMs);
    return { result: 'unknown', message: 'missing probe handler' };
  } catch (err) {
    return { result: 'unknown', message: errorMessage(err) };
  }
}

/**
 * Runs a postStart or preStop handler to its end or `timeoutMs`; never rejects. The caller posts
 * HOOK_FAILURE's event on failure (not for a preStop that only ran out of time: the kubelet just stops
 * waiting), and for postStart kills the container with `message` as its waiting message.
 */
export async function runHandler(
  handler: V1LifecycleHandler, target: ProbeTarget, container: ProbeContainer, timeoutMs: number, opts: HandlerOptions = {},
): Promise<HandlerOutcome> {
  const pod = podDescription(opts.pod ?? {});
  const deadline = new Deadline(timeoutMs, opts.signal);
  const fail = (error: string, output?: string): HandlerOutcome => ({
    ok: false, message: hookFailureMessage(handler, container.name, pod, error, output), ...(deadline.expired ? { timedOut: true } : {}),
  });
  try {
    if (handler.exec) {
      const argv = handler.exec.command ?? [];
      const r = await deadline.race(target.exec(argv, timeoutMs));
      if (r === EXIT_TIMEOUT) return fail(`command ${goQuote(argv.join(' '))} timed out`);
      if (r.exitCode !== 0) return fail(`command '${argv.join(' ')}' exited with ${r.exitCode}: ${r.stderr}`, r.stdout + r.stderr);
      return { ok: true, message: '' };
    }
    if (handler.httpGet) {
      const events: NonNullable<HandlerOutcome['events']> = [];
      const action = handler.httpGet;
      let res: HttpResult;
      try {
        res = await httpGet(action, target, container, deadline, kubeUserAgent('lifecycle'), 0);
      } catch (err) {
        if (!(err instanceof HttpsGotHttp)) throw err;
        // handlers.go: an HTTPS hook answered in plain HTTP is retried over HTTP (without Authorization).
        const retry = { ...action, scheme: 'HTTP', httpHeaders: (action.httpHeaders ?? []).filter((h) => canonicalKey(h.name) !== 'Authorization') };
        try {
          res = await httpGet(retry, target, container, deadline, kubeUserAgent('lifecycle'), 0);
        } catch {
          throw err;
        }
        events.push({ type: 'Warning', reason: 'LifecycleHTTPFallback', message: `request to HTTPS lifecycle hook ${res.hostport} got HTTP response, retry with HTTP succeeded` });
      }
      // The kubelet does not look at the status: any answer is a run hook.
      return { ok: true, message: '', ...(events.length ? { events } : {}) };
    }
    if (handler.sleep) {
      await deadline.sleep(Math.max(0, handler.sleep.seconds) * 1000);
      if (deadline.expired) return fail('container terminated before sleep hook finished');
      return { ok: true, message: '' };
    }
    const kind = handler.tcpSocket ? 'tcpSocket is not supported as a lifecycle handler' : 'no action';
    return { ok: false, message: hookFailureMessage(handler, container.name, pod, `invalid handler: ${kind}`) };
  } catch (err) {
    return fail(errorMessage(err));
  } finally {
    deadline.clear();
  }
}

// ----- exec -----

async function execProbe(command: string[], target: ProbeTarget, container: ProbeContainer, timeoutMs: number): Promise<ProbeOutcome> {
  // prober.go: $(VAR) in the command expands against the container's env values (valueFrom ones are "").
  const vars = new Map<string, string>((container.env ?? []).map((e) => [e.name, e.value ?? '']));
  const argv = command.map((c) => expand(c, vars));
  const deadline = new Deadline(timeoutMs);
  try {
    const r = await deadline.race(target.exec(argv, timeoutMs));
    if (r === EXIT_TIMEOUT) return { result: 'failure', message: `command ${goQuote(argv.join(' '))} timed out` };
    const output = Buffer.from(r.stdout + r.stderr, 'utf8').subarray(0, MAX_OUTPUT).toString('utf8');
    return { result: r.exitCode === 0 ? 'success' : 'failure', message: output };
  } finally {
    deadline.clear();
  }
}

// ----- tcpSocket -----

async function tcpProbe(port: number | string, host: string | undefined, target: ProbeTarget, container: ProbeContainer, timeoutMs: number): Promise<ProbeOutcome> {
  const p = resolvePort(port, container);
  const hostname = host || (target.podIP ?? '127.0.0.1');
  const deadline = new Deadline(timeoutMs);
  try {
    const conn = await dial(target, host ? hostname : undefined, hostname, p, deadline);
    conn.destroy();
    return { result: 'success', message: '' };
  } catch (err) {
    if (err instanceof ProbeTargetUnavailable) throw err;
    return { result: 'failure', message: deadline.expired ? `dial tcp ${joinHostPort(hostname, p)}: i/o timeout` : errorMessage(err) };
  } finally {
    deadline.clear();
  }
}

// ----- httpGet -----

async function httpProbe(action: V1HTTPGetAction, target: ProbeTarget, container: ProbeContainer, timeoutMs: number): Promise<ProbeOutcome> {
  const deadline = new Deadline(timeoutMs);
  try {
    const res = await httpGet(action, target, container, deadline, kubeUserAgent('probe'), MAX_OUTPUT);
    if (res.status >= 200 && res.status < 400) {
      if (res.status >= 300) return { result: 'success', warning: true, message: `Probe terminated redirects, Response body: ${res.body}` };
      return { result: 'success', message: res.body };
    }
    return { result: 'failure', message: `HTTP probe failed with statuscode: ${res.status}` };
  } catch (err) {
    if (err instanceof ProbeTargetUnavailable || err instanceof ProbeConfigError) throw err;
    return { result: 'failure', message: errorMessage(err) };
  } finally {
    deadline.clear();
  }
}

interface HttpResult {
  status: number;
  body: string;
  /** host:port of the first request, as the URL names it. */
  hostport: string;
}

/** An HTTPS request that got an HTTP answer (Go: "http: server gave HTTP response to HTTPS client"). */
class HttpsGotHttp extends Error {}

/** A probe that cannot be run as written (a port name not found): the kubelet's "errored", not a failure. */
class ProbeConfigError extends Error {}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/**
 * A GET as the kubelet's prober client makes it (probe/http): no keep-alive, no certificate check, same-host
 * redirects followed (10 requests at most), the last response of a redirect elsewhere returned as it is.
 */
async function httpGet(
  action: V1HTTPGetAction, target: ProbeTarget, container: ProbeContainer, deadline: Deadline, userAgent: string, bodyCap: number,
): Promise<HttpResult> {
  const scheme = (action.scheme || 'HTTP').toLowerCase();
  const hostname = action.host || (target.podIP ?? '127.0.0.1');
  const port = resolvePort(action.port, container);
  const hostport = joinHostPort(hostname, port);
  const rel = new URL(action.path || '/', 'http://placeholder/');
  if (scheme !== 'http' && scheme !== 'https') {
    throw new Error(`Get ${goQuote(`${scheme}://${hostport}${rel.pathname}${rel.search}`)}: unsupported protocol scheme ${goQuote(scheme)}`);
  }
  const first = new URL(`${scheme}://${hostport}${rel.pathname}${rel.search}`);
  let url = first;
  let urlText = `${scheme}://${hostport}${rel.pathname}${rel.search}`;

  const headers = new Map<string, string[]>();
  for (const h of action.httpHeaders ?? []) {
    const key = canonicalKey(h.name);
    headers.set(key, [...(headers.get(key) ?? []), h.value]);
  }
  if (!headers.has('User-Agent')) headers.set('User-Agent', [userAgent]);
  if (!headers.has('Accept')) headers.set('Accept', ['*/*']);
  else if (headers.get('Accept')![0] === '') headers.delete('Accept');
  const customHost = headers.get('Host')?.[0] ?? '';
  headers.delete('Host');

  let hostHeader = customHost || hostport;
  for (let requests = 1; ; requests++) {
    const res = await httpOnce(url, urlText, hostHeader, headers, target, action.host ? hostname : undefined, deadline, bodyCap);
    const location = res.location;
    if (!REDIRECTS.has(res.status) || location === undefined) return { status: res.status, body: res.body, hostport };
    let next: URL;
    try {
      next = new URL(location, url);
    } catch {
      throw new Error(`Get ${goQuote(urlText)}: failed to parse Location header ${goQuote(location)}`);
    }
    // RedirectChecker(false): another host ends the chain with this response.
    if (stripBrackets(next.hostname) !== stripBrackets(first.hostname)) return { status: res.status, body: res.body, hostport };
    if (requests >= 10) throw new Error(`Get ${goQuote(next.href)}: stopped after 10 redirects`);
    // Go keeps a custom Host through a relative redirect only.
    const absolute = /^[a-z][a-z0-9+.-]*:/i.test(location);
    hostHeader = customHost && customHost !== hostport && !absolute ? customHost : next.host;
    url = next;
    urlText = next.href;
  }
}

interface RawResponse {
  status: number;
  location?: string;
  body: string;
}

async function httpOnce(
  url: URL, urlText: string, hostHeader: string, headers: Map<string, string[]>, target: ProbeTarget,
  fromHost: string | undefined, deadline: Deadline, bodyCap: number,
): Promise<RawResponse> {
  const https = url.protocol === 'https:';
  const port = url.port ? Number(url.port) : https ? 443 : 80;
  const hostname = stripBrackets(url.hostname);
  const wrap = (err: unknown): Error => {
    if (err instanceof ProbeTargetUnavailable || err instanceof HttpsGotHttp) return err;
    if (deadline.expired) return new Error(`Get ${goQuote(urlText)}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)`);
    return new Error(`Get ${goQuote(urlText)}: ${errorMessage(err)}`);
  };
  let conn: Duplex;
  try {
    conn = await dial(target, fromHost ? hostname : undefined, hostname, port, deadline);
  } catch (err) {
    throw wrap(err);
  }
  let socket: Duplex = conn;
  const cleanup = () => {
    socket.destroy();
    conn.destroy();
  };
  try {
    if (https) {
      const secure = tls.connect({
        socket: conn, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'], ...(isIP(hostname) ? {} : { servername: hostname }),
      });
      socket = secure;
      await deadline.race(new Promise<void>((resolve, reject) => {
        secure.once('secureConnect', () => resolve());
        secure.once('error', (err: NodeJS.ErrnoException) => {
          reject(/wrong version number|packet length too long|http request/i.test(err.message) || err.code === 'ERR_SSL_WRONG_VERSION_NUMBER'
            ? new HttpsGotHttp(`Get ${goQuote(urlText)}: http: server gave HTTP response to HTTPS client`) : err);
        });
      })).then((r) => {
        if (r === EXIT_TIMEOUT) throw new Error('timeout');
      });
    }
    const outHeaders: Record<string, string | string[]> = { Host: hostHeader };
    for (const [k, v] of headers) outHeaders[k] = v.length === 1 ? v[0]! : v;
    const established = socket;
    let gotHeaders = false;
    const result = await deadline.race(new Promise<RawResponse>((resolve, reject) => {
      const req = http.request({
        method: 'GET', path: `${url.pathname}${url.search}`, headers: outHeaders, setHost: false, createConnection: () => established,
      });
      req.on('error', reject);
      req.once('response', (res: IncomingMessage) => {
        gotHeaders = true;
        const chunks: Buffer[] = [];
        let size = 0;
        const done = () => {
          const location = res.headers.location;
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).subarray(0, bodyCap).toString('utf8'), ...(location !== undefined ? { location } : {}) });
          res.destroy();
        };
        res.on('data', (chunk: Buffer) => {
          if (size >= bodyCap) return;
          chunks.push(chunk);
          size += chunk.length;
          if (size >= bodyCap) done();
        });
        res.once('end', done);
        res.on('error', (err) => (size > 0 || bodyCap === 0 ? done() : reject(err)));
        res.once('aborted', done);
      });
      req.end();
    }));
    if (result === EXIT_TIMEOUT) {
      throw new Error(gotHeaders
        ? `Get ${goQuote(urlText)}: context deadline exceeded (Client.Timeout or context cancellation while reading body)`
        : `Get ${goQuote(urlText)}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)`);
    }
    return result;
  } catch (err) {
    if (err instanceof Error && err.message.startsWith('Get "')) throw err;
    throw wrap(err);
  } finally {
    cleanup();
  }
}

// ----- grpc -----

const HEALTH_STATUS = ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'];
const GRPC_CODES = [
  'OK', 'Canceled', 'Unknown', 'InvalidArgument', 'DeadlineExceeded', 'NotFound', 'AlreadyExists', 'PermissionDenied',
  'ResourceExhausted', 'FailedPrecondition', 'Aborted', 'OutOfRange', 'Unimplemented', 'Internal', 'Unavailable', 'DataLoss', 'Unauthenticated',
];

class GrpcStatusError extends Error {
  constructor(readonly code: number, readonly grpcMessage: string) {
    super(`rpc error: code = ${GRPC_CODES[code] ?? `Code(${code})`} desc = ${grpcMessage}`);
  }
}

/** probe/grpc: grpc.health.v1.Health/Check on a plaintext HTTP/2 connection. */
async function grpcProbe(port: number, service: string, target: ProbeTarget, timeoutMs: number): Promise<ProbeOutcome> {
  const authority = joinHostPort(target.podIP ?? '127.0.0.1', port);
  const within = goDuration(timeoutMs);
  const deadline = new Deadline(timeoutMs);
  let session: http2.ClientHttp2Session | undefined;
  try {
    // grpc.WithBlock: the dial is retried until the connection is up or the time is over.
    for (let backoff = 100; !session; backoff = Math.min(backoff * 2, 1000)) {
      try {
        session = await h2session(target, port, authority, deadline);
      } catch (err) {
        if (err instanceof ProbeTargetUnavailable) throw err;
        await deadline.sleep(backoff);
        if (deadline.expired) {
          return { result: 'failure', message: `timeout: failed to connect service ${goQuote(authority)} within ${within}: context deadline exceeded` };
        }
      }
    }
    const status = await deadline.race(healthCheck(session, authority, service, timeoutMs));
    if (status === EXIT_TIMEOUT) return { result: 'failure', message: `timeout: health rpc did not complete within ${within}` };
    if (status !== 1) return { result: 'failure', message: `service unhealthy (responded with ${goQuote(HEALTH_STATUS[status] ?? String(status))})` };
    return { result: 'success', message: 'service is healthy' };
  } catch (err) {
    if (err instanceof ProbeTargetUnavailable) throw err;
    if (err instanceof GrpcStatusError && GRPC_CODES[err.code] === 'Unimplemented') {
      return { result: 'failure', message: `error: this server does not implement the grpc health protocol (grpc.health.v1.Health): ${err.grpcMessage}` };
    }
    if (err instanceof GrpcStatusError && GRPC_CODES[err.code] === 'DeadlineExceeded') {
      return { result: 'failure', message: `timeout: health rpc did not complete within ${within}` };
    }
    return { result: 'failure', message: `error: health rpc probe failed: ${errorMessage(err)}` };
  } finally {
    deadline.clear();
    session?.destroy();
  }
}

async function h2session(target: ProbeTarget, port: number, authority: string, deadline: Deadline): Promise<http2.ClientHttp2Session> {
  const conn = await dial(target, undefined, target.podIP ?? '127.0.0.1', port, deadline);
  const session = http2.connect(`http://${authority}`, { createConnection: () => conn });
  const r = await deadline.race(new Promise<void>((resolve, reject) => {
    // Ready once the server's SETTINGS came (grpc-go waits for the server preface too).
    session.once('remoteSettings', () => resolve());
    session.on('error', reject);
    session.once('close', () => reject(new Error('connection closed')));
  })).catch((err: unknown) => {
    session.destroy();
    conn.destroy();
    throw err;
  });
  if (r === EXIT_TIMEOUT) {
    session.destroy();
    conn.destroy();
    throw new Error('timeout');
  }
  session.on('error', () => undefined);
  return session;
}

/** The Check call: the response's status enum, or a GrpcStatusError. */
function healthCheck(session: http2.ClientHttp2Session, authority: string, service: string, timeoutMs: number): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const req = session.request({
      ':method': 'POST', ':scheme': 'http', ':path': '/grpc.health.v1.Health/Check', ':authority': authority,
      'content-type': 'application/grpc', te: 'trailers', 'user-agent': kubeUserAgent('probe'), 'grpc-timeout': `${timeoutMs}m`,
    });
    const chunks: Buffer[] = [];
    let headers: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders | undefined;
    req.on('response', (h) => (headers = h));
    req.on('trailers', (t: http2.IncomingHttpHeaders) => (trailers = t));
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('error', (err) => reject(new GrpcStatusError(14, errorMessage(err))));
    req.on('close', () => {
      const httpStatus = Number(headers[':status'] ?? 0);
      const t = trailers ?? headers;
      const code = t['grpc-status'];
      if (code === undefined) {
        if (httpStatus && httpStatus !== 200) return reject(new GrpcStatusError(httpToGrpc(httpStatus), `unexpected HTTP status code received from server: ${httpStatus} (${http.STATUS_CODES[httpStatus] ?? ''})`));
        return reject(new GrpcStatusError(req.rstCode && req.rstCode !== 0 ? 14 : 13, req.rstCode ? `stream terminated by RST_STREAM with error code: ${req.rstCode}` : 'server closed the stream without sending trailers'));
      }
      if (Number(code) !== 0) return reject(new GrpcStatusError(Number(code), decodeGrpcMessage(String(t['grpc-message'] ?? ''))));
      const body = Buffer.concat(chunks);
      if (body.length < 5) return reject(new GrpcStatusError(13, 'response message missing'));
      if (body[0] !== 0) return reject(new GrpcStatusError(13, 'compressed response without negotiated compression'));
      const len = body.readUInt32BE(1);
      try {
        resolve(decodeHealthStatus(body.subarray(5, 5 + len)));
      } catch (err) {
        reject(new GrpcStatusError(13, `grpc: failed to unmarshal the received message: ${errorMessage(err)}`));
      }
    });
    req.end(grpcFrame(encodeHealthRequest(service)));
  });
}

function httpToGrpc(status: number): number {
  switch (status) {
    case 400: return 13;
    case 401: return 16;
    case 403: return 7;
    case 404: return 12;
    case 429: case 502: case 503: case 504: return 14;
    default: return 2;
  }
}

function decodeGrpcMessage(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** HealthCheckRequest{ string service = 1; } */
export function encodeHealthRequest(service: string): Buffer {
  if (!service) return Buffer.alloc(0);
  const bytes = Buffer.from(service, 'utf8');
  return Buffer.concat([Buffer.from([0x0a]), varint(bytes.length), bytes]);
}

/** HealthCheckResponse{ ServingStatus status = 1; }: the status (0, UNKNOWN, when absent). */
export function decodeHealthStatus(msg: Buffer): number {
  let status = 0;
  let i = 0;
  const readVarint = (): number => {
    let v = 0;
    for (let shift = 0; ; shift += 7) {
      if (i >= msg.length || shift > 63) throw new Error('truncated varint');
      const b = msg[i++]!;
      v += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) return v;
    }
  };
  while (i < msg.length) {
    const key = readVarint();
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) {
      const v = readVarint();
      if (field === 1) status = v;
    } else if (wire === 2) {
      const len = readVarint();
      i += len;
    } else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else throw new Error(`wire type ${wire}`);
    if (i > msg.length) throw new Error('truncated field');
  }
  return status;
}

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}

function grpcFrame(msg: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(msg.length, 1);
  return Buffer.concat([head, msg]);
}

// ----- shared -----

/** A deadline: `race` settles with EXIT_TIMEOUT once it passes (or the signal aborts). */
class Deadline {
  expired = false;
  private readonly end: number;
  private readonly timer: NodeJS.Timeout;
  private readonly waiters = new Set<() => void>();
  private readonly onAbort = () => this.expire();

  constructor(ms: number, private readonly signal?: AbortSignal) {
    this.end = Date.now() + ms;
    this.timer = setTimeout(() => this.expire(), ms);
    if (signal?.aborted) this.expired = true;
    signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  private expire(): void {
    this.expired = true;
    for (const w of this.waiters) w();
    this.waiters.clear();
  }

  /** Milliseconds left, at least 1. */
  remaining(): number {
    return Math.max(1, this.end - Date.now());
  }

  /** Waits `ms`, or less when the deadline passes first. */
  async sleep(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await this.race(new Promise<void>((resolve) => (timer = setTimeout(resolve, ms))));
    clearTimeout(timer);
  }

  /** Resolves with p's value, or EXIT_TIMEOUT at the deadline; a value that comes later is destroyed if it is a stream. */
  race<T>(p: Promise<T>): Promise<T | typeof EXIT_TIMEOUT> {
    if (this.expired) {
      p.then((v) => destroyLate(v), () => undefined);
      return Promise.resolve(EXIT_TIMEOUT);
    }
    return new Promise<T | typeof EXIT_TIMEOUT>((resolve, reject) => {
      let settled = false;
      const onExpire = () => {
        settled = true;
        resolve(EXIT_TIMEOUT);
      };
      this.waiters.add(onExpire);
      p.then((v) => {
        this.waiters.delete(onExpire);
        if (settled) destroyLate(v);
        else resolve(v);
      }, (err: unknown) => {
        this.waiters.delete(onExpire);
        if (!settled) reject(err instanceof Error ? err : new Error(String(err)));
      });
    });
  }

  clear(): void {
    clearTimeout(this.timer);
    this.signal?.removeEventListener('abort', this.onAbort);
  }
}

function destroyLate(v: unknown): void {
  if (v && typeof v === 'object' && 'destroy' in v && typeof v.destroy === 'function') (v as Duplex).destroy();
}

/** A connection to the container's port, or with `fromHost` to that host from here; rejects with Go's dial words. */
async function dial(target: ProbeTarget, fromHost: string | undefined, hostname: string, port: number, deadline: Deadline): Promise<Duplex> {
  const addr = joinHostPort(hostname, port);
  const p: Promise<Duplex> = fromHost
    ? new Promise<Duplex>((resolve, reject) => {
      const s = net.connect({ host: fromHost, port });
      s.once('connect', () => resolve(s));
      s.on('error', reject);
    })
    : target.connect(port, deadline.remaining());
  let r: Duplex | typeof EXIT_TIMEOUT;
  try {
    r = await deadline.race(p);
  } catch (err) {
    if (err instanceof ProbeTargetUnavailable) throw err;
    throw new Error(dialError(err, addr, fromHost));
  }
  if (r === EXIT_TIMEOUT) throw new Error(`dial tcp ${addr}: i/o timeout`);
  // Errors after this surface where the connection is used (a request's error, a closed session).
  r.on('error', () => undefined);
  return r;
}

/** A connection error in Go's words: `dial tcp 10.0.0.1:80: connect: connection refused`. */
function dialError(err: unknown, addr: string, host: string | undefined): string {
  const e = err as NodeJS.ErrnoException;
  const text = errorMessage(err);
  const has = (code: string) => e.code === code || text.includes(code);
  if (has('ENOTFOUND') || has('EAI_AGAIN')) return `dial tcp: lookup ${host ?? addr}: no such host`;
  if (has('ECONNREFUSED')) return `dial tcp ${addr}: connect: connection refused`;
  if (has('EHOSTUNREACH')) return `dial tcp ${addr}: connect: no route to host`;
  if (has('ENETUNREACH')) return `dial tcp ${addr}: connect: network is unreachable`;
  if (has('ETIMEDOUT')) return `dial tcp ${addr}: i/o timeout`;
  if (has('ECONNRESET')) return `dial tcp ${addr}: connect: connection reset by peer`;
  return `dial tcp ${addr}: ${text}`;
}

/** probe.ResolveContainerPort: a number, a port name of the container, or a number written as a string. */
export function resolvePort(port: number | string, container: ProbeContainer): number {
  let n: number;
  if (typeof port === 'number') n = port;
  else {
    const named = (container.ports ?? []).find((p) => p.name === port);
    if (named) n = named.containerPort;
    else if (/^[+-]?\d+$/.test(port)) n = Number(port);
    else throw new ProbeConfigError(`strconv.Atoi: parsing ${goQuote(port)}: invalid syntax`);
  }
  if (!Number.isInteger(n) || n <= 0 || n >= 65536) throw new ProbeConfigError(`invalid port number: ${n}`);
  return n;
}

/** http.CanonicalHeaderKey. */
function canonicalKey(k: string): string {
  if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(k)) return k;
  return k.toLowerCase().replace(/(^|-)([a-z])/g, (_m, sep: string, c: string) => sep + c.toUpperCase());
}

function joinHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

function stripBrackets(h: string): string {
  return h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h;
}

/** Go's %q for the text we quote. */
function goQuote(s: string): string {
  return JSON.stringify(s).replace(/\\u00([0-9a-f]{2})/g, '\\x$1');
}


function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
