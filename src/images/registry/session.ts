// One registry request as every operation needs it: the registry's origin, the Authorization header
// for the operation's scopes, one retry with fresh credentials after a 401, redirects (credentials
// only ever go to the registry's own origin), and retries of transient failures.
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import type { Authenticator } from './auth.ts';
import { errorFromNetwork, errorFromResponse, RegistryError, type ErrorContext } from './errors.ts';
import type { ImageRef } from './reference.ts';
import { parseRetryAfter, RetryState, type RetryPolicy } from './retry.ts';
import type { Transport } from './transport.ts';

export interface CallRequest {
  method: Dispatcher.HttpMethod;
  ref: ImageRef;
  /** A path under the registry ("/v2/…") or an absolute URL (an upload Location). */
  path: string;
  scopes: readonly string[];
  headers?: Record<string, string>;
  /** Called once per attempt, so a retried request sends its body again from the start. */
  body?: () => Buffer | Readable;
  /** Statuses handed back to the caller; any other becomes a RegistryError. */
  ok: readonly number[];
  followRedirects?: boolean;
  /** Retry transient failures (only for requests that are safe to repeat). */
  retry?: boolean;
  context: ErrorContext;
  signal?: AbortSignal;
  bodyTimeoutMs?: number;
}

export interface CallResponse {
  status: number;
  headers: Dispatcher.ResponseData['headers'];
  body: Dispatcher.ResponseData['body'];
  /** The URL that answered, after redirects: relative Locations resolve against it. */
  url: URL;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 5;
const ERROR_BODY_LIMIT = 64 * 1024;

export class Session {
  constructor(
    readonly transport: Transport,
    readonly auth: Authenticator,
    readonly retryPolicy: RetryPolicy,
    readonly logger?: Logger,
  ) {}

  async call(req: CallRequest): Promise<CallResponse> {
    const retry = new RetryState(this.retryPolicy);
    for (;;) {
      try {
        return await this.once(req);
      } catch (err) {
        if (!req.retry) throw err;
        await retry.failed(err, req.signal, (delayMs, e) =>
          this.logger?.warn({ image: req.context.image, reason: e.reason, delayMs }, `registry request failed, retrying: ${e.message}`),
        );
      }
    }
  }

  private async once(req: CallRequest): Promise<CallResponse> {
    const origin = await this.transport.origin(req.ref.registry);
    let url = new URL(req.path, origin);
    let scopes = req.scopes;
    let reauthorized = false;
    let redirects = 0;
    for (;;) {
      const ours = url.origin === new URL(origin).origin;
      const authorization = ours
        ? await this.auth.authorization(req.ref.registry, req.ref.repository, scopes, req.context, req.signal)
        : undefined;
      let res: Dispatcher.ResponseData;
      try {
        res = await this.transport.send(url.href, {
          method: req.method,
          headers: { ...req.headers, ...(authorization && { authorization }) },
          body: req.body?.(),
          signal: req.signal,
          bodyTimeoutMs: req.bodyTimeoutMs,
        });
      } catch (err) {
        throw errorFromNetwork(err, req.context, `${req.method} ${url.origin}${url.pathname}`);
      }
      // Origin and path only: a storage redirect's query can hold a pre-signed credential.
      this.logger?.trace({ method: req.method, url: `${url.origin}${url.pathname}`, status: res.statusCode }, 'registry request');
      if (res.statusCode === 401 && ours && !reauthorized) {
        const text = await readLimited(res.body, ERROR_BODY_LIMIT);
        const retryScopes = await this.auth.unauthorized(
          req.ref.registry,
          req.ref.repository,
          res.headers['www-authenticate'],
          scopes,
          authorization,
        );
        if (retryScopes) {
          reauthorized = true;
          scopes = retryScopes;
          continue;
        }
        throw await this.unauthorizedError(req, text);
      }
      if (REDIRECTS.has(res.statusCode) && req.followRedirects) {
        await res.body.dump();
        const location = header(res.headers, 'location');
        if (!location || ++redirects > MAX_REDIRECTS) {
          throw new RegistryError({
            reason: 'BadResponse',
            detail: location ? `more than ${MAX_REDIRECTS} redirects` : `redirect ${res.statusCode} without a Location`,
            context: req.context,
          });
        }
        url = new URL(location, url);
        this.logger?.debug({ to: url.origin }, 'registry redirect');
        continue;
      }
      if (req.ok.includes(res.statusCode)) return { status: res.statusCode, headers: res.headers, body: res.body, url };
      const text = await readLimited(res.body, ERROR_BODY_LIMIT);
      if (res.statusCode === 401 && ours) throw await this.unauthorizedError(req, text);
      throw errorFromResponse(res.statusCode, text, req.context, {
        retryAfterMs: parseRetryAfter(res.headers['retry-after']),
        what: ours ? 'registry' : `storage ${url.origin}`,
      });
    }
  }

  private async unauthorizedError(req: CallRequest, body: string): Promise<RegistryError> {
    const has = await this.auth.hasCredentials(req.ref.registry, req.ref.repository);
    const hint = has ? 'the credentials were refused or lack access' : `no credentials for ${req.ref.registry}`;
    return errorFromResponse(401, body, req.context, { hint });
  }
}

/** One response header as a string (the first, if repeated). */
export function header(headers: Dispatcher.ResponseData['headers'], name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** Reads at most limit bytes of a body as text, and discards the rest. */
export async function readLimited(body: Dispatcher.ResponseData['body'], limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let length = 0;
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      chunks.push(chunk);
      length += chunk.length;
      if (length >= limit) break;
    }
  } catch {
    // A body that breaks while we read an error message: the status says enough.
  } finally {
    discard(body);
  }
  return Buffer.concat(chunks).subarray(0, limit).toString('utf8');
}

/**
 * Drops a response body we will not read (further). undici reports destroying an unfinished body as
 * an 'error' event, which would be an uncaught exception without a listener.
 */
export function discard(body: Readable): void {
  body.on('error', () => {});
  body.destroy();
}
