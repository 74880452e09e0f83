// The one way vmlet talks to the API server: a kubeconfig loaded with clear errors, typed API clients with
// a deadline on every request, and `call()`, which counts each request and reports reachability.
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  ApiException,
  CoordinationV1Api,
  CoreV1Api,
  KubeConfig,
  ServerConfiguration,
  createConfiguration,
  type Middleware,
} from '@kubernetes/client-node';
import type { AgentMetrics } from '../observability/metrics.ts';
import type { ApiHealth } from './api-health.ts';

/** A kubeconfig problem; the message is one line naming the file and what is wrong. */
export class KubeconfigError extends Error {
  override name = 'KubeconfigError';
}

/**
 * Loads the kubeconfig the kubelet way: an explicit path, else $KUBECONFIG, else the in-cluster service
 * account, else ~/.kube/config. Certificate and key files are read now, so a broken path fails at start.
 */
export function loadKubeConfig(explicit: string | undefined, env: NodeJS.ProcessEnv = process.env): { kc: KubeConfig; source: string } {
  const kc = new KubeConfig();
  const file = explicit ?? env.KUBECONFIG?.split(path.delimiter).find(Boolean);
  let source: string;
  if (file) {
    source = file;
    if (!existsSync(file)) throw new KubeconfigError(`kubeconfig ${file} does not exist`);
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new KubeconfigError(`kubeconfig ${file} cannot be read: ${(err as Error).message}`);
    }
    try {
      kc.loadFromString(text);
      kc.makePathsAbsolute(path.dirname(path.resolve(file)));
    } catch (err) {
      throw new KubeconfigError(`kubeconfig ${file} is not a valid kubeconfig: ${firstLine(err)}`);
    }
  } else if (env.KUBERNETES_SERVICE_HOST && existsSync('/var/run/secrets/kubernetes.io/serviceaccount/token')) {
    source = 'in-cluster service account';
    kc.loadFromCluster();
  } else {
    source = path.join(os.homedir(), '.kube', 'config');
    if (!existsSync(source)) {
      throw new KubeconfigError('no kubeconfig: pass --kubeconfig, set KUBECONFIG, run in a cluster, or create ~/.kube/config');
    }
    return loadKubeConfig(source, {});
  }
  const context = kc.getCurrentContext();
  const cluster = kc.getCurrentCluster();
  if (!context || !kc.getContextObject(context)) throw new KubeconfigError(`kubeconfig ${source} has no current context`);
  if (!cluster?.server) throw new KubeconfigError(`kubeconfig ${source}: context "${context}" names no cluster with a server`);
  try {
    new URL(cluster.server);
  } catch {
    throw new KubeconfigError(`kubeconfig ${source}: server "${cluster.server}" is not a URL`);
  }
  if (!kc.getCurrentUser()) throw new KubeconfigError(`kubeconfig ${source}: context "${context}" names no user`);
  for (const [what, file] of [
    ['certificate-authority', cluster.caFile],
    ['client-certificate', kc.getCurrentUser()?.certFile],
    ['client-key', kc.getCurrentUser()?.keyFile],
  ] as const) {
    if (file && !existsSync(file)) throw new KubeconfigError(`kubeconfig ${source}: ${what} file ${file} does not exist`);
  }
  return { kc, source };
}

export type Verb = 'get' | 'list' | 'watch' | 'create' | 'update' | 'patch' | 'delete';

/** Typed API clients sharing one deadline per request, plus request accounting. */
export class KubeApi {
  readonly core: CoreV1Api;
  readonly coordination: CoordinationV1Api;
  readonly server: string;

  constructor(
    readonly kc: KubeConfig,
    private readonly metrics: AgentMetrics,
    readonly health: ApiHealth,
    requestTimeoutMs: number,
  ) {
    const cluster = kc.getCurrentCluster()!;
    this.server = cluster.server;
    const deadline: Middleware = {
      pre: async (ctx) => {
        ctx.setSignal(AbortSignal.timeout(requestTimeoutMs));
        return ctx;
      },
      post: async (ctx) => ctx,
    };
    const configuration = createConfiguration({
      baseServer: new ServerConfiguration(cluster.server, {}),
      authMethods: { default: kc },
      promiseMiddleware: [deadline],
    });
    this.core = new CoreV1Api(configuration);
    this.coordination = new CoordinationV1Api(configuration);
  }

  /** Counts a watch request (the reflector sends watches itself, as streams). */
  countWatch(resource: string): void {
    this.metrics.apiRequests.inc({ verb: 'watch', resource, code: 'stream' });
  }

  /**
   * Runs one API request: counts it by verb, resource and status code, and tells ApiHealth whether the
   * server answered (any HTTP status is an answer; only network failures and timeouts are outages).
   */
  async call<T>(verb: Verb, resource: string, request: () => Promise<T>): Promise<T> {
    try {
      const result = await request();
      this.metrics.apiRequests.inc({ verb, resource, code: '2xx' });
      this.health.succeeded();
      return result;
    } catch (err) {
      const status = httpStatus(err);
      this.metrics.apiRequests.inc({ verb, resource, code: status ? String(status) : '0' });
      if (status) this.health.succeeded();
      else this.health.failed(describeApiError(err, this.server));
      throw err;
    }
  }
}

/** The HTTP status of a failed request, or undefined when the server never answered. */
export function httpStatus(err: unknown): number | undefined {
  if (err instanceof ApiException) return err.code;
  const code = (err as { statusCode?: unknown; code?: unknown } | null)?.statusCode;
  return typeof code === 'number' ? code : undefined;
}

/** One line for a log or an error message: what failed and why, without stack or response dump. */
export function describeApiError(err: unknown, server?: string): string {
  if (err instanceof ApiException) {
    const body = parseStatus(err.body);
    return `HTTP ${err.code}${body?.reason ? ` ${body.reason}` : ''}: ${body?.message ?? 'no message'}`;
  }
  const e = err as { name?: string; code?: string; message?: string; type?: string } | null;
  if (e?.name === 'AbortError' || e?.name === 'TimeoutError' || e?.type === 'aborted') {
    return `no answer from ${server ?? 'the API server'} before the request deadline`;
  }
  const reason = e?.code ?? '';
  const msg = firstLine(err).replace(/^request to \S+ failed, reason: /, '');
  return `${server ? `${server}: ` : ''}${msg}${reason && !msg.includes(reason) ? ` (${reason})` : ''}`;
}

function parseStatus(body: unknown): { reason?: string; message?: string } | undefined {
  if (typeof body === 'object' && body !== null) return body;
  if (typeof body !== 'string') return undefined;
  try {
    return JSON.parse(body) as { reason?: string; message?: string };
  } catch {
    return { message: body.slice(0, 200) };
  }
}

export function isStatus(err: unknown, code: number): boolean {
  return httpStatus(err) === code;
}

function firstLine(err: unknown): string {
  return String((err as Error)?.message ?? err).split('\n')[0]!;
}
