// The kubelet API's serving certificate: the files given (kubeletTlsCertFile/kubeletTlsKeyFile), read
// again when they change, else a self-signed one for the node's names and IPs, kept in a directory
// (kubelet.crt, kubelet.key, as the kubelet's --cert-dir) so it is the same across restarts, and made
// anew before it expires or when the node's names or IPs are no longer in it.
import { createHash, createPrivateKey, generateKeyPairSync, randomBytes, sign, X509Certificate } from 'node:crypto';
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';

export interface ServingCredentials {
  cert: string;
  key: string;
  /** files: kubeletTlsCertFile/KeyFile; csr: issued for a kubelet-serving CSR (serverTlsBootstrap). */
  source: 'files' | 'self-signed' | 'csr';
  certFile: string;
  keyFile: string;
  notAfter: Date;
  /** SHA-256 fingerprint of the leaf, to tell whether anything changed. */
  fingerprint: string;
}

export interface ServingCertOptions {
  certFile?: string;
  keyFile?: string;
  /** Where the self-signed certificate is kept. */
  dir: string;
  /** DNS names and IP addresses the self-signed certificate is for (node name, host name, node IPs). */
  hosts: readonly string[];
  clock?: () => number;
}

/** A problem with the configured certificate or key the user must fix; one line. */
export class ServingCertError extends Error {
  override name = 'ServingCertError';
}

const SELF_SIGNED_VALIDITY_MS = 365 * 24 * 3600_000;
// Made anew this long before expiry, so a long-running vmlet never serves an expired certificate.
const RENEW_BEFORE_MS = 30 * 24 * 3600_000;
// Backdated against clock skew between this host and its clients.
const BACKDATE_MS = 3600_000;

export async function loadServingCredentials(opts: ServingCertOptions): Promise<ServingCredentials> {
  if (opts.certFile || opts.keyFile) {
    if (!opts.certFile || !opts.keyFile) throw new ServingCertError('kubeletTlsCertFile and kubeletTlsKeyFile must be given together');
    return readGiven(opts.certFile, opts.keyFile);
  }
  const now = (opts.clock ?? Date.now)();
  const certFile = path.join(opts.dir, 'kubelet.crt');
  const keyFile = path.join(opts.dir, 'kubelet.key');
  const stored = await readPair(certFile, keyFile).catch(() => undefined);
  if (stored && !renewalReason(stored.cert, stored.key, opts.hosts, now)) return credentials(stored.cert, stored.key, 'self-signed', certFile, keyFile);
  const fresh = await generateSelfSigned(opts.hosts, now);
  await mkdir(opts.dir, { recursive: true, mode: 0o700 });
  await writeAtomic(keyFile, fresh.key, 0o600);
  await writeAtomic(certFile, fresh.cert, 0o644);
  return credentials(fresh.cert, fresh.key, 'self-signed', certFile, keyFile);
}

/** Why a stored self-signed certificate must be made anew, or undefined when it is still good. */
export function renewalReason(certPem: string, keyPem: string, hosts: readonly string[], now: number): string | undefined {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) return 'the key does not match the certificate';
  } catch (err) {
    return `unreadable: ${(err as Error).message}`;
  }
  if (Date.parse(cert.validTo) - now < RENEW_BEFORE_MS) return `it expires ${cert.validTo}`;
  if (Date.parse(cert.validFrom) > now) return `it is not valid before ${cert.validFrom}`;
  const missing = hosts.filter((h) => (isIP(h) ? !cert.checkIP(h) : !cert.checkHost(h)));
  if (missing.length > 0) return `it does not name ${missing.join(', ')}`;
  return undefined;
}

/**
 * A self-signed ECDSA P-256 serving certificate for `hosts`, valid for a year, built as DER here and signed
 * with node:crypto. Not with @peculiar/x509: loading it (and the Reflect polyfill its dependency injection
 * needs, a dev dependency) keeps ~15 MiB in an agent whose idle budget is 80 MB, for one signature a year.
 */
export async function generateSelfSigned(hosts: readonly string[], now: number = Date.now()): Promise<{ cert: string; key: string }> {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x01;
  // The kubelet names its self-signed certificate <host>@<unix time>.
  const name = der.seq(der.set(der.seq(der.oid('2.5.4.3'), der.utf8(`${hosts[0] ?? 'vmlet'}@${Math.floor(now / 1000)}`))));
  const sans = hosts.map((h) => (isIP(h) ? der.tlv(0x87, ipBytes(h)) : der.tlv(0x82, Buffer.from(h, 'ascii'))));
  const extension = (id: string, critical: boolean, value: Buffer) => der.seq(der.oid(id), ...(critical ? [der.tlv(0x01, Buffer.from([0xff]))] : []), der.tlv(0x04, value));
  const ecdsaWithSha256 = der.seq(der.oid('1.2.840.10045.4.3.2'));
  const tbs = der.seq(
    der.tlv(0xa0, der.int(Buffer.from([2]))), // v3
    der.int(serial),
    ecdsaWithSha256,
    name,
    der.seq(der.time(new Date(now - BACKDATE_MS)), der.time(new Date(now + SELF_SIGNED_VALIDITY_MS))),
    name,
    publicKey.export({ type: 'spki', format: 'der' }),
    der.tlv(0xa3, der.seq(
      extension('2.5.29.19', true, der.seq()), // basicConstraints: not a CA
      extension('2.5.29.15', true, der.tlv(0x03, Buffer.from([0x05, 0xa0]))), // keyUsage: digitalSignature, keyEncipherment
      extension('2.5.29.37', false, der.seq(der.oid('1.3.6.1.5.5.7.3.1'))), // extKeyUsage: serverAuth
      extension('2.5.29.17', false, der.seq(...sans)), // subjectAltName
      extension('2.5.29.14', false, der.tlv(0x04, createHash('sha1').update(publicKey.export({ type: 'spki', format: 'der' })).digest())), // subjectKeyIdentifier
    )),
  );
  const signature = sign('sha256', tbs, { key: privateKey, dsaEncoding: 'der' });
  const certificate = der.seq(tbs, ecdsaWithSha256, der.tlv(0x03, Buffer.concat([Buffer.from([0]), signature])));
  return {
    cert: pem(certificate, 'CERTIFICATE'),
    key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}

export function pem(bytes: Buffer, label: string): string {
  const lines = bytes.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

/** The few DER encodings a certificate (or a certificate request, src/kube/certificates/csr.ts) needs. */
export const der = {
  tlv(tag: number, content: Buffer): Buffer {
    const n = content.length;
    const length = n < 0x80 ? Buffer.from([n]) : (() => {
      const bytes: number[] = [];
      for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
      return Buffer.from([0x80 | bytes.length, ...bytes]);
    })();
    return Buffer.concat([Buffer.from([tag]), length, content]);
  },
  seq: (...items: Buffer[]) => der.tlv(0x30, Buffer.concat(items)),
  set: (...items: Buffer[]) => der.tlv(0x31, Buffer.concat(items)),
  int: (bytes: Buffer) => der.tlv(0x02, bytes[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), bytes]) : bytes),
  utf8: (text: string) => der.tlv(0x0c, Buffer.from(text, 'utf8')),
  oid(dotted: string): Buffer {
    const [a, b, ...rest] = dotted.split('.').map(Number);
    const out = [40 * a! + b!];
    for (const arc of rest) {
      const septets: number[] = [];
      for (let v = arc; ; v = Math.floor(v / 128)) {
        septets.unshift((v & 0x7f) | (septets.length ? 0x80 : 0));
        if (v < 128) break;
      }
      out.push(...septets);
    }
    return der.tlv(0x06, Buffer.from(out));
  },
  /** UTCTime through 2049, GeneralizedTime after, as RFC 5280 wants. */
  time(d: Date): Buffer {
    const iso = d.toISOString().replace(/\.\d{3}/, '').replace(/[-:T]/g, ''); // YYYYMMDDHHMMSSZ
    return d.getUTCFullYear() < 2050 ? der.tlv(0x17, Buffer.from(iso.slice(2), 'ascii')) : der.tlv(0x18, Buffer.from(iso, 'ascii'));
  },
};

/** An IPv4 or IPv6 address as its 4 or 16 bytes. */
export function ipBytes(ip: string): Buffer {
  if (isIP(ip) === 4) return Buffer.from(ip.split('.').map(Number));
  let text = ip.split('%')[0]!;
  const tail: number[] = [];
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const q = v4[1]!.split('.').map(Number);
    text = `${text.slice(0, -v4[1]!.length)}${((q[0]! << 8) | q[1]!).toString(16)}:${((q[2]! << 8) | q[3]!).toString(16)}`;
  }
  const [head, rest] = text.split('::') as [string, string | undefined];
  const parts = (x: string | undefined) => (x ? x.split(':').filter(Boolean).map((h) => parseInt(h, 16)) : []);
  const left = parts(head);
  const right = parts(rest);
  const groups = rest === undefined ? left : [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right];
  for (const g of groups) tail.push(g >> 8, g & 0xff);
  return Buffer.from(tail);
}

async function readGiven(certFile: string, keyFile: string): Promise<ServingCredentials> {
  let pair: { cert: string; key: string };
  try {
    pair = await readPair(certFile, keyFile);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new ServingCertError(`cannot read the kubelet serving certificate or key: ${e.path ?? ''} ${e.code ?? e.message}`.replace(/\s+/g, ' '));
  }
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pair.cert);
  } catch (err) {
    throw new ServingCertError(`${certFile} is not a PEM certificate: ${(err as Error).message}`);
  }
  let matches: boolean;
  try {
    matches = cert.checkPrivateKey(createPrivateKey(pair.key));
  } catch (err) {
    throw new ServingCertError(`${keyFile} is not a PEM private key: ${(err as Error).message}`);
  }
  if (!matches) throw new ServingCertError(`${keyFile} is not the key of the certificate in ${certFile}`);
  return credentials(pair.cert, pair.key, 'files', certFile, keyFile);
}

async function readPair(certFile: string, keyFile: string): Promise<{ cert: string; key: string }> {
  const [cert, key] = await Promise.all([readFile(certFile, 'utf8'), readFile(keyFile, 'utf8')]);
  return { cert, key };
}

function credentials(cert: string, key: string, source: ServingCredentials['source'], certFile: string, keyFile: string): ServingCredentials {
  const x = new X509Certificate(cert);
  return { cert, key, source, certFile, keyFile, notAfter: new Date(x.validTo), fingerprint: x.fingerprint256 };
}

async function writeAtomic(file: string, text: string, mode: number): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, text, { mode });
  await chmod(tmp, mode);
  await rename(tmp, file);
}

/** The client CA bundle: every certificate in the PEM file. */
export async function readCaBundle(file: string): Promise<X509Certificate[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ServingCertError(`cannot read kubeletClientCaFile ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  const certs: X509Certificate[] = [];
  for (const block of blocks) {
    try {
      certs.push(new X509Certificate(block));
    } catch (err) {
      throw new ServingCertError(`kubeletClientCaFile ${file} holds a certificate that cannot be read: ${(err as Error).message}`);
    }
  }
  if (certs.length === 0) throw new ServingCertError(`kubeletClientCaFile ${file} holds no PEM certificate`);
  return certs;
}
