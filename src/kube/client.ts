// The one way vmlet talks to the API server: `KubeApi.call()` sends a request through KubeHttp with the
// configured deadline, counts it (vmlet_api_requests_total) and tells ApiHealth whether the server
// answered. Object types come from @kubernetes/client-node as types only (erased at build time).
import type { AgentMetrics } from '../observability/metrics.ts';
import type { ApiHealth } from './api-health.ts';
import { KubeconfigError } from './errors.ts';
import { ApiError, KubeHttp, type RequestOptions } from './http.ts';
import type { ClusterAccess } from './kubeconfig.ts';

export { ApiError };

export type Verb = 'get' | 'list' | 'watch' | 'create' | 'update' | 'patch' | 'delete';

export const PATCH = {
  merge: 'application/merge-patch+json',
  strategic: 'application/strategic-merge-patch+json',
  json: 'application/json-patch+json',
} as const;

export class KubeApi {
  readonly http: KubeHttp;
  readonly server: string;

  constructor(
    readonly access: ClusterAccess,
    private readonly metrics: AgentMetrics,
    readonly health: ApiHealth,
    private readonly requestTimeoutMs: number,
  ) {
    this.http = new KubeHttp(access);
    this.server = access.server;
  }

  /**
   * Sends one API request: counts it by verb, resource and status code, and tells ApiHealth whether the
   * server answered (any HTTP status is an answer; only network failures and timeouts are outages).
   */
  async call<T>(verb: Verb, resource: string, opts: Omit<RequestOptions, 'timeoutMs'>): Promise<T> {
    try {
      const result = await this.http.request<T>({ ...opts, timeoutMs: this.requestTimeoutMs });
      this.metrics.apiRequests.inc({ verb, resource, code: '2xx' });
      this.health.succeeded();
      return result;
    } catch (err) {
      const status = httpStatus(err);
      this.metrics.apiRequests.inc({ verb, resource, code: status ? String(status) : '0' });
      if (status) this.health.succeeded();
      else if (!(err instanceof KubeconfigError)) this.health.failed(describeApiError(err, this.server));
      throw err;
    }
  }

  /** Counts a watch request (the reflector opens watches as streams through `http.stream`). */
  countWatch(resource: string): void {
    this.metrics.apiRequests.inc({ verb: 'watch', resource, code: 'stream' });
  }

  close(): void {
    this.http.close();
  }
}

/** The HTTP status of a failed request, or undefined when the server never answered. */
export function httpStatus(err: unknown): number | undefined {
  return err instanceof ApiError ? err.status : undefined;
}

/** One line for a log or an error message: what failed and why, without stack or response dump. */
export function describeApiError(err: unknown, server?: string): string {
  if (err instanceof ApiError) return `HTTP ${err.status} ${err.reason}: ${err.message}`;
  const e = err as { name?: string; code?: string; message?: string } | null;
  if (e?.name === 'AbortError' || e?.name === 'TimeoutError') {
    return `no answer from ${server ?? 'the API server'} before the request deadline`;
  }
  const msg = String(e?.message ?? err).split('\n')[0]!;
  const code = e?.code && !msg.includes(e.code) ? ` (${e.code})` : '';
  return `${server ? `${server}: ` : ''}${msg}${code}`;
}
