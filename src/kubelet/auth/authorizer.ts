// May this user do this to the node? As the kubelet 1.36 decides it (pkg/kubelet/server/auth.go): a request
// becomes `verb` on `nodes/<subresource>` named after the node, and a SubjectAccessReview at the API server
// answers (Webhook mode), or everything is allowed (AlwaysAllow). With fine-grained authorization (GA and
// locked on in 1.36) /pods, /runningpods, /healthz and /configz are checked on their own subresource
// first and fall back to `proxy`, so roles written for older kubelets keep working.
import type { UserInfo } from './authenticator.ts';
import { ExpiringCache, type Clock } from './cache.ts';

export interface RequestAttributes {
  user: UserInfo;
  verb: string;
  resource: 'nodes';
  name: string;
  subresource: string;
  apiVersion: 'v1';
  path: string;
}

export type Decision = 'allow' | 'deny' | 'no-opinion';

export interface Authorizer {
  /** Throws when no decision could be had (the API server did not answer): the request gets 500. */
  authorize(attrs: RequestAttributes): Promise<{ decision: Decision; reason: string }>;
}

/** The HTTP method as an API verb, as the kubelet maps it (HEAD reads like GET here; the kubelet leaves its verb empty). */
export function apiVerb(method: string | undefined): string {
  switch ((method ?? '').toUpperCase()) {
    case 'GET':
    case 'HEAD':
      return 'get';
    case 'POST':
      return 'create';
    case 'PUT':
      return 'update';
    case 'PATCH':
      return 'patch';
    case 'DELETE':
      return 'delete';
    default:
      return '';
  }
}

/** `path` is `prefix` or below it: "/stats" and "/stats/summary" are under "/stats/", "/statsx" is not. */
export function isSubpath(path: string, prefix: string): boolean {
  const base = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
  return path === base || (path.startsWith(base) && path[base.length] === '/');
}

/**
 * The subresources a request is checked against, in order: the first that is allowed lets it through.
 * An upgrade (exec, attach, portForward over SPDY or WebSocket) is checked like any request to its path:
 * POST (SPDY) is `create`, GET (WebSocket) is `get`, both on `nodes/proxy`.
 */
export function subresourcesFor(path: string): string[] {
  const subresources: string[] = [];
  if (isSubpath(path, '/pods')) subresources.push('pods');
  else if (isSubpath(path, '/healthz')) subresources.push('healthz');
  else if (isSubpath(path, '/configz')) subresources.push('configz');
  else if (isSubpath(path, '/runningpods/')) subresources.push('pods');

  if (isSubpath(path, '/stats/')) subresources.push('stats');
  else if (isSubpath(path, '/metrics')) subresources.push('metrics');
  else if (isSubpath(path, '/logs/')) subresources.push('log');
  else if (isSubpath(path, '/checkpoint/')) subresources.push('checkpoint');
  else if (isSubpath(path, '/statusz')) subresources.push('statusz');
  else if (isSubpath(path, '/flagz')) subresources.push('configz');
  else subresources.push('proxy');
  return subresources;
}

export function requestAttributes(nodeName: string, user: UserInfo, method: string | undefined, path: string): RequestAttributes[] {
  const verb = apiVerb(method);
  return subresourcesFor(path).map((subresource) => ({ user, verb, resource: 'nodes', name: nodeName, subresource, apiVersion: 'v1', path }));
}

export type AuthorizationOutcome = { allowed: true } | { allowed: false; status: 403 | 500; message: string; reason?: string };

/** The kubelet's filter: each attribute set in turn until one is allowed; the refusal in the kubelet's words. */
export async function authorizeAll(authorizer: Authorizer, attrs: readonly RequestAttributes[]): Promise<AuthorizationOutcome> {
  let reason: string | undefined;
  for (const a of attrs) {
    let verdict: { decision: Decision; reason: string };
    try {
      verdict = await authorizer.authorize(a);
    } catch (err) {
      return {
        allowed: false,
        status: 500,
        message: `Authorization error (user=${a.user.name}, verb=${a.verb}, resource=${a.resource}, subresource=${a.subresource})`,
        reason: (err as Error).message,
      };
    }
    if (verdict.decision === 'allow') return { allowed: true };
    reason ??= verdict.reason || undefined;
  }
  const first = attrs[0];
  if (!first) return { allowed: false, status: 403, message: 'Authorization error: could not determine attributes for request' };
  const subresources = attrs.map((a) => a.subresource).join(' ');
  return {
    allowed: false,
    status: 403,
    message: `Forbidden (user=${first.user.name}, verb=${first.verb}, resource=${first.resource}, subresource(s)=[${subresources}])\n`,
    ...(reason ? { reason } : {}),
  };
}

export class AlwaysAllowAuthorizer implements Authorizer {
  async authorize(): Promise<{ decision: Decision; reason: string }> {
    return { decision: 'allow', reason: '' };
  }
}

/** The spec of an authorization.k8s.io/v1 SubjectAccessReview, as the kubelet's webhook authorizer fills it. */
export interface SubjectAccessReviewSpec {
  user: string;
  uid?: string;
  groups?: string[];
  extra?: Record<string, string[]>;
  resourceAttributes: { verb: string; version: string; resource: string; subresource: string; name: string };
}

export interface SubjectAccessReviewStatus {
  allowed?: boolean;
  denied?: boolean;
  reason?: string;
  evaluationError?: string;
}

export interface WebhookAuthorizerOptions {
  /** Sends the SubjectAccessReview and returns its status; throws when the API server does not answer. */
  review: (spec: SubjectAccessReviewSpec) => Promise<SubjectAccessReviewStatus>;
  /** The kubelet's authorization.webhook.cacheAuthorizedTTL (5 min). */
  allowTtlMs?: number;
  /** The kubelet's authorization.webhook.cacheUnauthorizedTTL (30 s). */
  denyTtlMs?: number;
  maxEntries?: number;
  clock?: Clock;
}

export const DEFAULT_ALLOW_TTL_MS = 5 * 60_000;
export const DEFAULT_DENY_TTL_MS = 30_000;

export class WebhookAuthorizer implements Authorizer {
  private readonly cache: ExpiringCache<SubjectAccessReviewStatus>;

  constructor(private readonly opts: WebhookAuthorizerOptions) {
    // The apiserver's webhook authorizer keeps 8192 answers.
    this.cache = new ExpiringCache(opts.maxEntries ?? 8192, opts.clock ?? Date.now);
  }

  async authorize(attrs: RequestAttributes): Promise<{ decision: Decision; reason: string }> {
    const spec = reviewSpec(attrs);
    // The whole spec is the key, as in the apiserver: user, groups, extra and attributes.
    const status = await this.cache.getOrLoad(
      JSON.stringify(spec),
      () => this.opts.review(spec),
      (s) => (s.allowed && !s.denied ? (this.opts.allowTtlMs ?? DEFAULT_ALLOW_TTL_MS) : (this.opts.denyTtlMs ?? DEFAULT_DENY_TTL_MS)),
    );
    const reason = status.reason ?? '';
    if (status.allowed && status.denied) throw new Error('webhook subject access review returned both allow and deny response');
    if (status.denied) return { decision: 'deny', reason };
    if (status.allowed) return { decision: 'allow', reason };
    return { decision: 'no-opinion', reason };
  }
}

export function reviewSpec(attrs: RequestAttributes): SubjectAccessReviewSpec {
  const { user } = attrs;
  const spec: SubjectAccessReviewSpec = {
    user: user.name,
    resourceAttributes: { verb: attrs.verb, version: attrs.apiVersion, resource: attrs.resource, subresource: attrs.subresource, name: attrs.name },
  };
  if (user.uid) spec.uid = user.uid;
  if (user.groups.length > 0) spec.groups = user.groups;
  if (user.extra && Object.keys(user.extra).length > 0) spec.extra = user.extra;
  return spec;
}
