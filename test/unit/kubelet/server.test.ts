// KubeletServer on loopback with the real Authenticator (TokenReview faked) and a scripted authorizer:
// the kubelet's 401/403 answers for requests and upgrades, routing, 503 before the runtime, errors that
// leave the server serving, and stop() closing upgraded connections.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { CertificateAuthority } from '../../harness/pki.ts';
import { Authenticator, type TokenReviewStatus } from '../../../src/kubelet/auth/authenticator.ts';
import type { Authorizer, RequestAttributes } from '../../../src/kubelet/auth/authorizer.ts';
import { KubeletError, type KubeletProvider } from '../../../src/kubelet/provider.ts';
import { KubeletServer, compilePath, isKubeletProvider, sendText } from '../../../src/kubelet/server.ts';
import { installPods } from '../../../src/kubelet/endpoints/pods.ts';

const log = pino({ level: 'silent' });
let ca: CertificateAuthority;
let server: KubeletServer;
let port: number;
const seen: RequestAttributes[] = [];
const allowed = new Set<string>(); // "user verb subresource"

const tokens: Record<string, TokenReviewStatus> = {
  'good-token': { authenticated: true, user: { username: 'system:serviceaccount:default:viewer', uid: 'u-1', groups: ['system:serviceaccounts'] } },
};

before(async () => {
  ca = await CertificateAuthority.create('kubelet-test-ca');
  const serving = await ca.issueServingCert(['127.0.0.1']);
  const authorizer: Authorizer = {
    authorize: async (a) => {
      seen.push(a);
      if (a.user.name === 'explode') throw new Error('the API server is away');
      return { decision: allowed.has(`${a.user.name} ${a.verb} ${a.subresource}`) ? 'allow' : 'no-opinion', reason: '' };
    },
  };
  const authenticator = new Authenticator({
    clientCAs: () => [new X509Certificate(ca.cert)],
    tokenReview: async (token) => tokens[token] ?? { authenticated: false },
  });
  server = new KubeletServer({ nodeName: 'node-a', credentials: serving, authenticator, authorizer, log });
  installPods(server);
  server.route({ method: 'GET', path: '/boom', handle: () => { throw new Error('handler bug'); } });
  server.route({ method: 'GET', path: '/gone', handle: () => { throw new KubeletError(410, 'Gone', 'it went away'); } });
  server.route({ method: 'GET', path: '/echo/:a/*', handle: ({ params, user }, res) => sendText(res, 200, JSON.stringify({ params, user: user.name })) });
  server.route({
    path: '/exec/:namespace/:pod/:container',
    upgrade: ({ params, provider }, socket) => {
      if (params.pod === 'missing') throw new KubeletError(404, 'NotFound', `pod "${params.namespace}/${params.pod}" does not exist`);
      provider.getPod(params.namespace!, params.pod!);
      socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n');
      socket.on('data', (d: Buffer) => socket.write(d)); // echo
    },
  });
  ({ port } = await server.start('127.0.0.1', 0));
});

after(async () => {
  await server?.stop();
});

function request(path: string, opts: { method?: string; headers?: Record<string, string>; cert?: { cert: string; key: string } } = {}): Promise<{ status: number; body: string; headers: IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port, path, method: opts.method ?? 'GET', headers: opts.headers, ca: ca.cert,
      ...(opts.cert ? { cert: opts.cert.cert, key: opts.cert.key } : {}), agent: false,
    }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Sends an upgrade request on a raw TLS connection and returns the connection and the first bytes back. */
async function upgrade(path: string, headers: Record<string, string> = {}, cert?: { cert: string; key: string }, method = 'POST'): Promise<{ socket: tls.TLSSocket; head: string }> {
  const socket = tls.connect({ host: '127.0.0.1', port, ca: ca.cert, servername: undefined, ALPNProtocols: ['http/1.1'], ...(cert ?? {}) });
  await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  const lines = [`${method} ${path} HTTP/1.1`, 'Host: 127.0.0.1', 'Connection: Upgrade', `Upgrade: ${method === 'POST' ? 'SPDY/3.1' : 'websocket'}`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
  socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  const head = await new Promise<string>((resolve, reject) => {
    let text = '';
    const onData = (d: Buffer) => {
      text += d.toString('utf8');
      if (text.includes('\r\n\r\n')) {
        socket.off('data', onData);
        // Give a body a moment to arrive with the head.
        setTimeout(() => resolve(text), 50);
        socket.on('data', (more: Buffer) => (text += more.toString('utf8')));
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
  });
  return { socket, head };
}

test('no credentials: 401 "Unauthorized" on requests and on upgrades', async () => {
  assert.deepEqual(await request('/pods').then((r) => [r.status, r.body]), [401, 'Unauthorized']);
  const { socket, head } = await upgrade('/exec/default/p/c?command=ls');
  assert.match(head, /^HTTP\/1\.1 401 Unauthorized\r\n/);
  assert.match(head, /\r\n\r\nUnauthorized$/);
  // The server ends the connection after the answer.
  if (!socket.destroyed) await new Promise((resolve) => socket.once('close', resolve));
});

test('an unknown token is 401; a known one without permission is 403 with the kubelet\'s words', async () => {
  assert.equal((await request('/pods', { headers: { authorization: 'Bearer nope' } })).status, 401);
  const r = await request('/pods', { headers: { authorization: 'Bearer good-token' } });
  assert.equal(r.status, 403);
  assert.equal(r.body, 'Forbidden (user=system:serviceaccount:default:viewer, verb=get, resource=nodes, subresource(s)=[pods proxy])\n');
  const last = seen.slice(-2);
  assert.deepEqual(last.map((a) => [a.verb, a.resource, a.name, a.subresource]), [['get', 'nodes', 'node-a', 'pods'], ['get', 'nodes', 'node-a', 'proxy']]);
  assert.deepEqual(last[0]!.user.groups, ['system:serviceaccounts', 'system:authenticated']);
});

test('upgrades are authorized on nodes/proxy with the verb of their method', async () => {
  const { socket, head } = await upgrade('/exec/default/p/c?command=ls', { Authorization: 'Bearer good-token' });
  assert.match(head, /^HTTP\/1\.1 403 Forbidden\r\n/);
  assert.match(head, /Forbidden \(user=system:serviceaccount:default:viewer, verb=create, resource=nodes, subresource\(s\)=\[proxy\]\)\n$/);
  socket.destroy();
});

test('before setProvider, pod endpoints answer 503; after it, they answer from the provider', async () => {
  allowed.add('system:serviceaccount:default:viewer get pods');
  const r = await request('/pods', { headers: { authorization: 'Bearer good-token' } });
  assert.equal(r.status, 503);
  assert.match(r.body, /^pods are not served yet: /);
  assert.match(r.headers['content-type'] ?? '', /^text\/plain/);

  const pod = { metadata: { name: 'p', namespace: 'default', uid: 'uid-p' } };
  const provider = { listPods: () => [pod], runningPods: () => [], getPod: () => pod, exec: () => undefined, attach: () => undefined, logs: () => undefined, portForward: () => undefined, usage: async () => undefined } as unknown as KubeletProvider;
  assert.ok(isKubeletProvider(provider));
  assert.ok(!isKubeletProvider({ listPods: () => [] }));
  server.setProvider(provider);
  const ok = await request('/pods', { headers: { authorization: 'Bearer good-token' } });
  assert.equal(ok.status, 200);
  assert.deepEqual(JSON.parse(ok.body), { kind: 'PodList', apiVersion: 'v1', metadata: {}, items: [pod] });
});

test('a client certificate from the client CA is the user CN in groups O', async () => {
  const cert = await ca.issueClientCert('kube-apiserver-kubelet-client', ['kubelet-api-admins']);
  allowed.add('kube-apiserver-kubelet-client get proxy');
  const r = await request('/echo/x%2Fy/rest/of/it', { cert });
  assert.equal(r.status, 200);
  assert.deepEqual(JSON.parse(r.body), { params: { a: 'x/y', '*': 'rest/of/it' }, user: 'kube-apiserver-kubelet-client' });
  const a = seen[seen.length - 1]!;
  assert.deepEqual(a.user.groups, ['kubelet-api-admins', 'system:authenticated']);
  assert.match(a.user.extra?.['authentication.kubernetes.io/credential-id']?.[0] ?? '', /^X509SHA256=[0-9a-f]{64}$/);

  const other = await (await CertificateAuthority.create('someone-else')).issueClientCert('kube-apiserver-kubelet-client');
  assert.equal((await request('/echo/x/y', { cert: other })).status, 401);
});

test('unknown paths are 404, wrong methods 405, after authorization', async () => {
  const cert = await ca.issueClientCert('kube-apiserver-kubelet-client');
  assert.equal((await request('/nope')).status, 401);
  const r = await request('/nope', { cert });
  assert.equal(r.status, 404);
  assert.equal(r.body, '404 page not found\n');
  allowed.add('kube-apiserver-kubelet-client create pods');
  assert.equal((await request('/pods', { cert, method: 'POST' })).status, 405);
  allowed.add('kube-apiserver-kubelet-client create proxy');
  const { socket, head } = await upgrade('/nowhere', {}, cert);
  assert.match(head, /^HTTP\/1\.1 404 Not Found\r\n[\s\S]*404 page not found\n$/);
  socket.destroy();
});

test('an Upgrade header on a plain endpoint is ignored: the endpoint answers as usual', async () => {
  const cert = await ca.issueClientCert('kube-apiserver-kubelet-client');
  const { socket, head } = await upgrade('/echo/a/b', {}, cert, 'GET');
  assert.match(head, /^HTTP\/1\.1 200 OK\r\n/);
  assert.match(head, /\{"params":\{"a":"a","\*":"b"\},"user":"kube-apiserver-kubelet-client"\}$/);
  if (!socket.destroyed) await new Promise((resolve) => socket.once('close', resolve));
});

test('a handler that throws gets 500 and the server keeps serving; KubeletError keeps its status and message', async () => {
  const cert = await ca.issueClientCert('kube-apiserver-kubelet-client');
  const boom = await request('/boom', { cert });
  assert.equal(boom.status, 500);
  assert.match(boom.body, /handler bug/);
  const gone = await request('/gone', { cert });
  assert.deepEqual([gone.status, gone.body], [410, 'it went away']);
  assert.equal((await request('/echo/a/b', { cert })).status, 200);
});

test('garbage on a connection, TLS or not, ends that connection and nothing else', async () => {
  const socket = tls.connect({ host: '127.0.0.1', port, ca: ca.cert });
  await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  let answer = '';
  socket.on('data', (d: Buffer) => (answer += d.toString()));
  socket.write('NOT HTTP AT ALL\r\n\r\n');
  await new Promise((resolve) => socket.once('close', resolve));
  assert.match(answer, /^HTTP\/1\.1 400 Bad Request/);
  const net = await import('node:net');
  const raw = net.connect(port, '127.0.0.1');
  raw.on('error', () => undefined);
  raw.write('GET / HTTP/1.1\r\n\r\n');
  await new Promise((resolve) => raw.once('close', resolve));
  const cert = await ca.issueClientCert('kube-apiserver-kubelet-client');
  assert.equal((await request('/echo/a/b', { cert })).status, 200);
});

test('authorization that cannot be decided is 500 "Authorization error"', async () => {
  tokens['explode-token'] = { authenticated: true, user: { username: 'explode' } };
  const r = await request('/stats/summary', { headers: { authorization: 'Bearer explode-token' } });
  assert.equal(r.status, 500);
  assert.equal(r.body, 'Authorization error (user=explode, verb=get, resource=nodes, subresource=stats)');
});

test('an upgrade handler gets the socket; its KubeletError before answering is an HTTP answer; stop() closes it', async () => {
  const cert = await ca.issueClientCert('kube-apiserver-kubelet-client');
  allowed.add('kube-apiserver-kubelet-client create proxy');
  const missing = await upgrade('/exec/default/missing/c', {}, cert);
  assert.match(missing.head, /^HTTP\/1\.1 404 Not Found\r\n/);
  assert.match(missing.head, /"reason":"NotFound"/);
  missing.socket.destroy();

  const { socket, head } = await upgrade('/exec/default/p/c', {}, cert);
  assert.match(head, /^HTTP\/1\.1 101 Switching Protocols/);
  const echoed = new Promise<string>((resolve) => socket.once('data', (d: Buffer) => resolve(d.toString())));
  socket.write('ping');
  assert.equal(await echoed, 'ping');
  // A client that vanishes mid-stream does not disturb the server.
  const other = await upgrade('/exec/default/p/c', {}, cert);
  other.socket.destroy();
  assert.equal((await request('/echo/a/b', { cert })).status, 200);

  const closed = new Promise((resolve) => socket.once('close', resolve));
  await server.stop();
  await closed;
});

test('route paths: segments, rest, RegExp', () => {
  assert.deepEqual(compilePath('/exec/:ns/:pod/:c')('/exec/default/web/main'), { ns: 'default', pod: 'web', c: 'main' });
  assert.equal(compilePath('/exec/:ns/:pod/:c')('/exec/default/web'), undefined);
  assert.deepEqual(compilePath('/logs/*')('/logs/a/b'), { '*': 'a/b' });
  assert.deepEqual(compilePath('/logs/*')('/logs'), { '*': '' });
  assert.deepEqual(compilePath(/^\/portForward\/(?<ns>[^/]+)\/(?<pod>[^/]+)$/)('/portForward/x/y'), { ns: 'x', pod: 'y' });
});
