// Minimal HTTPS client for the harness's own readiness probes and metrics scrapes: undici with the
// test CA pinned and, for the apiserver, the admin client certificate.
import { Agent, request } from 'undici';

export interface TlsIdentity {
  ca: string;
  cert?: string;
  key?: string;
}

export interface HttpResponse {
  status: number;
  body: string;
}

/** An undici Agent that trusts only the given CA and presents the client certificate, if any. */
export function tlsAgent(tls: TlsIdentity): Agent {
  return new Agent({ connect: { ca: tls.ca, cert: tls.cert, key: tls.key } });
}

/** GET url and read the whole body; a short per-request timeout keeps polling loops responsive. */
export async function httpGet(
  url: string,
  opts: { agent?: Agent; headers?: Record<string, string>; timeoutMs?: number } = {},
): Promise<HttpResponse> {
  const timeout = opts.timeoutMs ?? 10_000;
  const res = await request(url, {
    method: 'GET',
    headers: opts.headers,
    dispatcher: opts.agent,
    headersTimeout: timeout,
    bodyTimeout: timeout,
  });
  return { status: res.statusCode, body: await res.body.text() };
}
