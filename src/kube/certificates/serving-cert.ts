// The kubelet API's serving certificate through a CSR (serverTlsBootstrap, the kubelet's
// --server-tls-bootstrap / rotate-server-certificates): signer kubernetes.io/kubelet-serving, subject
// CN=system:node:<name>, O=system:nodes, SANs the node's names and addresses. Nothing in Kubernetes
// approves these CSRs by itself: an admin approves them (kubectl certificate approve) or an approver
// runs. Until one is issued the kubelet API keeps its self-signed certificate; once it is, it goes to
// <certDir>/vmlet-server-current.pem (certificate and key), which the kubelet API serves from then on.
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { readFileIfExists, writeFileAtomic } from '../../host/files.ts';
import type { Logger } from '../../observability/log.ts';
import type { KubeHttp } from '../http.ts';
import { buildCsr, certificateProblem, generateKey, nodeSubject, SERVING_SIGNER, SERVING_USAGES, splitPem } from './csr.ts';
import { RenewalSchedule } from './renewal.ts';
import { requestCertificate } from './request.ts';

export const SERVING_CERT_FILE = 'vmlet-server-current.pem';

/**
 * Why the issued serving certificate in `file` cannot be served (missing, unreadable, expired, its key
 * does not match, or it does not name every host), or undefined when it can.
 */
export async function servingCertProblem(file: string, hosts: readonly string[], now = Date.now()): Promise<string | undefined> {
  const text = await readFileIfExists(file).catch((err: Error) => `unreadable: ${err.message}`);
  if (text === undefined) return `${file} does not exist`;
  const { cert, key } = splitPem(text);
  const problem = certificateProblem(cert, now);
  if (problem) return `${file}: ${problem}`;
  if (!key) return `${file} holds no private key`;
  const x = new X509Certificate(cert!);
  try {
    if (!x.checkPrivateKey(createPrivateKey(key))) return `${file}: the key does not match the certificate`;
  } catch (err) {
    return `${file}: its key cannot be read: ${(err as Error).message}`;
  }
  const missing = hosts.filter((h) => (isIP(h) ? !x.checkIP(h) : !x.checkHost(h)));
  if (missing.length > 0) return `${file} does not name ${missing.join(', ')}`;
  return undefined;
}

export interface ServingCertManagerOptions {
  /** The node's client (CSRs for kubelet-serving must come from the node itself). */
  http: KubeHttp;
  certDir: string;
  nodeName: string;
  /** The node's DNS names and IP addresses: the certificate's SANs. */
  hosts: readonly string[];
  log: Logger;
  /** Called after a new certificate was written: the kubelet API loads it. */
  issued(): Promise<void> | void;
  random?: () => number;
}

export class ServingCertManager extends RenewalSchedule {
  readonly file: string;

  constructor(private readonly o: ServingCertManagerOptions) {
    super({ log: o.log, what: 'kubelet serving certificate', ...(o.random ? { random: o.random } : {}) });
    this.file = path.join(o.certDir, SERVING_CERT_FILE);
  }

  /** Requests a certificate now when there is no usable one, else schedules its rotation. Does not wait for approval. */
  async start(): Promise<void> {
    const problem = await servingCertProblem(this.file, this.o.hosts);
    if (problem) {
      this.o.log.info({ reason: problem }, 'requesting a kubelet serving certificate; the self-signed one is served until it is issued');
      this.at(Date.now());
    } else {
      this.schedule(splitPem((await readFileIfExists(this.file))!).cert!);
    }
  }

  protected async renew(): Promise<string> {
    const { log } = this.o;
    const key = generateKey();
    const cert = await requestCertificate(this.o.http, {
      generateName: 'csr-',
      request: buildCsr({ privateKey: key, subject: nodeSubject(this.o.nodeName), hosts: this.o.hosts }),
      signerName: SERVING_SIGNER,
      usages: SERVING_USAGES,
    }, {
      signal: this.stopper.signal,
      pending: (name) => log.info({ csr: name, signerName: SERVING_SIGNER, hosts: this.o.hosts },
        `waiting for kubelet serving CSR ${name} to be approved; nothing in Kubernetes approves these by itself: kubectl certificate approve ${name}`),
      approved: (name) => log.info({ csr: name }, `CSR ${name} approved; waiting for the signer to issue the certificate`),
    });
    await mkdir(this.o.certDir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.file, `${cert.trimEnd()}\n${key.export({ type: 'pkcs8', format: 'pem' }).toString().trimEnd()}\n`, 0o600);
    log.info({ file: this.file, notAfter: new X509Certificate(cert).validTo }, 'kubelet serving certificate issued');
    await this.o.issued();
    return cert;
  }
}
