// Probe and lifecycle handlers against real servers on 127.0.0.1 (HTTP, HTTPS with a self-signed
// certificate, a gRPC health server over HTTP/2, closed ports, servers that hang). The container's network
// is stood in by net.connect to 127.0.0.1 (the VM agent's connectPort makes the same connection in the
// guest); exec by a fake that answers from a script.
import type { V1LifecycleHandler } from '@kubernetes/client-node';
import assert from 'node:assert/strict';
import http, { type IncomingHttpHeaders } from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { generateSelfSigned } from '../../../src/kubelet/auth/tls.ts';
import {
  HOOK_FAILURE, ProbeTargetUnavailable, hookFailureMessage, kubeUserAgent, podDescription, runHandler, runProbe,
  type ProbeContainer, type ProbeTarget,
} from '../../../src/runtime/probes/handlers.ts';

type ExecScript = (argv: string[], timeoutMs: number) => Promise<{ exitCode: number; stdout: string; stderr: string }>;

interface LocalTarget extends ProbeTarget {
  connects: number[];
  execs: string[][];
}

function localTarget(exec: ExecScript = async () => ({ exitCode: 0, stdout: '', stderr: '' })): LocalTarget {
  const t: LocalTarget = {
    podIP: '127.0.0.1',
    connects: [],
    execs: [],
    exec: (argv, timeoutMs) => {
      t.execs.push(argv);
      return exec(argv, timeoutMs);
    },
    connect: (port) => {
      t.connects.push(port);
      return new Promise<Duplex>((resolve, reject) => {
        const s = net.connect(port, '127.0.0.1');
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    },
  };
  return t;
}

const unavailable: ProbeTarget = {
  exec: () => Promise.reject(new ProbeTargetUnavailable('the VM agent is not connected')),
  connect: () => Promise.reject(new ProbeTargetUnavailable('the VM agent is not connected')),
};

const container: ProbeContainer = {
  name: 'app',
  ports: [{ name: 'web', containerPort: 0 }],
  env: [{ name: 'GREETING', value: 'hello' }, { name: 'TOKEN', valueFrom: { secretKeyRef: { name: 's', key: 'k' } } }],
};

function withPort(port: number): ProbeContainer {
  return { ...container, ports: [{ name: 'web', containerPort: port }] };
}

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as net.AddressInfo).port;
}

async function closedPort(): Promise<number> {
  const s = net.createServer();
  const port = await listen(s);
  await new Promise((resolve) => s.close(resolve));
  return port;
}

async function timed<T>(p: Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = Date.now();
  const value = await p;
  return { value, ms: Date.now() - t0 };
}

const servers: net.Server[] = [];
function track<S extends net.Server>(s: S): S {
  servers.push(s);
  return s;
}
after(() => {
  for (const s of servers) {
    if ('closeAllConnections' in s && typeof s.closeAllConnections === 'function') (s as http.Server).closeAllConnections();
    s.close();
  }
});

// ----- exec -----

describe('exec probes', () => {
  test('exit 0 is success; a non-zero exit is failure with stdout and stderr as the message', async () => {
    const ok = await runProbe({ exec: { command: ['true'] } }, localTarget(async () => ({ exitCode: 0, stdout: 'fine\n', stderr: '' })), container);
    assert.deepEqual(ok, { result: 'success', message: 'fine\n' });
    const bad = await runProbe({ exec: { command: ['check'] } }, localTarget(async () => ({ exitCode: 3, stdout: 'out ', stderr: 'err' })), container);
    assert.deepEqual(bad, { result: 'failure', message: 'out err' });
  });

  test('$(VAR) in the command expands against the container env, valueFrom variables as empty, $$ as $', async () => {
    const target = localTarget();
    await runProbe({ exec: { command: ['echo', '$(GREETING)', '[$(TOKEN)]', '$(MISSING)', '$$(GREETING)'] } }, target, container);
    assert.deepEqual(target.execs[0], ['echo', 'hello', '[]', '$(MISSING)', '$(GREETING)']);
  });

  test('the output kept is capped at 10 KiB', async () => {
    const r = await runProbe({ exec: { command: ['x'] } }, localTarget(async () => ({ exitCode: 1, stdout: 'a'.repeat(50_000), stderr: '' })), container);
    assert.equal(r.message.length, 10 * 1024);
  });

  test('a command running past timeoutSeconds fails as "command ... timed out", at the deadline', async () => {
    let given = 0;
    const target = localTarget((_argv, timeoutMs) => {
      given = timeoutMs;
      return new Promise(() => undefined);
    });
    const { value, ms } = await timed(runProbe({ exec: { command: ['sh', '-c', 'sleep 60'] }, timeoutSeconds: 1 }, target, container));
    assert.deepEqual(value, { result: 'failure', message: 'command "sh -c sleep 60" timed out' });
    assert.equal(given, 1000);
    assert.ok(ms >= 950 && ms < 3000, `${ms} ms`);
  });

  test('a target that cannot run the command gives unknown, not failure', async () => {
    assert.equal((await runProbe({ exec: { command: ['true'] } }, unavailable, container)).result, 'unknown');
    const broken = localTarget(() => Promise.reject(new Error('exec failed: no such file')));
    assert.deepEqual(await runProbe({ exec: { command: ['nope'] } }, broken, container), { result: 'unknown', message: 'exec failed: no such file' });
  });
});

// ----- httpGet -----

describe('httpGet probes', () => {
  let port = 0;
  let slowPort = 0;
  const seen: { url: string; headers: IncomingHttpHeaders; rawHeaders: string[] }[] = [];
  before(async () => {
    const server = track(http.createServer((req, res) => {
      seen.push({ url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders });
      const u = new URL(req.url ?? '/', 'http://x');
      switch (u.pathname) {
        case '/healthz': res.end('ok'); break;
        case '/fail': res.writeHead(500).end('broken inside'); break;
        case '/big': res.end('b'.repeat(100_000)); break;
        case '/hop': res.writeHead(302, { location: '/healthz' }).end(); break;
        case '/hop-port': res.writeHead(307, { location: `http://127.0.0.1:${port}/healthz?via=abs` }).end(); break;
        case '/away': res.writeHead(301, { location: 'http://elsewhere.example/' }).end('moved away'); break;
        case '/loop': res.writeHead(302, { location: `/loop?n=${Number(u.searchParams.get('n') ?? 0) + 1}` }).end(); break;
        default: res.writeHead(404).end();
      }
    }));
    port = await listen(server);
    const slow = track(http.createServer(() => undefined));
    slowPort = await listen(slow);
  });

  test('a 2xx answer is success; the request carries kube-probe/1.36, Accept */*, the path and query, and no keep-alive', async () => {
    seen.length = 0;
    const r = await runProbe({ httpGet: { port, path: '/healthz?deep=1' } }, localTarget(), container);
    assert.deepEqual(r, { result: 'success', message: 'ok' });
    const req = seen[0]!;
    assert.equal(req.url, '/healthz?deep=1');
    assert.equal(req.headers['user-agent'], 'kube-probe/1.36');
    assert.equal(kubeUserAgent('probe'), 'kube-probe/1.36');
    assert.equal(req.headers.accept, '*/*');
    assert.equal(req.headers.host, `127.0.0.1:${port}`);
    assert.equal(req.headers.connection, 'close');
  });

  test('httpHeaders are sent with canonical names; Host overrides the Host header; a User-Agent or empty Accept replaces the default', async () => {
    seen.length = 0;
    await runProbe({
      httpGet: {
        port, path: '/healthz',
        httpHeaders: [{ name: 'host', value: 'app.example.com' }, { name: 'x-custom', value: 'a' }, { name: 'X-CUSTOM', value: 'b' }, { name: 'user-agent', value: 'mine' }, { name: 'Accept', value: '' }],
      },
    }, localTarget(), container);
    const req = seen[0]!;
    assert.equal(req.headers.host, 'app.example.com');
    assert.equal(req.headers['user-agent'], 'mine');
    assert.equal(req.headers.accept, undefined);
    assert.equal(req.headers['x-custom'], 'a, b');
    assert.ok(req.rawHeaders.includes('X-Custom'));
  });

  test('a 500 is failure "HTTP probe failed with statuscode: 500" (the body is not in the message)', async () => {
    assert.deepEqual(await runProbe({ httpGet: { port, path: '/fail' } }, localTarget(), container), { result: 'failure', message: 'HTTP probe failed with statuscode: 500' });
  });

  test('a named port is resolved from the container ports; an unknown name is unknown with the kubelet error', async () => {
    const target = localTarget();
    assert.equal((await runProbe({ httpGet: { port: 'web', path: '/healthz' } }, target, withPort(port))).result, 'success');
    assert.deepEqual(target.connects, [port]);
    assert.deepEqual(await runProbe({ httpGet: { port: 'metrics' } }, target, withPort(port)), { result: 'unknown', message: 'strconv.Atoi: parsing "metrics": invalid syntax' });
    assert.equal((await runProbe({ httpGet: { port: String(port), path: '/healthz' } }, target, container)).result, 'success');
  });

  test('the body kept is capped at 10 KiB', async () => {
    const r = await runProbe({ httpGet: { port, path: '/big' } }, localTarget(), container);
    assert.equal(r.result, 'success');
    assert.equal(r.message.length, 10 * 1024);
  });

  test('redirects to the same host are followed, relative or absolute; to another host they end as success with a warning', async () => {
    assert.deepEqual(await runProbe({ httpGet: { port, path: '/hop' } }, localTarget(), container), { result: 'success', message: 'ok' });
    seen.length = 0;
    assert.deepEqual(await runProbe({ httpGet: { port, path: '/hop-port' } }, localTarget(), container), { result: 'success', message: 'ok' });
    assert.deepEqual(seen.map((s) => s.url), ['/hop-port', '/healthz?via=abs']);
    assert.deepEqual(await runProbe({ httpGet: { port, path: '/away' } }, localTarget(), container), {
      result: 'success', warning: true, message: 'Probe terminated redirects, Response body: moved away',
    });
  });

  test('a redirect loop fails after 10 requests with "stopped after 10 redirects"', async () => {
    seen.length = 0;
    const r = await runProbe({ httpGet: { port, path: '/loop' } }, localTarget(), container);
    assert.equal(r.result, 'failure');
    assert.match(r.message, /^Get "http:\/\/127\.0\.0\.1:\d+\/loop\?n=10": stopped after 10 redirects$/);
    assert.equal(seen.length, 10);
  });

  test('a closed port fails with Go\'s dial error', async () => {
    const closed = await closedPort();
    assert.deepEqual(await runProbe({ httpGet: { port: closed, path: '/healthz' } }, localTarget(), container), {
      result: 'failure', message: `Get "http://127.0.0.1:${closed}/healthz": dial tcp 127.0.0.1:${closed}: connect: connection refused`,
    });
  });

  test('a server that does not answer within timeoutSeconds fails with the client timeout, at the deadline', async () => {
    const { value, ms } = await timed(runProbe({ httpGet: { port: slowPort, path: '/' }, timeoutSeconds: 1 }, localTarget(), container));
    assert.deepEqual(value, { result: 'failure', message: `Get "http://127.0.0.1:${slowPort}/": context deadline exceeded (Client.Timeout exceeded while awaiting headers)` });
    assert.ok(ms >= 950 && ms < 3000, `${ms} ms`);
  });

  test('httpGet.host is dialed from the host with a plain socket, not through the target', async () => {
    seen.length = 0;
    const r = await runProbe({ httpGet: { host: '127.0.0.1', port, path: '/healthz' } }, unavailable, container);
    assert.deepEqual(r, { result: 'success', message: 'ok' });
    assert.equal(seen[0]!.headers.host, `127.0.0.1:${port}`);
  });

  test('a target that is not connected gives unknown', async () => {
    assert.equal((await runProbe({ httpGet: { port, path: '/healthz' } }, unavailable, container)).result, 'unknown');
  });
});

describe('httpGet probes over HTTPS', () => {
  let port = 0;
  let plainPort = 0;
  let sni: string | undefined;
  before(async () => {
    const { cert, key } = await generateSelfSigned(['probe.test']);
    const server = track(https.createServer({ cert, key }, (req, res) => {
      sni = (req.socket as import('node:tls').TLSSocket).servername || undefined;
      res.writeHead(req.url === '/fail' ? 503 : 200).end('secure');
    }));
    port = await listen(server);
    plainPort = await listen(track(http.createServer((_req, res) => res.end('plain'))));
  });

  test('a self-signed certificate is not verified, like the kubelet', async () => {
    assert.deepEqual(await runProbe({ httpGet: { port, scheme: 'HTTPS', path: '/' } }, localTarget(), container), { result: 'success', message: 'secure' });
    assert.equal(sni, undefined, 'no SNI for an IP');
    assert.deepEqual(await runProbe({ httpGet: { port, scheme: 'HTTPS', path: '/fail' } }, localTarget(), container), { result: 'failure', message: 'HTTP probe failed with statuscode: 503' });
  });

  test('an HTTPS probe answered in plain HTTP fails as Go says it', async () => {
    assert.deepEqual(await runProbe({ httpGet: { port: plainPort, scheme: 'HTTPS', path: '/' } }, localTarget(), container), {
      result: 'failure', message: `Get "https://127.0.0.1:${plainPort}/": http: server gave HTTP response to HTTPS client`,
    });
  });
});

// ----- tcpSocket -----

describe('tcpSocket probes', () => {
  test('an accepted connection is success; a closed port is failure with the dial error', async () => {
    const server = track(net.createServer((s) => s.end()));
    const port = await listen(server);
    assert.deepEqual(await runProbe({ tcpSocket: { port } }, localTarget(), container), { result: 'success', message: '' });
    assert.equal((await runProbe({ tcpSocket: { port: 'web' } }, localTarget(), withPort(port))).result, 'success');
    const closed = await closedPort();
    assert.deepEqual(await runProbe({ tcpSocket: { port: closed } }, localTarget(), container), {
      result: 'failure', message: `dial tcp 127.0.0.1:${closed}: connect: connection refused`,
    });
  });

  test('a connection that does not open within timeoutSeconds fails with "i/o timeout"', async () => {
    const hanging: ProbeTarget = { ...localTarget(), podIP: '10.0.0.7', connect: () => new Promise(() => undefined) };
    const { value, ms } = await timed(runProbe({ tcpSocket: { port: 81 }, timeoutSeconds: 1 }, hanging, container));
    assert.deepEqual(value, { result: 'failure', message: 'dial tcp 10.0.0.7:81: i/o timeout' });
    assert.ok(ms >= 950 && ms < 3000, `${ms} ms`);
  });

  test('tcpSocket.host is dialed from the host', async () => {
    const port = await listen(track(net.createServer((s) => s.end())));
    assert.equal((await runProbe({ tcpSocket: { port, host: '127.0.0.1' } }, unavailable, container)).result, 'success');
    assert.equal((await runProbe({ tcpSocket: { port } }, unavailable, container)).result, 'unknown');
  });
});

// ----- grpc -----

/** HealthCheckRequest.service, decoded here independently of the module's encoder. */
function requestedService(body: Buffer): string {
  const msg = body.subarray(5);
  if (msg.length === 0) return '';
  assert.equal(msg[0], 0x0a);
  return msg.subarray(2, 2 + msg[1]!).toString('utf8');
}

describe('grpc probes', () => {
  let port = 0;
  let hangPort = 0;
  const requests: { service: string; headers: http2.IncomingHttpHeaders }[] = [];
  before(async () => {
    const server = track(http2.createServer());
    server.on('stream', (stream, headers) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const service = requestedService(Buffer.concat(chunks));
        requests.push({ service, headers });
        if (headers[':path'] !== '/grpc.health.v1.Health/Check') {
          stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12', 'grpc-message': 'unknown method' }, { endStream: true });
          return;
        }
        if (service === 'hang') return;
        if (service === 'missing') {
          stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '5', 'grpc-message': 'unknown%20service' }, { endStream: true });
          return;
        }
        if (service === 'unimplemented') {
          stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12', 'grpc-message': 'unknown service grpc.health.v1.Health' }, { endStream: true });
          return;
        }
        const status = service === 'down' ? 2 : service === 'odd' ? 7 : 1;
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
        stream.end(Buffer.from([0, 0, 0, 0, 2, 0x08, status]));
      });
    });
    port = await listen(server);
    hangPort = await listen(track(net.createServer(() => undefined)));
  });

  test('SERVING is success; the request names the service and carries the probe user agent', async () => {
    requests.length = 0;
    assert.deepEqual(await runProbe({ grpc: { port, service: 'api' } }, localTarget(), container), { result: 'success', message: 'service is healthy' });
    assert.deepEqual(await runProbe({ grpc: { port } }, localTarget(), container), { result: 'success', message: 'service is healthy' });
    assert.deepEqual(requests.map((r) => r.service), ['api', '']);
    assert.equal(requests[0]!.headers['content-type'], 'application/grpc');
    assert.equal(requests[0]!.headers['user-agent'], 'kube-probe/1.36');
    assert.equal(requests[0]!.headers[':authority'], `127.0.0.1:${port}`);
  });

  test('NOT_SERVING and unknown enum values are failures naming the status', async () => {
    assert.deepEqual(await runProbe({ grpc: { port, service: 'down' } }, localTarget(), container), { result: 'failure', message: 'service unhealthy (responded with "NOT_SERVING")' });
    assert.deepEqual(await runProbe({ grpc: { port, service: 'odd' } }, localTarget(), container), { result: 'failure', message: 'service unhealthy (responded with "7")' });
  });

  test('a non-zero grpc-status is a failure with its code and message', async () => {
    assert.deepEqual(await runProbe({ grpc: { port, service: 'missing' } }, localTarget(), container), {
      result: 'failure', message: 'error: health rpc probe failed: rpc error: code = NotFound desc = unknown service',
    });
    assert.deepEqual(await runProbe({ grpc: { port, service: 'unimplemented' } }, localTarget(), container), {
      result: 'failure', message: 'error: this server does not implement the grpc health protocol (grpc.health.v1.Health): unknown service grpc.health.v1.Health',
    });
  });

  test('an RPC that gets no answer within timeoutSeconds fails as "health rpc did not complete"', async () => {
    const { value, ms } = await timed(runProbe({ grpc: { port, service: 'hang' }, timeoutSeconds: 1 }, localTarget(), container));
    assert.deepEqual(value, { result: 'failure', message: 'timeout: health rpc did not complete within 1s' });
    assert.ok(ms >= 950 && ms < 3000, `${ms} ms`);
  });

  test('a closed port or a server that never speaks HTTP/2 fails as "failed to connect service ... within 1s", at the deadline', async () => {
    const closed = await closedPort();
    const refused = await timed(runProbe({ grpc: { port: closed } }, localTarget(), container));
    assert.deepEqual(refused.value, { result: 'failure', message: `timeout: failed to connect service "127.0.0.1:${closed}" within 1s: context deadline exceeded` });
    assert.ok(refused.ms >= 950 && refused.ms < 3000, `${refused.ms} ms`);
    const silent = await runProbe({ grpc: { port: hangPort } }, localTarget(), container);
    assert.deepEqual(silent, { result: 'failure', message: `timeout: failed to connect service "127.0.0.1:${hangPort}" within 1s: context deadline exceeded` });
  });

  test('a target that is not connected gives unknown', async () => {
    assert.equal((await runProbe({ grpc: { port } }, unavailable, container)).result, 'unknown');
  });
});

test('a probe without an action is unknown', async () => {
  assert.equal((await runProbe({}, localTarget(), container)).result, 'unknown');
});

// ----- lifecycle handlers -----

describe('lifecycle handlers', () => {
  const pod = { name: 'web', namespace: 'default', uid: 'u-1' };
  let port = 0;
  let plainPort = 0;
  const seen: IncomingHttpHeaders[] = [];
  before(async () => {
    port = await listen(track(http.createServer((req, res) => {
      seen.push(req.headers);
      res.writeHead(req.url === '/broken' ? 500 : 200).end();
    })));
    plainPort = port;
  });

  test('exec: exit 0 is ok; a non-zero exit fails with the kubelet message, stderr in the error and the output quoted', async () => {
    const handler: V1LifecycleHandler = { exec: { command: ['sh', '-c', 'exit 2'] } };
    assert.deepEqual(await runHandler({ exec: { command: ['true'] } }, localTarget(), container, 5000, { pod }), { ok: true, message: '' });
    const r = await runHandler(handler, localTarget(async () => ({ exitCode: 2, stdout: 'out\n', stderr: 'bad' })), container, 5000, { pod });
    assert.deepEqual(r, {
      ok: false,
      message: 'Exec lifecycle hook ([sh -c exit 2]) for Container "app" in Pod "web_default(u-1)" failed - error: command \'sh -c exit 2\' exited with 2: bad, message: "out\\nbad"',
    });
  });

  test('exec: running past the deadline fails with timedOut set', async () => {
    const r = await runHandler({ exec: { command: ['sleep', '60'] } }, localTarget(() => new Promise(() => undefined)), container, 100, { pod });
    assert.equal(r.ok, false);
    assert.equal(r.timedOut, true);
    assert.equal(r.message, 'Exec lifecycle hook ([sleep 60]) for Container "app" in Pod "web_default(u-1)" failed - error: command "sleep 60" timed out, message: ""');
  });

  test('httpGet: any answer is ok (the kubelet does not look at the status), sent as kube-lifecycle/1.36', async () => {
    seen.length = 0;
    assert.deepEqual(await runHandler({ httpGet: { port, path: '/broken' } }, localTarget(), container, 5000, { pod }), { ok: true, message: '' });
    assert.equal(seen[0]!['user-agent'], 'kube-lifecycle/1.36');
  });

  test('httpGet: a refused connection fails with the kubelet message', async () => {
    const closed = await closedPort();
    const r = await runHandler({ httpGet: { port: closed, path: '/shutdown' } }, localTarget(), container, 5000, { pod });
    assert.deepEqual(r, {
      ok: false,
      message: `HTTP lifecycle hook (/shutdown) for Container "app" in Pod "web_default(u-1)" failed - error: Get "http://127.0.0.1:${closed}/shutdown": dial tcp 127.0.0.1:${closed}: connect: connection refused`,
    });
  });

  test('httpGet: HTTPS answered in plain HTTP is retried over HTTP without Authorization, with a LifecycleHTTPFallback event', async () => {
    seen.length = 0;
    const r = await runHandler({
      httpGet: { port: plainPort, scheme: 'HTTPS', path: '/hook', httpHeaders: [{ name: 'authorization', value: 'Bearer x' }, { name: 'X-Keep', value: '1' }] },
    }, localTarget(), container, 5000, { pod });
    assert.deepEqual(r, {
      ok: true, message: '',
      events: [{ type: 'Warning', reason: 'LifecycleHTTPFallback', message: `request to HTTPS lifecycle hook 127.0.0.1:${plainPort} got HTTP response, retry with HTTP succeeded` }],
    });
    assert.equal(seen.length, 1);
    assert.equal(seen[0]!.authorization, undefined);
    assert.equal(seen[0]!['x-keep'], '1');
  });

  test('sleep: waits its seconds; cut short by the deadline it fails as the kubelet says', async () => {
    assert.deepEqual(await runHandler({ sleep: { seconds: 0 } }, localTarget(), container, 1000, { pod }), { ok: true, message: '' });
    const { value, ms } = await timed(runHandler({ sleep: { seconds: 30 } }, localTarget(), container, 100, { pod }));
    assert.deepEqual(value, {
      ok: false, timedOut: true,
      message: 'Sleep lifecycle hook (30) for Container "app" in Pod "web_default(u-1)" failed - error: container terminated before sleep hook finished',
    });
    assert.ok(ms < 1000, `${ms} ms`);
  });

  test('an abort signal ends a handler early, like its deadline', async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const r = await runHandler({ sleep: { seconds: 30 } }, localTarget(), container, 60_000, { pod, signal: ac.signal });
    assert.equal(r.timedOut, true);
  });

  test('tcpSocket is not a lifecycle handler the kubelet runs', async () => {
    const r = await runHandler({ tcpSocket: { port: 80 } }, localTarget(), container, 1000, { pod });
    assert.equal(r.ok, false);
    assert.match(r.message, /^Cannot run handler: invalid handler/);
  });

  test('the message helpers and event texts follow the kubelet', () => {
    assert.equal(podDescription(pod), 'web_default(u-1)');
    assert.equal(hookFailureMessage({ httpGet: { port: 80, path: '/x' } }, 'c', 'p_ns(u)', 'boom'), 'HTTP lifecycle hook (/x) for Container "c" in Pod "p_ns(u)" failed - error: boom');
    assert.deepEqual(HOOK_FAILURE.postStart, { reason: 'FailedPostStartHook', message: 'PostStartHook failed', waitingReason: 'PostStartHookError' });
    assert.deepEqual(HOOK_FAILURE.preStop, { reason: 'FailedPreStopHook', message: 'PreStop hook failed' });
  });
});
