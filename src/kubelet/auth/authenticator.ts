// Who sent a request to the kubelet API, decided as the kubelet's delegating authenticator does:
// a client certificate that chains to the client CA bundle (user = CN, groups = O), else a bearer token
// (Authorization header, or a WebSocket subprotocol base64url.bearer.authorization.k8s.io.<token>)
// confirmed by a TokenReview at the API server, else — only when enabled — anonymous. Authenticated
// users get the group system:authenticated. A certificate or token that is presented but fails is a
// failure (401), never a fall-back to anonymous.
import { createHash, createHmac, randomBytes, X509Certificate } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { ExpiringCache, type Clock } from './cache.ts';

export interface UserInfo {
  name: string;
  uid?: string;
  groups: string[];
  extra?: Record<string, string[]>;
}

export const ANONYMOUS_USER = 'system:anonymous';
export const UNAUTHENTICATED_GROUP = 'system:unauthenticated';
export const AUTHENTICATED_GROUP = 'system:authenticated';
// The user.Info extra key under which the apiserver records which credential authenticated a request.
const CREDENTIAL_ID_KEY = 'authentication.kubernetes.io/credential-id';
const CLIENT_AUTH_EKU = '1.3.6.1.5.5.7.3.2';
const ANY_EKU = '2.5.29.37.0';
const BEARER_PROTOCOL_PREFIX = 'base64url.bearer.authorization.k8s.io.';
const MAX_CHAIN = 10;

/** What the authenticator reads from a request. */
export interface AuthInput {
  headers: IncomingHttpHeaders;
  /** The certificates the client presented, leaf first; empty when it presented none. */
  peerChain: X509Certificate[];
}

export type AuthResult =
  | { ok: true; user: UserInfo; method: 'x509' | 'token' | 'anonymous'; tokenFrom?: 'header' | 'websocket-protocol' }
  | { ok: false; reason: string };

/** The status part of an authentication.k8s.io/v1 TokenReview. */
export interface TokenReviewStatus {
  authenticated?: boolean;
  user?: { username?: string; uid?: string; groups?: string[]; extra?: Record<string, string[]> };
  audiences?: string[];
  error?: string;
}

export interface AuthenticatorOptions {
  /** The client CA bundle; undefined turns client-certificate authentication off (the kubelet's default). */
  clientCAs?: () => readonly X509Certificate[];
  /** Sends a TokenReview for the token; undefined turns token authentication off. */
  tokenReview?: (token: string) => Promise<TokenReviewStatus>;
  anonymous?: boolean;
  /** How long an authenticated token is remembered (the kubelet's authentication.webhook.cacheTTL, 2 min). */
  tokenSuccessTtlMs?: number;
  /** How long a refused token is remembered. */
  tokenFailureTtlMs?: number;
  maxCachedTokens?: number;
  clock?: Clock;
}

export const DEFAULT_TOKEN_SUCCESS_TTL_MS = 2 * 60_000;
export const DEFAULT_TOKEN_FAILURE_TTL_MS = 10_000;

type TokenVerdict = { ok: true; user: UserInfo } | { ok: false; reason: string };

export class Authenticator {
  private readonly tokens: ExpiringCache<TokenVerdict>;
  // Tokens are cache keys only as an HMAC under a per-process key: a memory dump does not give them away.
  private readonly hashKey = randomBytes(32);
  private readonly successTtl: number;
  private readonly failureTtl: number;

  constructor(private readonly opts: AuthenticatorOptions) {
    this.tokens = new ExpiringCache(opts.maxCachedTokens ?? 4096, opts.clock ?? Date.now);
    this.successTtl = opts.tokenSuccessTtlMs ?? DEFAULT_TOKEN_SUCCESS_TTL_MS;
    this.failureTtl = opts.tokenFailureTtlMs ?? DEFAULT_TOKEN_FAILURE_TTL_MS;
  }

  /** Authenticates a request of the kubelet API's HTTPS server; on success the token is removed from its headers. */
  async authenticateRequest(req: IncomingMessage): Promise<AuthResult> {
    const result = await this.authenticate({ headers: req.headers, peerChain: peerChain(req.socket as TLSSocket) });
    if (result.ok && result.tokenFrom) forgetToken(req, result.tokenFrom);
    return result;
  }

  async authenticate(input: AuthInput): Promise<AuthResult> {
    const failures: string[] = [];
    const roots = this.opts.clientCAs?.();
    if (roots && input.peerChain.length > 0) {
      const verified = verifyClientChain(input.peerChain, roots, new Date((this.opts.clock ?? Date.now)()));
      if (verified.ok) {
        const user = userFromCertificate(input.peerChain[0]!);
        if (user) return { ok: true, user: withAuthenticatedGroup(user), method: 'x509' };
        failures.push('the client certificate has no common name');
      } else {
        failures.push(verified.reason);
      }
    }
    if (this.opts.tokenReview) {
      const found = bearerToken(input.headers);
      if ('error' in found) {
        failures.push(found.error);
      } else if (found.token !== undefined) {
        let verdict: TokenVerdict;
        try {
          verdict = await this.reviewToken(found.token);
        } catch (err) {
          return { ok: false, reason: `token review failed: ${(err as Error).message}` };
        }
        if (verdict.ok) return { ok: true, user: withAuthenticatedGroup(verdict.user), method: 'token', tokenFrom: found.from };
        failures.push(verdict.reason);
      }
    }
    if (failures.length > 0) return { ok: false, reason: failures.join('; ') };
    if (this.opts.anonymous) return { ok: true, user: { name: ANONYMOUS_USER, groups: [UNAUTHENTICATED_GROUP] }, method: 'anonymous' };
    return { ok: false, reason: 'no client certificate or bearer token' };
  }

  private reviewToken(token: string): Promise<TokenVerdict> {
    const key = createHmac('sha256', this.hashKey).update(token).digest('base64');
    return this.tokens.getOrLoad(
      key,
      async () => {
        const status = await this.opts.tokenReview!(token);
        if (status.authenticated && status.user?.username) {
          const u = status.user;
          const user: UserInfo = { name: u.username!, groups: u.groups ?? [] };
          if (u.uid) user.uid = u.uid;
          if (u.extra && Object.keys(u.extra).length > 0) user.extra = u.extra;
          return { ok: true, user };
        }
        return { ok: false, reason: status.error ? `invalid bearer token: ${status.error}` : 'invalid bearer token' };
      },
      (verdict) => (verdict.ok ? this.successTtl : this.failureTtl),
    );
  }
}

/** The certificates the TLS client presented, leaf first (the chain as sent, in order). */
export function peerChain(socket: TLSSocket | undefined): X509Certificate[] {
  if (!socket || typeof socket.getPeerCertificate !== 'function') return [];
  const chain: X509Certificate[] = [];
  let cert: PeerCertificate | undefined = socket.getPeerCertificate(true);
  const seen = new Set<string>();
  while (cert && cert.raw && chain.length < MAX_CHAIN) {
    const fingerprint = cert.fingerprint256;
    if (seen.has(fingerprint)) break;
    seen.add(fingerprint);
    chain.push(new X509Certificate(cert.raw));
    const next: PeerCertificate | undefined = (cert as { issuerCertificate?: PeerCertificate }).issuerCertificate;
    cert = next === cert ? undefined : next;
  }
  return chain;
}

export type ChainVerdict = { ok: true; chain: X509Certificate[] } | { ok: false; reason: string };

/**
 * Go's x509 Verify with the client-auth key usage, as the apiserver's x509 authenticator calls it: a chain
 * from the leaf through the presented intermediates to one of `roots`, each signature checked, each
 * certificate valid at `now`, issuers marked as CAs, and every certificate that lists extended key usages
 * allowing client authentication.
 */
export function verifyClientChain(presented: readonly X509Certificate[], roots: readonly X509Certificate[], now: Date): ChainVerdict {
  const leaf = presented[0];
  if (!leaf) return { ok: false, reason: 'no client certificate' };
  const intermediates = presented.slice(1);
  const chain: X509Certificate[] = [leaf];
  let current = leaf;
  for (;;) {
    const problem = validityProblem(current, now) ?? usageProblem(current);
    if (problem) return { ok: false, reason: `${describe(leaf)}: ${problem}` };
    if (roots.some((r) => r.raw.equals(current.raw))) return { ok: true, chain };
    const root = roots.find((r) => issues(r, current));
    if (root) {
      const rootProblem = validityProblem(root, now) ?? usageProblem(root);
      if (rootProblem) return { ok: false, reason: `${describe(leaf)}: ${rootProblem} (client CA ${root.subject.replace(/\n/g, ', ')})` };
      chain.push(root);
      return { ok: true, chain };
    }
    const next = intermediates.find((c) => !chain.includes(c) && issues(c, current));
    if (!next || chain.length >= MAX_CHAIN) return { ok: false, reason: `${describe(leaf)}: x509: certificate signed by unknown authority` };
    chain.push(next);
    current = next;
  }
}

function issues(issuer: X509Certificate, child: X509Certificate): boolean {
  try {
    return issuer.ca && child.checkIssued(issuer) && child.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

function validityProblem(cert: X509Certificate, now: Date): string | undefined {
  const from = new Date(cert.validFrom);
  const to = new Date(cert.validTo);
  if (now < from) return `x509: certificate has expired or is not yet valid: current time ${now.toISOString()} is before ${from.toISOString()}`;
  if (now > to) return `x509: certificate has expired or is not yet valid: current time ${now.toISOString()} is after ${to.toISOString()}`;
  return undefined;
}

function usageProblem(cert: X509Certificate): string | undefined {
  const usages = cert.keyUsage as string[] | undefined;
  if (!usages || usages.length === 0 || usages.includes(CLIENT_AUTH_EKU) || usages.includes(ANY_EKU)) return undefined;
  return 'x509: certificate specifies an incompatible key usage';
}

// How the apiserver names a certificate in its errors: serial, subject and authority key IDs.
function describe(cert: X509Certificate): string {
  return `verifying certificate SN=${BigInt(`0x${cert.serialNumber}`).toString()} (${cert.subject.replace(/\n/g, ', ')})`;
}

/** User = CN, groups = O, UID from the subject's UID attribute, and the certificate's SHA-256 as credential ID. */
export function userFromCertificate(cert: X509Certificate): UserInfo | undefined {
  const subject = cert.toLegacyObject().subject as unknown as Record<string, string | string[] | undefined>;
  const list = (v: string | string[] | undefined) => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
  const cn = list(subject.CN)[0];
  if (!cn) return undefined;
  const user: UserInfo = {
    name: cn,
    groups: list(subject.O),
    extra: { [CREDENTIAL_ID_KEY]: [`X509SHA256=${createHash('sha256').update(cert.raw).digest('hex')}`] },
  };
  const uid = list(subject.UID)[0];
  if (uid) user.uid = uid;
  return user;
}

/** The bearer token of a request: `Authorization: Bearer <token>`, else a WebSocket subprotocol carrying it. */
export function bearerToken(headers: IncomingHttpHeaders): { token?: string; from?: 'header' | 'websocket-protocol' } | { error: string } {
  const auth = (headers.authorization ?? '').trim();
  if (auth) {
    const parts = auth.split(' ');
    if (parts.length >= 2 && parts[0]!.toLowerCase() === 'bearer' && parts[1]) return { token: parts[1], from: 'header' };
  }
  if (!isWebSocket(headers)) return {};
  const tokens = protocols(headers).filter((p) => p.startsWith(BEARER_PROTOCOL_PREFIX));
  if (tokens.length === 0) return {};
  if (tokens.length > 1) return { error: 'multiple base64.bearer.authorization tokens specified' };
  const encoded = tokens[0]!.slice(BEARER_PROTOCOL_PREFIX.length);
  if (!/^[A-Za-z0-9_-]+$/.test(encoded)) return { error: 'invalid base64.bearer.authorization token encoding' };
  const token = Buffer.from(encoded, 'base64url').toString('utf8');
  if (!token) return { error: 'invalid bearer token' };
  return { token, from: 'websocket-protocol' };
}

function isWebSocket(headers: IncomingHttpHeaders): boolean {
  const connection = (headers.connection ?? '').toLowerCase().split(',').map((s) => s.trim());
  return connection.includes('upgrade') && (headers.upgrade ?? '').toLowerCase() === 'websocket';
}

function protocols(headers: IncomingHttpHeaders): string[] {
  const value: string | string[] | undefined = headers['sec-websocket-protocol'];
  const all: string[] = Array.isArray(value) ? value : value ? [value] : [];
  return all.flatMap((v) => v.split(',')).map((p) => p.trim()).filter(Boolean);
}

// Handlers never see the credential, so nothing downstream can echo or forward it (the apiserver does the same).
function forgetToken(req: IncomingMessage, from: 'header' | 'websocket-protocol'): void {
  if (from === 'header') {
    delete req.headers.authorization;
    stripRaw(req, (name) => name === 'authorization');
    return;
  }
  const kept = protocols(req.headers).filter((p) => !p.startsWith(BEARER_PROTOCOL_PREFIX));
  if (kept.length > 0) req.headers['sec-websocket-protocol'] = kept.join(',');
  else delete req.headers['sec-websocket-protocol'];
  stripRaw(req, (name) => name === 'sec-websocket-protocol');
  if (kept.length > 0) req.rawHeaders.push('Sec-WebSocket-Protocol', kept.join(','));
}

function stripRaw(req: IncomingMessage, drop: (lowerName: string) => boolean): void {
  const raw = req.rawHeaders;
  const kept: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) if (!drop(raw[i]!.toLowerCase())) kept.push(raw[i]!, raw[i + 1]!);
  raw.splice(0, raw.length, ...kept);
}

function withAuthenticatedGroup(user: UserInfo): UserInfo {
  if (user.name === ANONYMOUS_USER || user.groups.includes(AUTHENTICATED_GROUP) || user.groups.includes(UNAUTHENTICATED_GROUP)) return user;
  return { ...user, groups: [...user.groups, AUTHENTICATED_GROUP] };
}
