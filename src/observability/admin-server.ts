// The local admin endpoint: /healthz (the process serves), /readyz (registered and heartbeating) and
// /metrics (Prometheus). Plain HTTP, meant for loopback; the kubelet API on :10250 is a separate server.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

export interface ReadinessCheck {
  name: string;
  /** Returns null when ready, else the reason it is not. */
  check(): string | null;
}

export class AdminServer {
  private server?: http.Server;

  constructor(
    private readonly registry: Registry,
    private readonly checks: ReadinessCheck[],
  ) {}

  /** Listens on `host:port`; port 0 picks a free one. Returns the bound address. */
  async start(address: string): Promise<AddressInfo> {
    const { host, port } = splitHostPort(address);
    const server = http.createServer((req, res) => void this.handle(req, res));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return server.address() as AddressInfo;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'method not allowed\n');
    switch (url.pathname) {
      case '/healthz':
      case '/livez':
        return send(res, 200, 'ok\n');
      case '/readyz': {
        const failing = this.checks.map((c) => [c.name, c.check()] as const).filter(([, reason]) => reason !== null);
        if (failing.length === 0) return send(res, 200, 'ok\n');
        return send(res, 503, failing.map(([name, reason]) => `[-]${name} failed: ${reason}`).join('\n') + '\n');
      }
      case '/metrics':
        try {
          const body = await this.registry.metrics();
          res.setHeader('content-type', this.registry.contentType);
          return send(res, 200, body);
        } catch (err) {
          return send(res, 500, `${(err as Error).message}\n`);
        }
      default:
        return send(res, 404, 'not found\n');
    }
  }
}

function send(res: http.ServerResponse, status: number, body: string): void {
  if (!res.hasHeader('content-type')) res.setHeader('content-type', 'text/plain; charset=utf-8');
  res.writeHead(status);
  res.end(body);
}

/** Splits "host:port", "[::1]:port" or ":port". */
export function splitHostPort(address: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(address);
  if (!m) throw new Error(`"${address}" is not host:port`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`"${address}" has a port above 65535`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}
