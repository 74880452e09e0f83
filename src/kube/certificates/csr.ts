// The pure parts of kubelet TLS bootstrapping: PKCS#10 certificate requests built as DER here (the same
// encoder as the self-signed serving certificate, src/kubelet/auth/tls.ts, not @peculiar/x509: see there
// why), the names and subjects the kubelet gives its CSRs, and when a certificate is due for rotation.
import { createHash, createPublicKey, generateKeyPairSync, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import { der, ipBytes, pem } from '../../kubelet/auth/tls.ts';

/** The signer of node client certificates, which kube-controller-manager's csrapproving controller auto-approves. */
export const CLIENT_SIGNER = 'kubernetes.io/kube-apiserver-client-kubelet';
/** The signer of kubelet serving certificates: nothing in Kubernetes approves these on its own. */
export const SERVING_SIGNER = 'kubernetes.io/kubelet-serving';
export const CLIENT_USAGES = ['digital signature', 'client auth'] as const;
export const SERVING_USAGES = ['digital signature', 'server auth'] as const;

export interface CsrSubject {
  commonName: string;
  organizations: readonly string[];
}

/** CN=system:node:<name>, O=system:nodes: the identity the Node authorizer and NodeRestriction know. */
export function nodeSubject(nodeName: string): CsrSubject {
  return { commonName: `system:node:${nodeName}`, organizations: ['system:nodes'] };
}

/** A fresh ECDSA P-256 key, as the kubelet makes for its CSRs. */
export function generateKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
}

export interface CsrRequest {
  privateKey: KeyObject;
  subject: CsrSubject;
  /** Subject alternative names (serving certificates): DNS names and IP addresses, told apart by form. */
  hosts?: readonly string[];
}

/** A PKCS#10 certificate request (PEM "CERTIFICATE REQUEST") signed with the EC key. */
export function buildCsr(req: CsrRequest): string {
  if (req.privateKey.asymmetricKeyType !== 'ec') throw new Error('certificate requests are made with EC keys');
  const spki = createPublicKey(req.privateKey).export({ type: 'spki', format: 'der' });
  // Go's pkix.Name orders O before CN; the apiserver reads them by type, not position.
  const rdn = (oid: string, value: string) => der.set(der.seq(der.oid(oid), der.utf8(value)));
  const subject = der.seq(...req.subject.organizations.map((o) => rdn('2.5.4.10', o)), rdn('2.5.4.3', req.subject.commonName));
  const hosts = req.hosts ?? [];
  const attributes = hosts.length === 0
    ? Buffer.alloc(0)
    : der.seq(
        der.oid('1.2.840.113549.1.9.14'), // extensionRequest
        der.set(der.seq(der.seq(der.oid('2.5.29.17'), der.tlv(0x04, der.seq(...hosts.map(generalName)))))),
      );
  const info = der.seq(der.int(Buffer.from([0])), subject, spki, der.tlv(0xa0, attributes));
  const ecdsaWithSha256 = der.seq(der.oid('1.2.840.10045.4.3.2'));
  const signature = sign('sha256', info, { key: req.privateKey, dsaEncoding: 'der' });
  return pem(der.seq(info, ecdsaWithSha256, der.tlv(0x03, Buffer.concat([Buffer.from([0]), signature]))), 'CERTIFICATE REQUEST');
}

function generalName(host: string): Buffer {
  return isIP(host) ? der.tlv(0x87, ipBytes(host)) : der.tlv(0x82, Buffer.from(host, 'ascii'));
}

/**
 * The kubelet's name for its bootstrap CSR: node-csr-<digest of the public key, subject and usages>, so
 * that a restart while the request waits for approval finds the same CSR instead of making another.
 */
export function bootstrapCsrName(privateKey: KeyObject, subject: CsrSubject, usages: readonly string[]): string {
  const hash = createHash('sha256');
  hash.update(createPublicKey(privateKey).export({ type: 'spki', format: 'der' }));
  hash.update(`\0${subject.commonName}\0${subject.organizations.join(',')}\0${usages.join(',')}`);
  return `node-csr-${hash.digest('base64url')}`;
}

/**
 * When to ask for the next certificate: at a random point between 70 % and 90 % of the certificate's
 * life, as the kubelet's certificate manager does, so that a fleet does not renew all at once.
 */
export function rotationDeadline(notBefore: Date, notAfter: Date, random: number = Math.random()): Date {
  const total = notAfter.getTime() - notBefore.getTime();
  return new Date(notBefore.getTime() + total * (0.7 + 0.2 * Math.min(Math.max(random, 0), 1)));
}

/** The first certificate and the private key of a PEM bundle (the -current.pem files hold both). */
export function splitPem(text: string): { cert?: string; key?: string } {
  const cert = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(text)?.[0];
  const key = /-----BEGIN (?:EC |RSA )?PRIVATE KEY-----[\s\S]+?-----END (?:EC |RSA )?PRIVATE KEY-----/.exec(text)?.[0];
  return { ...(cert ? { cert: `${cert}\n` } : {}), ...(key ? { key: `${key}\n` } : {}) };
}

/** Why a certificate cannot be used (unreadable, not yet valid, expired), or undefined when it can. */
export function certificateProblem(certPem: string | undefined, now: number = Date.now()): string | undefined {
  if (!certPem) return 'it holds no certificate';
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (err) {
    return `its certificate cannot be read: ${(err as Error).message}`;
  }
  if (Date.parse(cert.validTo) <= now) return `its certificate expired ${cert.validTo}`;
  if (Date.parse(cert.validFrom) > now) return `its certificate is not valid before ${cert.validFrom}`;
  return undefined;
}
