// The HTTP layer under the registry client: one undici Agent (system CAs plus extra PEMs, connect
// deadline), which registries are spoken to over plain HTTP, and one request with stall deadlines.
import { rootCertificates } from 'node:tls';
import type { Readable } from 'node:stream';
import { Agent, request, type Dispatcher } from 'undici';
import type { Logger } from 'pino';
import { errorCode } from './errors.ts';

export interface TransportOptions {
  /** CA certificates (PEM) trusted in addition to the system's, e.g. a private registry's. */
  caPems?: string[];
  /** Registries (host[:port]) spoken to over plain HTTP only. */
  plainHttpRegistries?: string[];
  /**
   * Loopback registries (localhost, 127.0.0.0/8, [::1]) may answer in plain HTTP: HTTPS is tried first
   * and, when the handshake fails for a reason other than the certificate, plain HTTP. Default true.
   */
  allowLoopbackPlainHttp?: boolean;
  /** TCP + TLS connect deadline. Default 30 s. */
  connectTimeoutMs?: number;
  /** No response headers, or no body bytes, for this long: the request has stalled. Default 60 s. */
  stallTimeoutMs?: number;
  /** Use this dispatcher instead of an own Agent (its TLS settings then apply; caPems and connectTimeoutMs do not). */
  dispatcher?: Dispatcher;
  userAgent?: string;
  logger?: Logger;
}

export interface SendInit {
  method: Dispatcher.HttpMethod;
  headers?: Record<string, string>;
  body?: string | Buffer | Readable;
  signal?: AbortSignal;
  /** Overrides the body stall deadline (0: none, the caller watches the body itself). */
  bodyTimeoutMs?: number;
}

type Scheme = 'http' | 'https';

export class Transport {
  readonly dispatcher: Dispatcher;
  readonly stallTimeoutMs: number;
  private readonly ownsDispatcher: boolean;
  private readonly plainHttp: Set<string>;
  private readonly schemes = new Map<string, Promise<Scheme>>();

  constructor(private readonly opts: TransportOptions = {}) {
    this.stallTimeoutMs = opts.stallTimeoutMs ?? 60_000;
    this.plainHttp = new Set((opts.plainHttpRegistries ?? []).map((h) => h.toLowerCase()));
    this.ownsDispatcher = opts.dispatcher === undefined;
    this.dispatcher =
      opts.dispatcher ??
      new Agent({
        connect: {
          // `ca` replaces Node's bundled roots, so an extra CA has to bring them along.
          ...(opts.caPems?.length ? { ca: [...rootCertificates, ...opts.caPems] } : {}),
          timeout: opts.connectTimeoutMs ?? 30_000,
        },
      });
  }

  /** "https://host[:port]" or "http://…" for a registry; probes a loopback registry once. */
  async origin(registry: string): Promise<string> {
    const host = registry.toLowerCase();
    let scheme = this.schemes.get(host);
    if (!scheme) {
      scheme = this.decideScheme(host);
      this.schemes.set(host, scheme);
    }
    return `${await scheme}://${registry}`;
  }

  private async decideScheme(host: string): Promise<Scheme> {
    if (this.plainHttp.has(host)) return 'http';
    if (!(this.opts.allowLoopbackPlainHttp ?? true) || !isLoopback(host)) return 'https';
    const answers = async (scheme: Scheme): Promise<unknown> => {
      try {
        const res = await this.send(`${scheme}://${host}/v2/`, { method: 'GET' });
        await res.body.dump();
        return undefined;
      } catch (err) {
        return err;
      }
    };
    const httpsError = await answers('https');
    // An HTTPS answer of any status, or a certificate we do not trust, means the registry speaks TLS.
    if (httpsError === undefined || /CERT|SELF_SIGNED|UNABLE_TO/.test(errorCode(httpsError) ?? '')) return 'https';
    if ((await answers('http')) === undefined) {
      this.opts.logger?.info({ registry: host }, 'loopback registry answers in plain HTTP');
      return 'http';
    }
    // Neither answered (down?): decide again next time instead of remembering a guess.
    this.schemes.delete(host);
    return 'https';
  }

  /** One HTTP request; the response body must be consumed or dumped by the caller. */
  send(url: string, init: SendInit): Promise<Dispatcher.ResponseData> {
    return request(url, {
      dispatcher: this.dispatcher,
      method: init.method,
      headers: { 'user-agent': this.opts.userAgent ?? 'vmlet', ...init.headers },
      body: init.body,
      signal: init.signal,
      headersTimeout: this.stallTimeoutMs,
      bodyTimeout: init.bodyTimeoutMs ?? this.stallTimeoutMs,
    });
  }

  async close(): Promise<void> {
    if (this.ownsDispatcher) await this.dispatcher.close();
  }
}

export function isLoopback(host: string): boolean {
  const name = host.replace(/:\d+$/, '').toLowerCase();
  return name === 'localhost' || name === '[::1]' || name === '::1' || /^127(?:\.\d{1,3}){3}$/.test(name);
}
