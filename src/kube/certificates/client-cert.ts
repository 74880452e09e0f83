// The node's client certificate by kubelet TLS bootstrapping (--bootstrap-kubeconfig): when the node's
// kubeconfig is missing or its certificate expired or unreadable, a CSR for CN=system:node:<name>,
// O=system:nodes is sent with the bootstrap credentials (a bootstrap token), and once it is approved and
// signed, the key and certificate go to <certDir>/vmlet-client-current.pem and the node's kubeconfig is
// written to point at that file. ClientCertRotator then renews the certificate with the node's own
// credentials at 70-90 % of its life and swaps it into the running client.
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';
import { readFileIfExists, writeFileAtomic } from '../../host/files.ts';
import type { Logger } from '../../observability/log.ts';
import { KubeHttp } from '../http.ts';
import { KubeconfigError, loadKubeconfig, type ClusterAccess } from '../kubeconfig.ts';
import {
  bootstrapCsrName, buildCsr, certificateProblem, CLIENT_SIGNER, CLIENT_USAGES, generateKey, nodeSubject, splitPem,
} from './csr.ts';
import { RenewalSchedule } from './renewal.ts';
import { requestCertificate } from './request.ts';

export const CLIENT_CERT_FILE = 'vmlet-client-current.pem';
// The key of a CSR still waiting for approval: kept so that a restart finds the same CSR (same name).
const PENDING_KEY_FILE = 'vmlet-client.key.pending';

export interface ClientBootstrapOptions {
  /** The node's kubeconfig: read when usable, else written. */
  kubeconfig: string;
  bootstrapKubeconfig: string;
  certDir: string;
  nodeName: string;
  log: Logger;
  signal?: AbortSignal;
}

/** Why the node's kubeconfig cannot be used as it is, or undefined when it can (the kubelet's isClientConfigStillValid). */
export async function nodeKubeconfigProblem(file: string, now = Date.now()): Promise<string | undefined> {
  if ((await readFileIfExists(file)) === undefined) return `${file} does not exist`;
  let access: ClusterAccess;
  try {
    access = loadKubeconfig(file);
  } catch (err) {
    return (err as Error).message;
  }
  // Credentials other than a client certificate (a token...) are not ours to judge.
  if (!access.cert) return undefined;
  const problem = certificateProblem(splitPem(access.cert.toString('utf8')).cert, now);
  return problem ? `kubeconfig ${file}: ${problem}` : undefined;
}

/**
 * Makes sure the node's kubeconfig holds a usable client certificate, bootstrapping one when it does not.
 * Returns whether a certificate was issued now. Throws CsrRefusedError when the CSR is denied or fails.
 */
export async function bootstrapClientCertificate(o: ClientBootstrapOptions): Promise<boolean> {
  const { log } = o;
  const problem = await nodeKubeconfigProblem(o.kubeconfig);
  if (!problem) {
    log.info({ kubeconfig: o.kubeconfig }, 'the node kubeconfig is usable; no TLS bootstrap needed');
    return false;
  }
  log.info({ reason: problem, bootstrapKubeconfig: o.bootstrapKubeconfig }, 'requesting a client certificate with the bootstrap kubeconfig');
  const bootstrap = loadKubeconfig(o.bootstrapKubeconfig);
  await mkdir(o.certDir, { recursive: true, mode: 0o700 });
  const pendingKeyFile = path.join(o.certDir, PENDING_KEY_FILE);
  const key = await pendingKey(pendingKeyFile);
  const subject = nodeSubject(o.nodeName);
  const http = new KubeHttp(bootstrap);
  let cert: string;
  try {
    cert = await requestCertificate(http, {
      name: bootstrapCsrName(key, subject, CLIENT_USAGES),
      request: buildCsr({ privateKey: key, subject }),
      signerName: CLIENT_SIGNER,
      usages: CLIENT_USAGES,
    }, {
      signal: o.signal,
      pending: (name, created) => log.info({ csr: name, signerName: CLIENT_SIGNER, created },
        `waiting for CSR ${name} to be approved; a csrapproving controller with the bootstrap RBAC approves it, else approve it with: kubectl certificate approve ${name}`),
      approved: (name) => log.info({ csr: name }, `CSR ${name} approved; waiting for the signer to issue the certificate`),
    });
  } finally {
    http.close();
  }
  const keyPem = key.export({ type: 'pkcs8', format: 'pem' }).toString();
  const certFile = await writeClientCertificate(o.certDir, cert, keyPem);
  await writeNodeKubeconfig(o.kubeconfig, bootstrap, certFile);
  await rm(pendingKeyFile, { force: true });
  const x = new X509Certificate(cert);
  log.info({ subject: x.subject.replace(/\n/g, ', '), notAfter: x.validTo, certFile, kubeconfig: o.kubeconfig }, 'client certificate issued; node kubeconfig written');
  return true;
}

async function pendingKey(file: string): Promise<KeyObject> {
  const stored = await readFileIfExists(file);
  if (stored) {
    try {
      return createPrivateKey(stored);
    } catch {
      // unreadable: make another
    }
  }
  const key = generateKey();
  await writeFileAtomic(file, key.export({ type: 'pkcs8', format: 'pem' }).toString(), 0o600);
  return key;
}

/** Writes certificate and key into one file, as the kubelet's kubelet-client-current.pem; returns its path. */
export async function writeClientCertificate(certDir: string, cert: string, key: string): Promise<string> {
  const file = path.join(certDir, CLIENT_CERT_FILE);
  await mkdir(certDir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, `${cert.trimEnd()}\n${key.trimEnd()}\n`, 0o600);
  return file;
}

/** The node's kubeconfig: the bootstrap kubeconfig's server and CA, and the issued certificate by file. */
export async function writeNodeKubeconfig(file: string, bootstrap: ClusterAccess, certFile: string): Promise<void> {
  const cluster: Record<string, unknown> = { server: bootstrap.server };
  if (bootstrap.ca) cluster['certificate-authority-data'] = bootstrap.ca.toString('base64');
  if (bootstrap.insecureSkipTLSVerify) cluster['insecure-skip-tls-verify'] = true;
  if (bootstrap.tlsServerName) cluster['tls-server-name'] = bootstrap.tlsServerName;
  const text = stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'default-cluster', cluster }],
    users: [{ name: 'default-auth', user: { 'client-certificate': certFile, 'client-key': certFile } }],
    contexts: [{ name: 'default-context', context: { cluster: 'default-cluster', user: 'default-auth' } }],
    'current-context': 'default-context',
  });
  await mkdir(path.dirname(file), { recursive: true });
  await writeFileAtomic(file, text, 0o600);
}

export interface RotatorOptions {
  http: KubeHttp;
  certFile: string;
  certDir: string;
  nodeName: string;
  log: Logger;
  random?: () => number;
}

/**
 * Renews the client certificate in certFile before it expires, with the node's current credentials
 * (the selfnodeclient auto-approval covers it), and hands the new one to the running client.
 */
export class ClientCertRotator extends RenewalSchedule {
  constructor(private readonly o: RotatorOptions) {
    super({ log: o.log, what: 'client certificate', ...(o.random ? { random: o.random } : {}) });
  }

  /** Whether a kubeconfig's credentials are the certificate this rotator manages. */
  static manages(access: ClusterAccess, certDir: string): boolean {
    return access.certFile === path.resolve(certDir, CLIENT_CERT_FILE);
  }

  async start(): Promise<void> {
    const text = await readFileIfExists(this.o.certFile);
    const { cert } = splitPem(text ?? '');
    if (!cert) throw new KubeconfigError(`${this.o.certFile} holds no certificate`);
    this.schedule(cert);
  }

  protected async renew(): Promise<string> {
    const { log } = this.o;
    const key = generateKey();
    const cert = await requestCertificate(this.o.http, {
      generateName: 'csr-',
      request: buildCsr({ privateKey: key, subject: nodeSubject(this.o.nodeName) }),
      signerName: CLIENT_SIGNER,
      usages: CLIENT_USAGES,
    }, {
      signal: this.stopper.signal,
      pending: (name) => log.info({ csr: name }, `rotating the client certificate: waiting for CSR ${name} to be approved (kubectl certificate approve ${name})`),
    });
    const keyPem = key.export({ type: 'pkcs8', format: 'pem' }).toString();
    await writeClientCertificate(this.o.certDir, cert, keyPem);
    this.o.http.setClientCertificate(Buffer.from(cert), Buffer.from(keyPem));
    log.info({ notAfter: new X509Certificate(cert).validTo }, 'client certificate rotated');
    return cert;
  }
}
