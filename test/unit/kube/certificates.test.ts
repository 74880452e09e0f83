// The pure parts of TLS bootstrapping: the PKCS#10 requests (read back with @peculiar/x509, an
// independent parser), the kubelet's subject and CSR names, the rotation deadline, and the checks that
// decide whether a stored certificate or node kubeconfig can be used.
import 'reflect-metadata';
import assert from 'node:assert/strict';
import { generateKeyPairSync, webcrypto } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import * as x509 from '@peculiar/x509';
import { ConfigError, loadConfig } from '../../../src/config/load.ts';
import { certDirOf, nodeKubeconfigOf } from '../../../src/config/schema.ts';
import {
  bootstrapCsrName, buildCsr, certificateProblem, CLIENT_USAGES, generateKey, nodeSubject, rotationDeadline, SERVING_USAGES, splitPem,
} from '../../../src/kube/certificates/csr.ts';
import { nodeKubeconfigProblem, writeClientCertificate, writeNodeKubeconfig, ClientCertRotator } from '../../../src/kube/certificates/client-cert.ts';
import { servingCertProblem } from '../../../src/kube/certificates/serving-cert.ts';
import { loadKubeconfig } from '../../../src/kube/kubeconfig.ts';
import { generateSelfSigned } from '../../../src/kubelet/auth/tls.ts';

x509.cryptoProvider.set(webcrypto);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'vmlet-certificates-'));

test('a client CSR: CN=system:node:<name>, O=system:nodes, no SANs, signed by its key', async () => {
  const key = generateKey();
  const req = new x509.Pkcs10CertificateRequest(buildCsr({ privateKey: key, subject: nodeSubject('mac-1') }));
  assert.equal(req.subjectName.getField('CN')[0], 'system:node:mac-1');
  assert.deepEqual(req.subjectName.getField('O'), ['system:nodes']);
  assert.equal(req.extensions.length, 0);
  assert.ok(await req.verify(), 'the signature verifies');
  assert.equal((req.signatureAlgorithm as { name?: string }).name, 'ECDSA');
});

test('a serving CSR names the DNS names and the IPv4 and IPv6 addresses as SANs', async () => {
  const hosts = ['mac-1', 'mac-1.example.com', '192.0.2.10', '2001:db8::1'];
  const req = new x509.Pkcs10CertificateRequest(buildCsr({ privateKey: generateKey(), subject: nodeSubject('mac-1'), hosts }));
  const san = req.extensions.find((e): e is x509.SubjectAlternativeNameExtension => e instanceof x509.SubjectAlternativeNameExtension);
  assert.ok(san, 'an extensionRequest with subjectAltName');
  assert.deepEqual(san.names.toJSON(), [
    { type: 'dns', value: 'mac-1' },
    { type: 'dns', value: 'mac-1.example.com' },
    { type: 'ip', value: '192.0.2.10' },
    { type: 'ip', value: '2001:db8::1' },
  ]);
  assert.ok(await req.verify());
});

test('buildCsr refuses keys other than EC', () => {
  const { privateKey } = generateKeyPairSync('ed25519');
  assert.throws(() => buildCsr({ privateKey, subject: nodeSubject('n') }), /EC keys/);
});

test('the bootstrap CSR name is node-csr-<digest>: the same for the same key, another for another key or subject', () => {
  const key = generateKey();
  const name = bootstrapCsrName(key, nodeSubject('a'), CLIENT_USAGES);
  assert.match(name, /^node-csr-[A-Za-z0-9_-]{43}$/);
  assert.equal(bootstrapCsrName(key, nodeSubject('a'), CLIENT_USAGES), name);
  assert.notEqual(bootstrapCsrName(generateKey(), nodeSubject('a'), CLIENT_USAGES), name);
  assert.notEqual(bootstrapCsrName(key, nodeSubject('b'), CLIENT_USAGES), name);
  assert.notEqual(bootstrapCsrName(key, nodeSubject('a'), SERVING_USAGES), name);
});

test('rotation is due between 70 % and 90 % of the certificate life', () => {
  const notBefore = new Date('2030-01-01T00:00:00Z');
  const notAfter = new Date('2030-01-11T00:00:00Z'); // 10 days
  const day = 24 * 3600_000;
  assert.equal(rotationDeadline(notBefore, notAfter, 0).getTime(), notBefore.getTime() + 7 * day);
  assert.equal(rotationDeadline(notBefore, notAfter, 0.5).getTime(), notBefore.getTime() + 8 * day);
  assert.equal(rotationDeadline(notBefore, notAfter, 1).getTime(), notBefore.getTime() + 9 * day);
  // Out-of-range randomness is clamped.
  assert.equal(rotationDeadline(notBefore, notAfter, 7).getTime(), notBefore.getTime() + 9 * day);
});

test('certificateProblem: none for a valid certificate; expired, not yet valid and unreadable ones are named', async () => {
  const now = Date.parse('2030-06-01T00:00:00Z');
  const { cert, key } = await generateSelfSigned(['n1'], now);
  assert.equal(certificateProblem(cert, now), undefined);
  assert.match(certificateProblem(cert, now + 2 * 365 * 24 * 3600_000)!, /expired/);
  assert.match(certificateProblem(cert, now - 2 * 3600_000)!, /not valid before/);
  assert.match(certificateProblem('garbage', now)!, /cannot be read/);
  assert.equal(certificateProblem(undefined, now), 'it holds no certificate');
  const both = splitPem(`${cert}${key}`);
  assert.equal(both.cert, cert);
  assert.equal(both.key, key);
});

test('the node kubeconfig written after bootstrap loads, uses the certificate file, and counts as usable until it expires', async () => {
  const dir = path.join(tmp, 'node');
  const { cert, key } = await generateSelfSigned(['n1']);
  const certFile = await writeClientCertificate(dir, cert, key);
  const kubeconfig = path.join(dir, 'vmlet.kubeconfig');
  assert.match((await nodeKubeconfigProblem(kubeconfig))!, /does not exist/);
  const ca = Buffer.from('-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
  await writeNodeKubeconfig(kubeconfig, { source: 'x', server: 'https://10.0.0.1:6443', ca, insecureSkipTLSVerify: false }, certFile);
  const access = loadKubeconfig(kubeconfig);
  assert.equal(access.server, 'https://10.0.0.1:6443');
  assert.deepEqual(access.ca, ca);
  assert.equal(access.certFile, certFile);
  assert.ok(ClientCertRotator.manages(access, dir));
  assert.ok(!ClientCertRotator.manages(access, path.join(tmp, 'elsewhere')));
  assert.equal(await nodeKubeconfigProblem(kubeconfig), undefined);
  assert.match((await nodeKubeconfigProblem(kubeconfig, Date.now() + 2 * 365 * 24 * 3600_000))!, /expired/);
  writeFileSync(certFile, 'not a certificate');
  assert.ok(await nodeKubeconfigProblem(kubeconfig));
});

test('an issued serving certificate is used only while it names every host and its key matches', async () => {
  const file = path.join(tmp, 'server.pem');
  const { cert, key } = await generateSelfSigned(['n1', '192.0.2.10']);
  writeFileSync(file, `${cert}${key}`);
  assert.equal(await servingCertProblem(file, ['n1', '192.0.2.10']), undefined);
  assert.match((await servingCertProblem(file, ['n1', '192.0.2.11']))!, /does not name 192\.0\.2\.11/);
  const other = await generateSelfSigned(['n1']);
  writeFileSync(file, `${cert}${other.key}`);
  assert.match((await servingCertProblem(file, ['n1']))!, /key does not match/);
  assert.match((await servingCertProblem(path.join(tmp, 'none.pem'), ['n1']))!, /does not exist/);
});

test('config: --server-tls-bootstrap alone means true, bootstrap defaults, and a conflict with kubeletTlsCertFile', () => {
  const c = loadConfig({ env: {}, flags: { nodeName: 'n1', serverTlsBootstrap: true, bootstrapKubeconfig: '/etc/vmlet/bootstrap.kubeconfig', imageCacheDir: '/var/lib/vmlet' } });
  assert.equal(c.serverTlsBootstrap, true);
  assert.equal(certDirOf(c), '/var/lib/vmlet/pki');
  assert.equal(nodeKubeconfigOf(c), '/var/lib/vmlet/vmlet.kubeconfig');
  assert.equal(nodeKubeconfigOf({ ...c, kubeconfig: '/etc/vmlet/node.kubeconfig' }), '/etc/vmlet/node.kubeconfig');
  assert.equal(nodeKubeconfigOf({ ...c, bootstrapKubeconfig: undefined }), undefined);
  assert.equal(loadConfig({ env: { VMLET_SERVER_TLS_BOOTSTRAP: 'false', VMLET_CERT_DIR: '/srv/pki' }, flags: { nodeName: 'n1' } }).serverTlsBootstrap, false);
  assert.equal(certDirOf(loadConfig({ env: { VMLET_CERT_DIR: '/srv/pki' }, flags: { nodeName: 'n1' } })), '/srv/pki');
  assert.throws(
    () => loadConfig({ env: {}, flags: { nodeName: 'n1', serverTlsBootstrap: 'true', kubeletTlsCertFile: '/a.crt', kubeletTlsKeyFile: '/a.key' } }),
    (err: unknown) => err instanceof ConfigError && /serverTlsBootstrap and kubeletTlsCertFile exclude each other/.test(err.message),
  );
});
