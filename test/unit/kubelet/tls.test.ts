// The kubelet API's serving certificate: self-signed for the node's names and IPs, kept and reused across
// restarts, made anew before expiry or when a name is missing; given files checked at start.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import { mkdtemp, readFile, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { rm } from 'node:fs/promises';
import { CertificateAuthority } from '../../harness/pki.ts';
import { generateSelfSigned, ipBytes, loadServingCredentials, readCaBundle, renewalReason } from '../../../src/kubelet/auth/tls.ts';

const dirs: string[] = [];
async function tmp(): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'vmlet-kubelet-tls-'));
  dirs.push(d);
  return d;
}
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const HOSTS = ['mac-1', 'mac-1.local', '10.0.0.7', 'fd00::7'];

test('a self-signed serving certificate names the node and is valid for a year', async () => {
  const now = Date.now();
  const { cert, key } = await generateSelfSigned(HOSTS, now);
  const x = new X509Certificate(cert);
  assert.equal(x.checkHost('mac-1'), 'mac-1');
  assert.equal(x.checkHost('mac-1.local'), 'mac-1.local');
  assert.equal(x.checkIP('10.0.0.7'), '10.0.0.7');
  assert.equal(x.checkIP('fd00::7'), 'fd00::7');
  assert.deepEqual(x.keyUsage, ['1.3.6.1.5.5.7.3.1']);
  assert.equal(x.ca, false);
  assert.ok(x.verify(x.publicKey), 'self-signed');
  assert.match(x.subject, /^CN=mac-1@\d+$/);
  const days = (Date.parse(x.validTo) - now) / 86_400_000;
  assert.ok(days > 364 && days < 366, `${days} days`);
  assert.equal(renewalReason(cert, key, HOSTS, now), undefined);
});

test('a client that trusts the self-signed certificate completes a TLS handshake to the node\'s IP', async () => {
  const { cert, key } = await generateSelfSigned(['mac-1', '127.0.0.1']);
  const server = tls.createServer({ cert, key }, (s) => s.end('hello'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const { port } = server.address() as { port: number };
    const text = await new Promise<string>((resolve, reject) => {
      const c = tls.connect({ host: '127.0.0.1', port, ca: cert }, () => c.once('data', (d: Buffer) => resolve(d.toString())));
      c.once('error', reject);
    });
    assert.equal(text, 'hello');
  } finally {
    server.close();
  }
});

test('DER details: times after 2049 are GeneralizedTime, IPv6 addresses in every spelling', async () => {
  const in2049 = Date.parse('2049-06-01T00:00:00Z');
  const { cert } = await generateSelfSigned(['n', '::1', 'fd00::7', '2001:db8::1:2', '::ffff:1.2.3.4', '1:2:3:4:5:6:7:8'], in2049);
  const x = new X509Certificate(cert);
  assert.equal(new Date(x.validTo).toISOString(), '2050-06-01T00:00:00.000Z');
  for (const ip of ['::1', 'fd00::7', '2001:db8::1:2', '::ffff:1.2.3.4', '1:2:3:4:5:6:7:8']) assert.equal(x.checkIP(ip), ip, ip);
  assert.equal(x.checkIP('fd00::8'), undefined);
  assert.deepEqual([...ipBytes('10.1.2.3')], [10, 1, 2, 3]);
  assert.equal(ipBytes('::').toString('hex'), '0'.repeat(32));
  assert.equal(ipBytes('fe80::1%eth0').toString('hex'), 'fe80' + '0'.repeat(26) + '01');
});

test('kept under its directory and reused across restarts; key readable by the owner only', async () => {
  const dir = await tmp();
  const first = await loadServingCredentials({ dir, hosts: HOSTS });
  assert.equal(first.source, 'self-signed');
  assert.equal(first.certFile, path.join(dir, 'kubelet.crt'));
  assert.equal((await stat(first.keyFile)).mode & 0o777, 0o600);
  const second = await loadServingCredentials({ dir, hosts: HOSTS });
  assert.equal(second.fingerprint, first.fingerprint);
});

test('made anew 30 days before expiry, and when the node gets a name or IP the certificate lacks', async () => {
  const dir = await tmp();
  const first = await loadServingCredentials({ dir, hosts: HOSTS });
  const in336days = Date.now() + 336 * 86_400_000;
  assert.match(renewalReason(first.cert, first.key, HOSTS, in336days) ?? '', /expires/);
  const later = await loadServingCredentials({ dir, hosts: HOSTS, clock: () => in336days });
  assert.notEqual(later.fingerprint, first.fingerprint);
  assert.equal(await readFile(path.join(dir, 'kubelet.crt'), 'utf8'), later.cert);

  const moved = await loadServingCredentials({ dir, hosts: [...HOSTS, '10.0.0.8'] });
  assert.notEqual(moved.fingerprint, later.fingerprint);
  assert.equal(new X509Certificate(moved.cert).checkIP('10.0.0.8'), '10.0.0.8');
  assert.match(renewalReason(first.cert, moved.key, HOSTS, Date.now()) ?? '', /key does not match/);
});

test('given files are used as they are, and a key that does not match is refused at start', async () => {
  const dir = await tmp();
  const ca = await CertificateAuthority.create();
  const a = await ca.issueServingCert(['127.0.0.1']);
  const b = await ca.issueServingCert(['127.0.0.1']);
  const certFile = path.join(dir, 'a.crt');
  const keyFile = path.join(dir, 'a.key');
  const otherKey = path.join(dir, 'b.key');
  await writeFile(certFile, a.cert);
  await writeFile(keyFile, a.key);
  await writeFile(otherKey, b.key);
  const given = await loadServingCredentials({ certFile, keyFile, dir, hosts: HOSTS });
  assert.equal(given.source, 'files');
  assert.equal(given.cert, a.cert);
  await assert.rejects(loadServingCredentials({ certFile, keyFile: otherKey, dir, hosts: HOSTS }), /is not the key of the certificate/);
  await assert.rejects(loadServingCredentials({ certFile, keyFile: path.join(dir, 'none.key'), dir, hosts: HOSTS }), /cannot read .*none\.key ENOENT/);
  await assert.rejects(loadServingCredentials({ certFile, dir, hosts: HOSTS }), /must be given together/);
});

test('a client CA bundle holds every certificate of the file', async () => {
  const dir = await tmp();
  const [a, b] = await Promise.all([CertificateAuthority.create('a'), CertificateAuthority.create('b')]);
  const file = path.join(dir, 'ca.crt');
  await writeFile(file, a.cert + b.cert);
  assert.deepEqual((await readCaBundle(file)).map((c) => c.subject), ['CN=a', 'CN=b']);
  await writeFile(file, 'nothing here\n');
  await assert.rejects(readCaBundle(file), /holds no PEM certificate/);
});
