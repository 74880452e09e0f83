// The HTTP layer under every Kubernetes API call: node:https with a keep-alive agent built from the
// kubeconfig's TLS material, bearer/basic/exec credentials, JSON in and out, a deadline per request, and
// API errors carrying the server's Status (code, reason, message). Watches get the raw response stream.
import http from 'node:http';
import https from 'node:https';
import type { ClusterAccess } from './kubeconfig.ts';

/** An answer from the API server with an error status; `reason` is the Status reason (NotFound, Conflict...). */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

export interface RequestOptions {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  path: string;
  query?: Record<string, string | undefined>;
  body?: unknown;
  contentType?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export class KubeHttp {
  readonly server: string;
  private agent: http.Agent;
  private agentCert?: string;

  constructor(private readonly access: ClusterAccess) {
    this.server = access.server;
    this.agent = this.makeAgent(access.cert, access.key);
  }

  /** Sends one request and parses the JSON answer; throws ApiError for an error status. */
  async request<T>(opts: RequestOptions): Promise<T> {
    const res = await this.send(opts);
    const text = await readText(res);
    if (res.statusCode! >= 400) throw apiError(res.statusCode!, text, opts);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  /** Opens a streaming GET (a watch); the caller reads and destroys the response. Error statuses throw. */
  async stream(path: string, query: Record<string, string>, signal: AbortSignal): Promise<http.IncomingMessage> {
    const res = await this.send({ method: 'GET', path, query, signal });
    if (res.statusCode! >= 400) throw apiError(res.statusCode!, await readText(res), { method: 'GET', path });
    return res;
  }

  close(): void {
    this.agent.destroy();
  }

  /**
   * Authenticates with another client certificate from now on (a rotated one). Open connections,
   * watches included, are closed, as the kubelet does on rotation: the next requests present the new one.
   */
  setClientCertificate(cert: Buffer, key: Buffer): void {
    this.access.cert = cert;
    this.access.key = key;
    const old = this.agent;
    this.agent = this.makeAgent(cert, key);
    old.destroy();
  }

  private async send(opts: RequestOptions, retried = false): Promise<http.IncomingMessage> {
    const url = new URL(this.server + opts.path);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.set(k, v);
    const headers: Record<string, string> = { accept: 'application/json', 'user-agent': 'vmlet' };
    await this.authenticate(headers);
    let payload: Buffer | undefined;
    if (opts.body !== undefined) {
      payload = Buffer.from(JSON.stringify(opts.body));
      headers['content-type'] = opts.contentType ?? 'application/json';
      headers['content-length'] = String(payload.length);
    }
    const signals = [opts.signal, opts.timeoutMs ? AbortSignal.timeout(opts.timeoutMs) : undefined].filter((s): s is AbortSignal => !!s);
    const signal = signals.length > 1 ? AbortSignal.any(signals) : signals[0];
    const lib = url.protocol === 'http:' ? http : https;
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = lib.request(url, { method: opts.method, headers, agent: this.agent, signal }, resolve);
      req.on('error', reject);
      req.end(payload);
    });
    // An exec plugin's credential may have been revoked before it expired: ask it again, once.
    if (res.statusCode === 401 && this.access.exec && !retried) {
      res.resume();
      this.access.exec.invalidate();
      return this.send(opts, true);
    }
    return res;
  }

  private async authenticate(headers: Record<string, string>): Promise<void> {
    const { access } = this;
    if (access.exec) {
      const cred = await access.exec.credential();
      if (cred.clientCertificateData && cred.clientKeyData && cred.clientCertificateData !== this.agentCert) {
        this.agent.destroy();
        this.agent = this.makeAgent(Buffer.from(cred.clientCertificateData), Buffer.from(cred.clientKeyData));
        this.agentCert = cred.clientCertificateData;
      }
    }
    const token = await access.token?.();
    if (token) headers.authorization = `Bearer ${token}`;
    else if (access.basic) headers.authorization = `Basic ${Buffer.from(`${access.basic.username}:${access.basic.password}`).toString('base64')}`;
  }

  private makeAgent(cert: Buffer | undefined, key: Buffer | undefined): http.Agent {
    const { access } = this;
    if (access.server.startsWith('http:')) return new http.Agent({ keepAlive: true });
    return new https.Agent({
      keepAlive: true,
      ca: access.ca,
      cert,
      key,
      rejectUnauthorized: !access.insecureSkipTLSVerify,
      ...(access.tlsServerName ? { servername: access.tlsServerName } : {}),
    });
  }
}

async function readText(res: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of res) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function apiError(status: number, text: string, opts: Pick<RequestOptions, 'method' | 'path'>): ApiError {
  let reason = http.STATUS_CODES[status]?.replace(/\s/g, '') ?? 'Unknown';
  let message = text.slice(0, 300) || `${opts.method} ${opts.path}`;
  try {
    const s = JSON.parse(text) as { kind?: string; reason?: string; message?: string };
    if (s.kind === 'Status') {
      reason = s.reason || reason;
      message = s.message || message;
    }
  } catch {
    // not a Status: keep the text
  }
  return new ApiError(status, reason, message);
}
