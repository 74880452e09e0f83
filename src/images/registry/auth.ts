// Registry authentication (distribution-spec, docker's token flow): WWW-Authenticate challenges, Basic,
// and Bearer tokens from the challenge's realm, cached per registry and scope until they expire.
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import type { CredentialProvider, Credentials } from './credentials.ts';
import { errorFromNetwork, errorFromResponse, RegistryError, type ErrorContext } from './errors.ts';
import type { Transport } from './transport.ts';

export interface Challenge {
  /** Lowercase: "basic", "bearer". */
  scheme: string;
  /** Parameter names lowercase: realm, service, scope, error. */
  params: Record<string, string>;
}

/** Parses WWW-Authenticate (RFC 9110 §11.6.1): several challenges, quoted or bare parameter values. */
export function parseChallenges(header: string | string[] | undefined): Challenge[] {
  const texts = header === undefined ? [] : Array.isArray(header) ? header : [header];
  const out: Challenge[] = [];
  for (const text of texts) {
    let current: Challenge | undefined;
    let i = 0;
    const token = /[!#$%&'*+.^_`|~0-9A-Za-z-]+/y;
    while (i < text.length) {
      while (i < text.length && /[\s,]/.test(text[i]!)) i++;
      token.lastIndex = i;
      const m = token.exec(text);
      if (!m) break;
      i = token.lastIndex;
      let j = i;
      while (j < text.length && text[j] === ' ') j++;
      if (text[j] !== '=') {
        current = { scheme: m[0].toLowerCase(), params: {} };
        out.push(current);
        continue;
      }
      i = j + 1;
      while (i < text.length && text[i] === ' ') i++;
      let value = '';
      if (text[i] === '"') {
        i++;
        while (i < text.length && text[i] !== '"') {
          if (text[i] === '\\') i++;
          value += text[i] ?? '';
          i++;
        }
        i++;
      } else {
        while (i < text.length && text[i] !== ',' && text[i] !== ' ') value += text[i++];
      }
      if (current) current.params[m[0].toLowerCase()] = value;
    }
  }
  return out;
}

/** "repository:<name>:pull" or "…:pull,push": the token scope of an operation on a repository. */
export function repositoryScope(repository: string, actions: readonly ('pull' | 'push')[]): string {
  return `repository:${repository}:${actions.join(',')}`;
}

/** Unions the actions of scopes naming the same resource, so one token covers them; sorted, for cache keys. */
export function mergeScopes(scopes: readonly string[]): string[] {
  const byResource = new Map<string, Set<string>>();
  for (const scope of scopes) {
    const last = scope.lastIndexOf(':');
    if (last <= 0) continue;
    const resource = scope.slice(0, last);
    const actions = byResource.get(resource) ?? new Set<string>();
    for (const action of scope.slice(last + 1).split(',')) if (action) actions.add(action);
    byResource.set(resource, actions);
  }
  return [...byResource]
    .map(([resource, actions]) => `${resource}:${[...actions].sort().join(',')}`)
    .sort();
}

interface Token {
  value: string;
  expiresAt: number;
}

export interface AuthenticatorOptions {
  transport: Transport;
  credentials?: CredentialProvider;
  logger?: Logger;
  now?: () => number;
  /** How long looked-up credentials are reused (a credential helper is a process per lookup). Default 5 min. */
  credentialTtlMs?: number;
}

// The distribution spec's default when a token endpoint gives no expires_in.
const DEFAULT_TOKEN_SECONDS = 60;

export class Authenticator {
  private readonly challenges = new Map<string, Challenge>();
  private readonly tokens = new Map<string, Promise<Token>>();
  private readonly creds = new Map<string, { at: number; value: Promise<Credentials | undefined> }>();
  private readonly now: () => number;

  constructor(private readonly opts: AuthenticatorOptions) {
    this.now = opts.now ?? Date.now;
  }

  /**
   * The Authorization header for a request to registry with these scopes, once the registry has
   * challenged us; undefined before that (the first request goes out anonymous and learns the scheme).
   */
  async authorization(registry: string, repository: string, scopes: readonly string[], context: ErrorContext, signal?: AbortSignal): Promise<string | undefined> {
    const challenge = this.challenges.get(registry);
    if (!challenge) return undefined;
    const creds = await this.credentials(registry, repository);
    if (challenge.scheme === 'basic') {
      if (creds?.username === undefined) return undefined;
      return `Basic ${Buffer.from(`${creds.username}:${creds.password ?? ''}`).toString('base64')}`;
    }
    if (creds?.registryToken) return `Bearer ${creds.registryToken}`;
    const merged = mergeScopes(scopes);
    const key = `${registry} ${merged.join(' ')}`;
    let token = this.tokens.get(key);
    if (token) {
      const t = await token.catch(() => undefined);
      if (!t || t.expiresAt <= this.now()) token = undefined;
    }
    if (!token) {
      token = this.fetchToken(challenge, merged, creds, context, signal);
      this.tokens.set(key, token);
      void token.catch(() => this.tokens.delete(key));
    }
    return `Bearer ${(await token).value}`;
  }

  /**
   * A 401 came back: remember the challenge and drop what failed. Returns the scopes to retry with
   * (ours plus any the registry named), or undefined when a retry cannot help (no or refused credentials).
   */
  async unauthorized(
    registry: string,
    repository: string,
    header: string | string[] | undefined,
    scopes: readonly string[],
    sentAuthorization: string | undefined,
  ): Promise<string[] | undefined> {
    const challenges = parseChallenges(header);
    const challenge = challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic');
    if (!challenge) return undefined;
    this.challenges.set(registry, challenge);
    const creds = await this.credentials(registry, repository);
    if (challenge.scheme === 'basic') {
      if (creds?.username === undefined) return undefined;
      const basic = `Basic ${Buffer.from(`${creds.username}:${creds.password ?? ''}`).toString('base64')}`;
      return sentAuthorization === basic ? undefined : [...scopes];
    }
    if (creds?.registryToken && sentAuthorization === `Bearer ${creds.registryToken}`) return undefined;
    const wanted = mergeScopes([...scopes, ...(challenge.params.scope ?? '').split(' ').filter(Boolean)]);
    // The token we sent was refused (expired early, revoked, too narrow): the retry must get a fresh one.
    this.tokens.delete(`${registry} ${mergeScopes(scopes).join(' ')}`);
    this.tokens.delete(`${registry} ${wanted.join(' ')}`);
    return wanted;
  }

  /** Whether any credentials are known for registry (for the hint in an Unauthorized message). */
  async hasCredentials(registry: string, repository: string): Promise<boolean> {
    return (await this.credentials(registry, repository).catch(() => undefined)) !== undefined;
  }

  private credentials(registry: string, repository: string): Promise<Credentials | undefined> {
    if (!this.opts.credentials) return Promise.resolve(undefined);
    const key = `${registry}/${repository}`;
    const cached = this.creds.get(key);
    if (cached && this.now() - cached.at < (this.opts.credentialTtlMs ?? 300_000)) return cached.value;
    const value = this.opts.credentials.get(registry, repository);
    this.creds.set(key, { at: this.now(), value });
    void value.catch(() => this.creds.delete(key));
    return value;
  }

  private async fetchToken(
    challenge: Challenge,
    scopes: string[],
    creds: Credentials | undefined,
    context: ErrorContext,
    signal?: AbortSignal,
  ): Promise<Token> {
    const realm = challenge.params.realm;
    let url: URL;
    try {
      url = new URL(realm ?? '');
    } catch {
      throw new RegistryError({ reason: 'BadResponse', detail: `the registry's Bearer challenge has no usable realm (${realm ?? 'none'})`, context });
    }
    const service = challenge.params.service;
    let res: Dispatcher.ResponseData;
    try {
      if (creds?.identityToken) {
        // docker's OAuth2 flow for an identity token: POST a refresh_token grant to the realm.
        const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: 'vmlet' });
        if (service) form.set('service', service);
        if (scopes.length) form.set('scope', scopes.join(' '));
        res = await this.opts.transport.send(url.href, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: form.toString(),
          signal,
        });
      } else {
        if (service) url.searchParams.set('service', service);
        for (const scope of scopes) url.searchParams.append('scope', scope);
        const headers: Record<string, string> = {};
        if (creds?.username !== undefined) {
          headers.authorization = `Basic ${Buffer.from(`${creds.username}:${creds.password ?? ''}`).toString('base64')}`;
        }
        res = await this.opts.transport.send(url.href, { method: 'GET', headers, signal });
      }
    } catch (err) {
      throw errorFromNetwork(err, context, `token request to ${url.origin}${url.pathname}`);
    }
    const text = await res.body.text().catch(() => '');
    if (res.statusCode !== 200) throw errorFromResponse(res.statusCode, text, context, { what: `token server ${url.origin}` });
    let body: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      body = JSON.parse(text) as typeof body;
    } catch {
      throw new RegistryError({ reason: 'BadResponse', detail: `token server ${url.origin} answered something other than JSON`, context });
    }
    const value = typeof body.token === 'string' && body.token ? body.token : body.access_token;
    if (typeof value !== 'string' || !value) {
      throw new RegistryError({ reason: 'BadResponse', detail: `token server ${url.origin} answered without a token`, context });
    }
    const seconds = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_SECONDS;
    // Renew a little early: a token that expires in flight costs a 401 and a retry.
    const expiresAt = this.now() + seconds * 1000 - Math.min(10_000, seconds * 100);
    this.opts.logger?.debug({ realm: url.origin, scopes, expiresInSeconds: seconds }, 'registry token issued');
    return { value, expiresAt };
  }
}
