// The kubelet's delegating authenticator: client certificates checked against the client CA bundle
// (chain, validity, client-auth usage; user = CN, groups = O), bearer tokens through a TokenReview
// (faked here: only the API call is a stand-in) with their cache, WebSocket protocol tokens, anonymous.
import 'reflect-metadata';
import assert from 'node:assert/strict';
import { webcrypto, X509Certificate } from 'node:crypto';
import { before, test } from 'node:test';
import * as x509 from '@peculiar/x509';
import { Authenticator, bearerToken, userFromCertificate, verifyClientChain, type TokenReviewStatus } from '../../../src/kubelet/auth/authenticator.ts';

x509.cryptoProvider.set(webcrypto);
const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY = 24 * 3600_000;
const NOW = Date.now();

interface Issued { cert: X509Certificate; keys: webcrypto.CryptoKeyPair; x: x509.X509Certificate }

async function issue(opts: {
  subject: string | x509.JsonName; issuer?: Issued; ca?: boolean; eku?: string[]; notBefore?: number; notAfter?: number;
}): Promise<Issued> {
  const keys = await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify']);
  const extensions: x509.Extension[] = [new x509.BasicConstraintsExtension(opts.ca ?? false, undefined, true)];
  if (opts.ca) extensions.push(new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.digitalSignature, true));
  if (opts.eku) extensions.push(new x509.ExtendedKeyUsageExtension(opts.eku, false));
  extensions.push(await x509.SubjectKeyIdentifierExtension.create(keys.publicKey));
  if (opts.issuer) extensions.push(await x509.AuthorityKeyIdentifierExtension.create(opts.issuer.x));
  const common = {
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(8))).toString('hex').replace(/^./, '1'),
    notBefore: new Date(opts.notBefore ?? NOW - DAY),
    notAfter: new Date(opts.notAfter ?? NOW + 30 * DAY),
    signingAlgorithm: ALG,
    extensions,
  };
  const x = opts.issuer
    ? await x509.X509CertificateGenerator.create({ ...common, subject: opts.subject, issuer: opts.issuer.x.subject, publicKey: keys.publicKey, signingKey: opts.issuer.keys.privateKey })
    : await x509.X509CertificateGenerator.createSelfSigned({ ...common, name: opts.subject, keys });
  return { cert: new X509Certificate(Buffer.from(x.rawData)), keys, x };
}

const CLIENT = x509.ExtendedKeyUsage.clientAuth as string;
const SERVER = x509.ExtendedKeyUsage.serverAuth as string;
let root: Issued;
let otherRoot: Issued;
let intermediate: Issued;

before(async () => {
  root = await issue({ subject: 'CN=cluster-ca', ca: true });
  otherRoot = await issue({ subject: 'CN=cluster-ca', ca: true }); // same name, other key
  intermediate = await issue({ subject: 'CN=intermediate', ca: true, issuer: root });
});

test('a chain to the client CA is accepted; another CA with the same name is not', async () => {
  const leaf = await issue({ subject: 'CN=jane, O=devs, O=ops', issuer: root, eku: [CLIENT] });
  assert.ok(verifyClientChain([leaf.cert], [root.cert], new Date(NOW)).ok);
  const v = verifyClientChain([leaf.cert], [otherRoot.cert], new Date(NOW));
  assert.equal(v.ok, false);
  assert.match(!v.ok ? v.reason : '', /x509: certificate signed by unknown authority/);
});

test('intermediates the client sends are followed up to the root', async () => {
  const leaf = await issue({ subject: 'CN=jane', issuer: intermediate, eku: [CLIENT] });
  const v = verifyClientChain([leaf.cert, intermediate.cert], [root.cert], new Date(NOW));
  assert.ok(v.ok);
  assert.equal(v.ok && v.chain.length, 3);
  assert.equal(verifyClientChain([leaf.cert], [root.cert], new Date(NOW)).ok, false, 'without the intermediate there is no chain');
  // An intermediate that is not a CA cannot issue.
  const notCa = await issue({ subject: 'CN=not-a-ca', issuer: root, eku: [CLIENT] });
  const below = await issue({ subject: 'CN=jane', issuer: notCa, eku: [CLIENT] });
  assert.equal(verifyClientChain([below.cert, notCa.cert], [root.cert], new Date(NOW)).ok, false);
});

test('expired and not-yet-valid certificates are refused', async () => {
  const expired = await issue({ subject: 'CN=old', issuer: root, notBefore: NOW - 10 * DAY, notAfter: NOW - DAY });
  const v = verifyClientChain([expired.cert], [root.cert], new Date(NOW));
  assert.match(!v.ok ? v.reason : '', /certificate has expired or is not yet valid: current time .* is after/);
  const future = await issue({ subject: 'CN=new', issuer: root, notBefore: NOW + DAY, notAfter: NOW + 10 * DAY });
  assert.match((r => (!r.ok ? r.reason : ''))(verifyClientChain([future.cert], [root.cert], new Date(NOW))), /is before/);
});

test('extended key usage: none or clientAuth passes, serverAuth only does not', async () => {
  const none = await issue({ subject: 'CN=a', issuer: root });
  const server = await issue({ subject: 'CN=b', issuer: root, eku: [SERVER] });
  const both = await issue({ subject: 'CN=c', issuer: root, eku: [SERVER, CLIENT] });
  assert.ok(verifyClientChain([none.cert], [root.cert], new Date(NOW)).ok);
  assert.ok(verifyClientChain([both.cert], [root.cert], new Date(NOW)).ok);
  const v = verifyClientChain([server.cert], [root.cert], new Date(NOW));
  assert.match(!v.ok ? v.reason : '', /incompatible key usage/);
});

test('user = CN, groups = every O, uid from the subject UID, credential id = SHA-256 of the certificate', async () => {
  const subject: x509.JsonName = [{ CN: ['system:node:mac-1'] }, { O: ['system:nodes'] }, { O: ['b,c'] }, { '0.9.2342.19200300.100.1.1': ['1234'] }];
  const leaf = await issue({ subject, issuer: root, eku: [CLIENT] });
  const u = userFromCertificate(leaf.cert)!;
  assert.equal(u.name, 'system:node:mac-1');
  assert.deepEqual(u.groups, ['system:nodes', 'b,c']);
  assert.equal(u.uid, '1234');
  assert.deepEqual(u.extra, { 'authentication.kubernetes.io/credential-id': [`X509SHA256=${leaf.cert.fingerprint256.replace(/:/g, '').toLowerCase()}`] });
  assert.equal(userFromCertificate((await issue({ subject: 'O=nobody', issuer: root })).cert), undefined);
});

function reviewer(answers: Record<string, TokenReviewStatus>) {
  const asked: string[] = [];
  return { asked, review: async (token: string) => { asked.push(token); return answers[token] ?? { authenticated: false, error: 'token not found' }; } };
}

test('bearer tokens: TokenReview, system:authenticated added, results cached (2 min success, shorter failure)', async () => {
  let now = 5_000_000;
  const api = reviewer({ good: { authenticated: true, user: { username: 'system:serviceaccount:ns:sa', uid: 'u', groups: ['system:serviceaccounts'], extra: { 'authentication.kubernetes.io/pod-name': ['p'] } } } });
  const authn = new Authenticator({ tokenReview: api.review, clock: () => now });
  const ask = (token: string) => authn.authenticate({ headers: { authorization: `Bearer ${token}` }, peerChain: [] });
  const ok = await ask('good');
  assert.ok(ok.ok);
  assert.deepEqual(ok.ok && ok.user, { name: 'system:serviceaccount:ns:sa', uid: 'u', groups: ['system:serviceaccounts', 'system:authenticated'], extra: { 'authentication.kubernetes.io/pod-name': ['p'] } });
  now += 2 * 60_000 - 1;
  await ask('good');
  assert.equal(api.asked.length, 1);
  now += 1;
  await ask('good');
  assert.equal(api.asked.length, 2);

  const bad = await ask('bad');
  assert.deepEqual(bad, { ok: false, reason: 'invalid bearer token: token not found' });
  now += 9_999;
  await ask('bad');
  assert.equal(api.asked.length, 3, 'a refusal is cached for 10 s');
  now += 1;
  await ask('bad');
  assert.equal(api.asked.length, 4);
});

test('concurrent requests with one token send one TokenReview; a failed review is not cached', async () => {
  let fail = true;
  const asked: string[] = [];
  const authn = new Authenticator({
    tokenReview: async (t) => { asked.push(t); await new Promise((r) => setTimeout(r, 10)); if (fail) throw new Error('apiserver down'); return { authenticated: true, user: { username: 'x' } }; },
  });
  const ask = () => authn.authenticate({ headers: { authorization: 'Bearer t' }, peerChain: [] });
  const results = await Promise.all([ask(), ask(), ask()]);
  assert.equal(asked.length, 1);
  assert.ok(results.every((r) => !r.ok && /token review failed: apiserver down/.test(r.reason)));
  fail = false;
  assert.ok((await ask()).ok);
  assert.equal(asked.length, 2);
});

test('the token cache is bounded', async () => {
  const api = reviewer({ a: { authenticated: true, user: { username: 'a' } }, b: { authenticated: true, user: { username: 'b' } } });
  const authn = new Authenticator({ tokenReview: api.review, maxCachedTokens: 1 });
  const ask = (t: string) => authn.authenticate({ headers: { authorization: `Bearer ${t}` }, peerChain: [] });
  await ask('a');
  await ask('b');
  await ask('a');
  assert.deepEqual(api.asked, ['a', 'b', 'a']);
});

test('a WebSocket may carry its token as a subprotocol', () => {
  const ws = { connection: 'Upgrade', upgrade: 'websocket' };
  const encoded = Buffer.from('my-token').toString('base64url');
  assert.deepEqual(bearerToken({ ...ws, 'sec-websocket-protocol': `v5.channel.k8s.io, base64url.bearer.authorization.k8s.io.${encoded}` }), { token: 'my-token', from: 'websocket-protocol' });
  assert.deepEqual(bearerToken({ 'sec-websocket-protocol': `base64url.bearer.authorization.k8s.io.${encoded}` }), {}, 'only on a WebSocket request');
  assert.deepEqual(bearerToken({ ...ws, 'sec-websocket-protocol': `base64url.bearer.authorization.k8s.io.${encoded},base64url.bearer.authorization.k8s.io.${encoded}` }), { error: 'multiple base64.bearer.authorization tokens specified' });
  assert.deepEqual(bearerToken({ authorization: 'Bearer abc' }), { token: 'abc', from: 'header' });
  assert.deepEqual(bearerToken({ authorization: 'Basic abc' }), {});
});

test('certificates first; a bad certificate still lets a good token through; failures are never anonymous', async () => {
  const leaf = await issue({ subject: 'CN=kube-apiserver-kubelet-client, O=system:masters', issuer: root, eku: [CLIENT] });
  const stranger = await issue({ subject: 'CN=stranger', issuer: otherRoot, eku: [CLIENT] });
  const api = reviewer({ good: { authenticated: true, user: { username: 'sa' } } });
  const authn = new Authenticator({ clientCAs: () => [root.cert], tokenReview: api.review, anonymous: true });
  const byCert = await authn.authenticate({ headers: { authorization: 'Bearer good' }, peerChain: [leaf.cert] });
  assert.ok(byCert.ok && byCert.method === 'x509' && byCert.user.name === 'kube-apiserver-kubelet-client');
  assert.deepEqual(api.asked, [], 'no TokenReview when the certificate authenticates');
  const byToken = await authn.authenticate({ headers: { authorization: 'Bearer good' }, peerChain: [stranger.cert] });
  assert.ok(byToken.ok && byToken.method === 'token');
  assert.equal((await authn.authenticate({ headers: {}, peerChain: [stranger.cert] })).ok, false);
  assert.equal((await authn.authenticate({ headers: { authorization: 'Bearer bad' }, peerChain: [] })).ok, false);
  const anon = await authn.authenticate({ headers: {}, peerChain: [] });
  assert.deepEqual(anon, { ok: true, method: 'anonymous', user: { name: 'system:anonymous', groups: ['system:unauthenticated'] } });
});

test('without a client CA, certificates are ignored; without anonymous, no credentials is a failure', async () => {
  const leaf = await issue({ subject: 'CN=admin', issuer: root, eku: [CLIENT] });
  const authn = new Authenticator({ tokenReview: async () => ({ authenticated: false }) });
  assert.deepEqual(await authn.authenticate({ headers: {}, peerChain: [leaf.cert] }), { ok: false, reason: 'no client certificate or bearer token' });
});
