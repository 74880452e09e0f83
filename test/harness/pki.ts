// Test PKI built with @peculiar/x509 on Node's WebCrypto: a CA that issues client certificates for any
// Kubernetes identity (CN = user, O = groups) and serving certificates for any IP/DNS names.
// ECDSA P-256 throughout: Go's TLS and x509 (apiserver, kubectl, registry) and Node all accept it, and
// keys are generated in milliseconds where RSA-2048 takes a noticeable, variable while.
// @peculiar/x509 2.x resolves its internals with tsyringe, which needs a Reflect metadata polyfill
// loaded before it; ESM evaluates imports in order, so this one must stay first.
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto);

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
// Starting validity a day in the past absorbs clock skew between this process and the children
// that check the certificates.
const BACKDATE_MS = 24 * 3600_000;
const VALIDITY_MS = 365 * 24 * 3600_000;

/** A certificate and its private key, both PEM (the key as PKCS#8 "PRIVATE KEY"). */
export interface CertificatePem {
  cert: string;
  key: string;
}

/** A certificate and key written to disk, for tools that take file paths. */
export interface CertificateFiles extends CertificatePem {
  certFile: string;
  keyFile: string;
}

export class CertificateAuthority {
  private constructor(
    private readonly certificate: x509.X509Certificate,
    private readonly keys: webcrypto.CryptoKeyPair,
    /** The CA certificate (PEM), to trust. */
    readonly cert: string,
    /** The CA private key (PKCS#8 PEM). */
    readonly key: string,
  ) {}

  static async create(commonName = 'vmlet-test-ca'): Promise<CertificateAuthority> {
    const keys = await generateKeys();
    const certificate = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomSerial(),
      name: [{ CN: [commonName] }],
      ...validity(),
      keys,
      signingAlgorithm: ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
          true,
        ),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    return new CertificateAuthority(certificate, keys, certificatePem(certificate), await privateKeyPem(keys));
  }

  /**
   * A client certificate for a Kubernetes user: the apiserver reads the user name from CN and the
   * groups from O (e.g. "system:node:n1" in "system:nodes", or "admin" in "system:masters").
   */
  async issueClientCert(commonName: string, groups: readonly string[] = []): Promise<CertificatePem> {
    // One RDN per group so each O is its own attribute, exactly as openssl/cfssl would write them.
    const subject: x509.JsonName = [{ CN: [commonName] }, ...groups.map((o) => ({ O: [o] }))];
    return this.issue(subject, [x509.ExtendedKeyUsage.clientAuth], []);
  }

  /** A serving certificate whose SANs are the given IP addresses and DNS names (e.g. "127.0.0.1", "localhost"). */
  async issueServingCert(sans: readonly string[], commonName = sans[0] ?? 'localhost'): Promise<CertificatePem> {
    const names: x509.JsonGeneralName[] = sans.map((s) => ({ type: isIP(s) ? 'ip' : 'dns', value: s }));
    return this.issue([{ CN: [commonName] }], [x509.ExtendedKeyUsage.serverAuth], names);
  }

  private async issue(
    subject: x509.JsonName,
    usages: x509.ExtendedKeyUsage[],
    sans: x509.JsonGeneralName[],
  ): Promise<CertificatePem> {
    const keys = await generateKeys();
    const extensions: x509.Extension[] = [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension(usages, false),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(this.certificate),
    ];
    if (sans.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(sans, false));
    const certificate = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject,
      issuer: this.certificate.subject,
      ...validity(),
      publicKey: keys.publicKey,
      signingKey: this.keys.privateKey,
      signingAlgorithm: ALGORITHM,
      extensions,
    });
    return { cert: certificatePem(certificate), key: await privateKeyPem(keys) };
  }
}

/** A key pair for signing service-account tokens (--service-account-signing-key-file / -key-file). */
export async function createServiceAccountKeys(): Promise<{ publicKey: string; privateKey: string }> {
  const keys = await generateKeys();
  const spki = await webcrypto.subtle.exportKey('spki', keys.publicKey);
  return { publicKey: toPem(spki, 'PUBLIC KEY'), privateKey: await privateKeyPem(keys) };
}

/** Writes <dir>/<name>.crt and <dir>/<name>.key (the key readable by its owner only). */
export async function writeCertificate(dir: string, name: string, pem: CertificatePem): Promise<CertificateFiles> {
  await mkdir(dir, { recursive: true });
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  await writeFile(certFile, pem.cert);
  await writeFile(keyFile, pem.key, { mode: 0o600 });
  return { ...pem, certFile, keyFile };
}

async function generateKeys(): Promise<webcrypto.CryptoKeyPair> {
  return webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']);
}

async function privateKeyPem(keys: webcrypto.CryptoKeyPair): Promise<string> {
  return toPem(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey), 'PRIVATE KEY');
}

// Trailing newline included, so PEMs can be concatenated into bundles as they are.
function certificatePem(certificate: x509.X509Certificate): string {
  return certificate.toString('pem') + '\n';
}

function toPem(der: ArrayBuffer, label: string): string {
  return x509.PemConverter.encode(der, label) + '\n';
}

function validity(): { notBefore: Date; notAfter: Date } {
  const now = Date.now();
  return { notBefore: new Date(now - BACKDATE_MS), notAfter: new Date(now + VALIDITY_MS) };
}

/** 16 random bytes as hex with a first byte in 0x01..0x7f: positive, and minimally DER-encoded. */
function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = ((bytes[0] ?? 1) & 0x7f) | 0x01;
  return Buffer.from(bytes).toString('hex');
}

/** The PKI files a test cluster runs on. */
export interface ClusterPki {
  ca: CertificateAuthority;
  caFile: string;
  /** kube-apiserver's serving certificate. */
  apiserver: CertificateFiles;
  /** CN=admin, O=system:masters: the cluster admin used by the harness and kubectl. */
  admin: CertificateFiles;
  /** The client certificate the apiserver presents to kubelets (logs, exec, port-forward). */
  kubeletClient: CertificateFiles;
  serviceAccountPublicKeyFile: string;
  serviceAccountPrivateKeyFile: string;
}

/** Names the apiserver answers to: loopback, and the in-cluster names of the kubernetes Service. */
export const APISERVER_SANS = [
  '127.0.0.1',
  '::1',
  'localhost',
  'kubernetes',
  'kubernetes.default',
  'kubernetes.default.svc',
  'kubernetes.default.svc.cluster.local',
  '10.0.0.1', // First address of --service-cluster-ip-range: the kubernetes Service's ClusterIP.
];

/** Creates a fresh CA and every certificate and key kube-apiserver needs, as PEM files in dir. */
export async function createClusterPki(dir: string): Promise<ClusterPki> {
  const ca = await CertificateAuthority.create('vmlet-test-cluster-ca');
  await mkdir(dir, { recursive: true });
  const caFile = join(dir, 'ca.crt');
  await writeFile(caFile, ca.cert);
  await writeFile(join(dir, 'ca.key'), ca.key, { mode: 0o600 });
  const [apiserver, admin, kubeletClient, sa] = await Promise.all([
    ca.issueServingCert(APISERVER_SANS, 'kube-apiserver'),
    ca.issueClientCert('admin', ['system:masters']),
    ca.issueClientCert('kube-apiserver-kubelet-client', ['system:masters']),
    createServiceAccountKeys(),
  ]);
  const serviceAccountPublicKeyFile = join(dir, 'sa.pub');
  const serviceAccountPrivateKeyFile = join(dir, 'sa.key');
  await writeFile(serviceAccountPublicKeyFile, sa.publicKey);
  await writeFile(serviceAccountPrivateKeyFile, sa.privateKey, { mode: 0o600 });
  return {
    ca,
    caFile,
    apiserver: await writeCertificate(dir, 'apiserver', apiserver),
    admin: await writeCertificate(dir, 'admin', admin),
    kubeletClient: await writeCertificate(dir, 'apiserver-kubelet-client', kubeletClient),
    serviceAccountPublicKeyFile,
    serviceAccountPrivateKeyFile,
  };
}
