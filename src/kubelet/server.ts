// The kubelet API's HTTPS server (port 10250): TLS with optional client certificates, then for every
// request and every HTTP upgrade (SPDY/3.1 and WebSocket streams arrive as Node 'upgrade' events) the
// kubelet's filter — authenticate (401), authorize on nodes/<subresource> (403) — and only then a route.
// Routes are registered by the parts of src/kubelet/ that own them (endpoints/*.ts).
import type { X509Certificate } from 'node:crypto';
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import http from 'node:http';
import { chmod, rename, unlink } from 'node:fs/promises';
import type { AddressInfo, Socket } from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { Registry } from 'prom-client';
import type { Config } from '../config/schema.ts';
import type { KubeApi } from '../kube/client.ts';
import type { Logger } from '../observability/log.ts';
import { Authenticator, type TokenReviewStatus, type UserInfo } from './auth/authenticator.ts';
import {
  AlwaysAllowAuthorizer, authorizeAll, requestAttributes, WebhookAuthorizer, type Authorizer, type SubjectAccessReviewStatus,
} from './auth/authorizer.ts';
import { loadServingCredentials, readCaBundle, type ServingCredentials } from './auth/tls.ts';
import { servingCertProblem } from '../kube/certificates/serving-cert.ts';
import { installEndpoints } from './endpoints/index.ts';
import { installStreaming } from './endpoints/streaming.ts';
import { readHost } from './endpoints/stats.ts';
import { KubeletError, type KubeletProvider } from './provider.ts';
import { rawResponse } from './streaming/upgrade.ts';
import { connectUnix } from '../host/unix-socket.ts';

export interface RouteContext {
  req: IncomingMessage;
  url: URL;
  /** Path parameters: `:name` segments by name, a trailing `*` as "*", a RegExp's named groups. */
  params: Record<string, string>;
  user: UserInfo;
  /**
   * The runtime. Until setProvider() — the pods part starts after the server, or not at all on a host
   * without a usable hypervisor — this is a stand-in whose every method throws KubeletError 503.
   */
  provider: KubeletProvider;
  /** Whether `provider` is the real runtime. */
  providerReady: boolean;
  log: Logger;
}

export interface Route {
  /** Methods served (HEAD is served with GET); default: any. */
  method?: string | readonly string[];
  /** '/exec/:namespace/:pod/:container', a prefix '/logs/*', or a RegExp on the path (named groups become params). */
  path: string | RegExp;
  /** Answers a plain request. A KubeletError thrown is answered with its status and message (plain text, as the kubelet). */
  handle?(ctx: RouteContext, res: ServerResponse): void | Promise<void>;
  /**
   * Takes over an upgrade request's socket (after authentication and authorization). A KubeletError
   * thrown before anything was written to the socket is answered as an HTTP response with a Status body;
   * after that the handler owns the socket and its errors.
   */
  upgrade?(ctx: RouteContext, socket: Duplex, head: Buffer): void | Promise<void>;
}

export interface KubeletServerOptions {
  nodeName: string;
  credentials: Pick<ServingCredentials, 'cert' | 'key'>;
  authenticator: Pick<Authenticator, 'authenticateRequest'>;
  authorizer: Authorizer;
  log: Logger;
}

interface CompiledRoute extends Route {
  methods?: Set<string>;
  match(path: string): Record<string, string> | undefined;
}


export class KubeletServer {
  private readonly routes: CompiledRoute[] = [];
  private server?: https.Server;
  private local?: { server: http.Server; path: string };
  private readonly sockets = new Set<Socket | TLSSocket>();
  private provider?: KubeletProvider;
  private readonly log: Logger;
  private readonly stopHooks: Array<() => void> = [];

  constructor(private readonly opts: KubeletServerOptions) {
    this.log = opts.log;
  }

  /** Adds a route; the first registered route whose path and method match serves a request. */
  route(route: Route): void {
    if (!route.handle && !route.upgrade) throw new Error('a route needs handle() or upgrade()');
    const methods = route.method === undefined ? undefined : new Set((typeof route.method === 'string' ? [route.method] : route.method).map((m) => m.toUpperCase()));
    if (methods?.has('GET')) methods.add('HEAD');
    this.routes.push({ ...route, methods, match: compilePath(route.path) });
  }

  /** The runtime behind pod endpoints; until set they answer 503. */
  setProvider(provider: KubeletProvider): void {
    this.provider = provider;
  }

  get hasProvider(): boolean {
    return this.provider !== undefined;
  }

  /** Listens on address:port (port 0 picks one); resolves with the bound address. */
  async start(address: string, port: number): Promise<AddressInfo> {
    const { cert, key } = this.opts.credentials;
    const server = https.createServer({
      cert,
      key,
      // Client certificates are optional and checked by the authenticator against the client CA bundle,
      // so a request with a bearer token (or none) still reaches the filter and gets the kubelet's answer.
      requestCert: true,
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
      minVersion: 'TLSv1.2',
    });
    // The kubelet's idle timeout (90 s, as Go's default transport keeps connections).
    server.keepAliveTimeout = 90_000;
    server.on('connection', (socket: Socket) => this.track(socket));
    server.on('secureConnection', (socket: TLSSocket) => this.track(socket));
    server.on('tlsClientError', (err: Error) => this.log.debug({ err: err.message }, 'TLS handshake failed'));
    server.on('clientError', (err: Error, socket: Duplex) => {
      this.log.debug({ err: err.message }, 'bad HTTP request');
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      else socket.destroy();
    });
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      this.onRequest(req, res).catch((err: unknown) => this.internalError(res, err, req));
    });
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.onUpgrade(req, socket, head).catch((err: unknown) => {
        this.log.error({ err, path: req.url }, 'upgrade failed');
        socket.destroy();
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, address, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.log.error({ err }, 'kubelet API server error'));
    this.server = server;
    return server.address() as AddressInfo;
  }

  /** Serves new connections with another certificate (a renewed or replaced one); open ones keep theirs. */
  setCredentials(credentials: Pick<ServingCredentials, 'cert' | 'key'>): void {
    this.opts.credentials = credentials;
    this.server?.setSecureContext({ cert: credentials.cert, key: credentials.key, minVersion: 'TLSv1.2' });
  }

  /** Runs `fn` when the server stops (timers of what was started with it). */
  onStop(fn: () => void): void {
    this.stopHooks.push(fn);
  }

  /** Stops listening and closes every connection, upgraded ones (exec, port-forward) included. */
  async stop(): Promise<void> {
    for (const fn of this.stopHooks.splice(0)) fn();
    const local = this.local;
    this.local = undefined;
    const localClosed = local ? new Promise<void>((resolve) => local.server.close(() => resolve())).then(() => unlink(local.path).catch(() => undefined)) : undefined;
    const server = this.server;
    if (!server) {
      for (const socket of this.sockets) socket.destroy();
      this.sockets.clear();
      await localClosed;
      return;
    }
    this.server = undefined;
    const closed = Promise.all([new Promise<void>((resolve) => server.close(() => resolve())), localClosed]).then(() => undefined);
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
    await closed;
  }

  /**
   * Serves the same routes on a unix socket, in plain HTTP and without authentication or authorization:
   * the socket's mode (0600, the owner of the vmlet process) is the access check. `vmlet ps/logs/exec`
   * talk to it, with or without an API server. A socket file left by a vmlet that is gone is replaced;
   * one that answers belongs to a running vmlet, and this throws.
   */
  async listenLocal(socketPath: string): Promise<void> {
    const alive = await connectUnix(socketPath).then((s) => {
      s.destroy();
      return true;
    }, (err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? undefined : false));
    if (alive) throw Object.assign(new Error(`another vmlet serves the local socket ${socketPath}`), { code: 'EADDRINUSE' });
    if (alive === false) await unlink(socketPath).catch(() => undefined);
    const server = http.createServer();
    server.keepAliveTimeout = 90_000;
    server.on('connection', (socket: Socket) => this.track(socket));
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      this.onRequest(req, res, true).catch((err: unknown) => this.internalError(res, err, req));
    });
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.onUpgrade(req, socket, head, true).catch((err: unknown) => {
        this.log.error({ err, path: req.url }, 'upgrade failed');
        socket.destroy();
      });
    });
    // Bound under a temporary name, made 0600, then renamed into place: nobody else can connect in between.
    const temporary = `${socketPath}.${process.pid}.tmp`;
    await unlink(temporary).catch(() => undefined);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(temporary, () => {
        server.off('error', reject);
        resolve();
      });
    });
    try {
      await chmod(temporary, 0o600);
      await rename(temporary, socketPath);
    } catch (err) {
      server.close();
      throw err;
    }
    server.on('error', (err) => this.log.error({ err }, 'local API socket error'));
    this.local = { server, path: socketPath };
  }

  private track(socket: Socket | TLSSocket): void {
    this.sockets.add(socket);
    // An error on a connection (a reset, a broken pipe mid-stream) ends that connection, nothing else.
    socket.on('error', (err: Error) => this.log.debug({ err: err.message }, 'connection error'));
    socket.once('close', () => this.sockets.delete(socket));
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse, local = false): Promise<void> {
    req.on('error', (err) => this.log.debug({ err: err.message }, 'request stream error'));
    res.on('error', (err) => this.log.debug({ err: err.message }, 'response stream error'));
    const ctx = await this.admit(req, local);
    if ('status' in ctx) return sendText(res, ctx.status, ctx.body);
    const found = this.find(ctx.url.pathname, req.method);
    if (found === 'not-allowed') return sendText(res, 405, '405: Method Not Allowed');
    if (!found) return sendText(res, 404, '404 page not found\n');
    const [route, params] = found;
    if (!route.handle) return sendText(res, 400, `${ctx.url.pathname} needs an upgraded connection (SPDY or WebSocket)\n`);
    try {
      await route.handle({ ...ctx, params }, res);
    } catch (err) {
      this.internalError(res, err, req);
    }
  }

  private async onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, local = false): Promise<void> {
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'upgraded connection error'));
    const ctx = await this.admit(req, local);
    if ('status' in ctx) return rawResponse(socket, ctx.status, ctx.body);
    const found = this.find(ctx.url.pathname, req.method);
    if (found === 'not-allowed') return rawResponse(socket, 405, '405: Method Not Allowed');
    if (!found) return rawResponse(socket, 404, '404 page not found\n');
    const [route, params] = found;
    if (!route.upgrade) {
      // An Upgrade header on a plain endpoint is ignored, as Go's net/http does: answer it normally.
      const res = new http.ServerResponse(req);
      res.shouldKeepAlive = false;
      res.assignSocket(socket as Socket);
      res.once('finish', () => {
        res.detachSocket(socket as Socket);
        socket.end();
      });
      try {
        await route.handle!({ ...ctx, params }, res);
      } catch (err) {
        this.internalError(res, err, req);
      }
      return;
    }
    let wrote = false;
    const write = socket.write.bind(socket) as (...args: unknown[]) => boolean;
    socket.write = ((...args: unknown[]) => {
      wrote = true;
      return write(...args);
    }) as typeof socket.write;
    try {
      await route.upgrade({ ...ctx, params }, socket, head);
    } catch (err) {
      if (wrote || socket.destroyed) {
        this.log.warn({ err, path: ctx.url.pathname }, 'stream ended with an error');
        socket.destroy();
      } else if (err instanceof KubeletError) {
        rawResponse(socket, err.status, statusBody(err), 'application/json');
      } else {
        this.log.error({ err, path: ctx.url.pathname }, 'upgrade handler failed');
        rawResponse(socket, 500, 'Internal Error\n');
      }
    }
  }

  /** The kubelet's filter: who is asking (401), may they (403, or 500 when no decision could be had). */
  private async admit(req: IncomingMessage, local = false): Promise<Omit<RouteContext, 'params'> | { status: number; body: string }> {
    const url = new URL(req.url ?? '/', 'https://kubelet');
    if (local) {
      const provider = this.provider;
      return { req, url, user: LOCAL_USER, provider: provider ?? UNAVAILABLE, providerReady: provider !== undefined, log: this.log };
    }
    const authn = await this.opts.authenticator.authenticateRequest(req);
    if (!authn.ok) {
      this.log.debug({ path: url.pathname, reason: authn.reason }, 'unauthorized');
      return { status: 401, body: 'Unauthorized' };
    }
    const attrs = requestAttributes(this.opts.nodeName, authn.user, req.method, url.pathname);
    const verdict = await authorizeAll(this.opts.authorizer, attrs);
    if (!verdict.allowed) {
      if (verdict.status === 500) this.log.error({ path: url.pathname, user: authn.user.name, err: verdict.reason }, 'authorization error');
      else this.log.debug({ path: url.pathname, user: authn.user.name, verb: attrs[0]?.verb, reason: verdict.reason }, 'forbidden');
      return { status: verdict.status, body: verdict.message };
    }
    const provider = this.provider;
    return { req, url, user: authn.user, provider: provider ?? UNAVAILABLE, providerReady: provider !== undefined, log: this.log };
  }

  private find(path: string, method: string | undefined): [CompiledRoute, Record<string, string>] | 'not-allowed' | undefined {
    let pathMatched = false;
    for (const route of this.routes) {
      const params = route.match(path);
      if (!params) continue;
      if (route.methods && !route.methods.has((method ?? 'GET').toUpperCase())) {
        pathMatched = true;
        continue;
      }
      return [route, params];
    }
    return pathMatched ? 'not-allowed' : undefined;
  }

  private internalError(res: ServerResponse, err: unknown, req: IncomingMessage): void {
    if (err instanceof KubeletError) {
      if (err.status >= 500) this.log.warn({ path: req.url, status: err.status, reason: err.reason, err: err.message }, 'kubelet API request failed');
      // As go-restful's WriteError in the kubelet: the message as plain text. The API server turns it into
      // the message of its own Status (kubectl: "Error from server (BadRequest): <message>").
      if (!res.headersSent) return sendText(res, err.status, err.message);
    } else {
      this.log.error({ err, path: req.url }, 'kubelet API handler failed');
      if (!res.headersSent) return sendText(res, 500, `Internal Error: ${(err as Error)?.message ?? String(err)}\n`);
    }
    // Part of the answer is out already: all that is left is to cut it short.
    res.destroy();
  }
}

/** A metav1.Status for a KubeletError: how the kubelet's streaming server refuses an upgrade, which client-go decodes. */
export function statusObject(err: KubeletError): Record<string, unknown> {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: err.message, reason: err.reason, code: err.status };
}

function statusBody(err: KubeletError): string {
  return JSON.stringify(statusObject(err));
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export function sendText(res: ServerResponse, status: number, body: string, contentType = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'x-content-type-options': 'nosniff' });
  res.end(body);
}

/** Turns a route path into a matcher: ':name' segments, a trailing '*', or a RegExp with named groups. */
export function compilePath(pattern: string | RegExp): (path: string) => Record<string, string> | undefined {
  if (pattern instanceof RegExp) {
    return (path) => {
      const m = pattern.exec(path);
      if (!m) return undefined;
      const params: Record<string, string> = {};
      for (const [k, v] of Object.entries(m.groups ?? {})) if (v !== undefined) params[k] = safeDecode(v);
      return params;
    };
  }
  const want = pattern.split('/').filter(Boolean);
  const rest = want[want.length - 1] === '*';
  if (rest) want.pop();
  return (path) => {
    const got = path.split('/').filter(Boolean);
    if (rest ? got.length < want.length : got.length !== want.length) return undefined;
    const params: Record<string, string> = {};
    for (let i = 0; i < want.length; i++) {
      const w = want[i]!;
      const g = safeDecode(got[i]!);
      if (w.startsWith(':')) params[w.slice(1)] = g;
      else if (w !== g) return undefined;
    }
    if (rest) params['*'] = got.slice(want.length).map(safeDecode).join('/');
    return params;
  };
}

function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/** Narrows a runtime to the kubelet API's view of it (until PodRuntime implements KubeletProvider for sure). */
export function isKubeletProvider(value: unknown): value is KubeletProvider {
  const p = value as Partial<Record<keyof KubeletProvider, unknown>> | null;
  return (
    typeof p === 'object' && p !== null &&
    (['getPod', 'listPods', 'runningPods', 'exec', 'attach', 'logs', 'portForward', 'usage'] as const).every((m) => typeof p[m] === 'function')
  );
}

/** Who a request on the local socket is: whoever may open it (its mode is the check). */
const LOCAL_USER: UserInfo = { name: 'vmlet:local-socket', groups: [] };

const notReady = (): never => {
  throw new KubeletError(503, 'ServiceUnavailable', 'pods are not served yet: the VM runtime of this node has not started (see the vmlet log for why)');
};

/** Stands in for the runtime until it is set: every call is a 503. */
const UNAVAILABLE: KubeletProvider = {
  getPod: notReady,
  listPods: notReady,
  runningPods: notReady,
  exec: notReady,
  attach: notReady,
  logs: notReady,
  portForward: notReady,
  usage: notReady,
};

// ----- wiring for `vmlet run` -----

export interface KubeletApiOptions {
  config: Config;
  api: Pick<KubeApi, 'call'>;
  /** The host's name and addresses, for a self-signed serving certificate. */
  host: { hostname: string; ips: readonly string[] };
  /** vmlet's own metrics, served on /metrics too. */
  registry: Registry;
  log: Logger;
  /**
   * serverTlsBootstrap: the file (certificate and key) a kubelet-serving CSR brings; served once it
   * holds a usable certificate for the node's hosts, the self-signed one until then.
   */
  issuedCertFile?: string;
}

// Certificate and CA files are read again this often, so a renewed certificate is served without a restart.
const RELOAD_INTERVAL_MS = 60_000;

/**
 * Builds the kubelet API from the configuration — serving certificate, client CA, TokenReview and
 * SubjectAccessReview through the API server — registers its own endpoints and listens. Throws
 * ServingCertError for unusable certificate files, and the listen error (EADDRINUSE, ...) as it is.
 */
export async function startKubeletServer(
  o: KubeletApiOptions,
): Promise<{ server: KubeletServer; address: AddressInfo; credentials: ServingCredentials; reload: () => Promise<void> }> {
  const { config, api, log } = o;
  const hosts = kubeletHosts(config, o.host);
  const certOptions = { certFile: config.kubeletTlsCertFile, keyFile: config.kubeletTlsKeyFile, dir: path.join(config.imageCacheDir, 'pki'), hosts };
  // With serverTlsBootstrap, the certificate a kubelet-serving CSR brought once it is there, else the self-signed one.
  const issuedFile = o.issuedCertFile;
  const loadCredentials = async (): Promise<ServingCredentials> => {
    if (issuedFile && !(await servingCertProblem(issuedFile, hosts))) {
      return { ...(await loadServingCredentials({ ...certOptions, certFile: issuedFile, keyFile: issuedFile })), source: 'csr' };
    }
    return loadServingCredentials(certOptions);
  };
  let credentials = await loadCredentials();
  const caFile = config.kubeletClientCaFile;
  let clientCAs: X509Certificate[] = caFile ? await readCaBundle(caFile) : [];

  const quiet = throttled(60_000);
  /** Creates a TokenReview or SubjectAccessReview and returns its status; a failure is logged once a minute per kind. */
  const postReview = async <S>(resource: string, apiVersion: string, kind: string, spec: unknown, warning: string): Promise<S> => {
    try {
      const review = await api.call<{ status?: S }>('create', resource, { method: 'POST', path: `/apis/${apiVersion}/${resource}`, body: { apiVersion, kind, spec } });
      return review.status ?? ({} as S);
    } catch (err) {
      if (quiet(resource)) log.warn({ err: (err as Error).message }, warning);
      throw err;
    }
  };
  const authenticator = new Authenticator({
    ...(caFile ? { clientCAs: () => clientCAs } : {}),
    tokenReview: (token) =>
      postReview<TokenReviewStatus>('tokenreviews', 'authentication.k8s.io/v1', 'TokenReview', { token }, 'TokenReview failed: bearer tokens cannot be checked, requests with them get 401'),
    anonymous: config.kubeletAnonymousAuth,
    tokenSuccessTtlMs: config.kubeletTokenCacheTTL,
  });
  const authorizer =
    config.kubeletAuthorizationMode === 'AlwaysAllow'
      ? new AlwaysAllowAuthorizer()
      : new WebhookAuthorizer({
          review: (spec) =>
            postReview<SubjectAccessReviewStatus>('subjectaccessreviews', 'authorization.k8s.io/v1', 'SubjectAccessReview', spec, 'SubjectAccessReview failed: requests get 500 until the API server answers'),
          allowTtlMs: config.kubeletAuthorizedCacheTTL,
          denyTtlMs: config.kubeletUnauthorizedCacheTTL,
        });
  if (config.kubeletAnonymousAuth && config.kubeletAuthorizationMode === 'AlwaysAllow') {
    log.warn('kubeletAnonymousAuth with AlwaysAllow: anyone who reaches the kubelet port can run commands in pods');
  }

  const server = new KubeletServer({ nodeName: config.nodeName, credentials, authenticator, authorizer, log });
  installEndpoints(server, {
    nodeName: config.nodeName,
    config: () => ({
      nodeName: config.nodeName,
      address: config.kubeletAddress,
      port: config.kubeletPort,
      tlsCertFile: credentials.certFile,
      tlsPrivateKeyFile: credentials.keyFile,
      ...(caFile ? { clientCAFile: caFile } : {}),
      anonymous: config.kubeletAnonymousAuth,
      authorizationMode: config.kubeletAuthorizationMode,
      tokenCacheTtlMs: config.kubeletTokenCacheTTL,
      authorizedCacheTtlMs: config.kubeletAuthorizedCacheTTL,
      unauthorizedCacheTtlMs: config.kubeletUnauthorizedCacheTTL,
      maxPods: config.node.maxPods,
    }),
    readHost: () => readHost(config.imageCacheDir),
    registry: o.registry,
    log,
  });
  // exec, attach, portForward, run, containerLogs (src/kubelet/endpoints/streaming.ts).
  installStreaming(server);
  const address = await server.start(config.kubeletAddress, config.kubeletPort);

  let reloading = false;
  const reload = async () => {
    if (reloading) return;
    reloading = true;
    try {
      const next = await loadCredentials();
      if (next.fingerprint !== credentials.fingerprint) {
        credentials = next;
        server.setCredentials(next);
        log.info({ source: next.source, certFile: next.certFile, notAfter: next.notAfter.toISOString() }, 'kubelet API serving certificate replaced');
      }
      if (caFile) {
        const cas = await readCaBundle(caFile);
        const same = cas.length === clientCAs.length && cas.every((c, i) => c.raw.equals(clientCAs[i]!.raw));
        if (!same) {
          clientCAs = cas;
          log.info({ file: caFile, certificates: cas.length }, 'kubelet API client CA bundle reloaded');
        }
      }
    } catch (err) {
      if (quiet('reload')) log.warn({ err: (err as Error).message }, 'cannot reload the kubelet API certificates; serving the ones loaded before');
    } finally {
      reloading = false;
    }
  };
  const timer = setInterval(() => void reload(), RELOAD_INTERVAL_MS);
  timer.unref();
  server.onStop(() => clearInterval(timer));
  return { server, address, credentials, reload };
}

/** The names and addresses the kubelet API answers to: its self-signed certificate's, and a serving CSR's, SANs. */
export function kubeletHosts(config: Config, host: { hostname: string; ips: readonly string[] }): string[] {
  return [...new Set([config.nodeName, host.hostname.toLowerCase(), ...(config.node.ip ? [config.node.ip] : []), ...host.ips].filter(Boolean))];
}

/**
 * The kubelet API's routes without its TCP port, for the local socket only (listenLocal): what vmlet
 * serves when it runs without an API server (static pods), where no TokenReview or SubjectAccessReview
 * could be asked and the socket's mode is the access check.
 */
export function createLocalKubeletServer(o: { config: Config; registry: Registry; log: Logger }): KubeletServer {
  const { config, log } = o;
  const server = new KubeletServer({
    nodeName: config.nodeName,
    credentials: { cert: '', key: '' },
    authenticator: { authenticateRequest: async () => ({ ok: false, reason: 'this server serves its local socket only' }) },
    authorizer: new AlwaysAllowAuthorizer(),
    log,
  });
  installEndpoints(server, {
    nodeName: config.nodeName,
    config: () => ({
      nodeName: config.nodeName, address: '', port: 0, tlsCertFile: '', tlsPrivateKeyFile: '', anonymous: false, authorizationMode: 'AlwaysAllow',
      tokenCacheTtlMs: config.kubeletTokenCacheTTL, authorizedCacheTtlMs: config.kubeletAuthorizedCacheTTL, unauthorizedCacheTtlMs: config.kubeletUnauthorizedCacheTTL,
      maxPods: config.node.maxPods,
    }),
    readHost: () => readHost(config.imageCacheDir),
    registry: o.registry,
    log,
  });
  installStreaming(server);
  return server;
}

/** true at most once per `ms` per key: one log line for a failure that repeats on every request. */
function throttled(ms: number): (key: string) => boolean {
  const last = new Map<string, number>();
  return (key) => {
    const now = Date.now();
    if (now - (last.get(key) ?? -Infinity) < ms) return false;
    last.set(key, now);
    return true;
  };
}
