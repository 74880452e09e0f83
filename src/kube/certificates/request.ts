// Asks the API server for a certificate the way the kubelet does: a CertificateSigningRequest
// (certificates.k8s.io/v1), then a watch on it until a signer has put the certificate in its status
// after an approval, or until it is Denied or Failed, which is final and named in the error.
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { ApiError, type KubeHttp } from '../http.ts';

const CSR_PATH = '/apis/certificates.k8s.io/v1/certificatesigningrequests';
// One watch lasts at most this long before it is opened again (the server ends it anyway).
const WATCH_SECONDS = 300;
const REQUEST_TIMEOUT_MS = 10_000;

/** A CSR that will not be signed: denied by someone, failed by the signer, or deleted before either. */
export class CsrRefusedError extends Error {
  override name = 'CsrRefusedError';
  constructor(
    readonly csrName: string,
    readonly condition: 'Denied' | 'Failed' | 'Deleted',
    message: string,
  ) {
    super(message);
  }
}

export interface CsrSpec {
  /** A fixed name (the bootstrap CSR, reused across restarts) or a prefix for the server to complete. */
  name?: string;
  generateName?: string;
  /** PEM "CERTIFICATE REQUEST". */
  request: string;
  signerName: string;
  usages: readonly string[];
}

interface CsrCondition {
  type?: string;
  status?: string;
  reason?: string;
  message?: string;
}

interface CsrObject {
  metadata?: { name?: string; resourceVersion?: string };
  spec?: { request?: string; signerName?: string };
  status?: { conditions?: CsrCondition[]; certificate?: string };
}

export interface CsrWaitHooks {
  /** Called once the CSR exists and waits for approval (created, or found from before a restart). */
  pending?(name: string, created: boolean): void;
  /** Called when the CSR is approved but not yet signed. */
  approved?(name: string): void;
  signal?: AbortSignal;
}

/** Creates the CSR (or finds the one of the same name with the same request) and waits for its certificate (PEM). */
export async function requestCertificate(http: KubeHttp, spec: CsrSpec, hooks: CsrWaitHooks = {}): Promise<string> {
  const body = {
    apiVersion: 'certificates.k8s.io/v1',
    kind: 'CertificateSigningRequest',
    metadata: spec.name ? { name: spec.name } : { generateName: spec.generateName ?? 'csr-' },
    spec: { request: Buffer.from(spec.request).toString('base64'), signerName: spec.signerName, usages: [...spec.usages] },
  };
  let csr: CsrObject;
  let created = true;
  try {
    csr = await http.request<CsrObject>({ method: 'POST', path: CSR_PATH, body, timeoutMs: REQUEST_TIMEOUT_MS, signal: hooks.signal });
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 409 && spec.name)) throw err;
    csr = await http.request<CsrObject>({ method: 'GET', path: `${CSR_PATH}/${spec.name}`, timeoutMs: REQUEST_TIMEOUT_MS, signal: hooks.signal });
    if (csr.spec?.request !== body.spec.request || csr.spec?.signerName !== spec.signerName) {
      throw new Error(`CertificateSigningRequest ${spec.name} exists with another request; delete it (kubectl delete csr ${spec.name}) and start again`);
    }
    created = false;
  }
  const name = csr.metadata!.name!;
  hooks.pending?.(name, created);
  return waitForCertificate(http, name, csr, hooks);
}

/** The certificate once issued; CsrRefusedError when Denied, Failed or deleted. */
async function waitForCertificate(http: KubeHttp, name: string, first: CsrObject, hooks: CsrWaitHooks): Promise<string> {
  let approvedSeen = false;
  /** The certificate, or undefined while it is still to come; throws when it never will. */
  const check = (csr: CsrObject): string | undefined => {
    const conditions = csr.status?.conditions ?? [];
    for (const type of ['Denied', 'Failed'] as const) {
      const c = conditions.find((x) => x.type === type && x.status !== 'False');
      if (c) {
        const detail = [c.reason, c.message].filter(Boolean).join(': ') || 'no reason given';
        throw new CsrRefusedError(name, type, `CertificateSigningRequest ${name} was ${type.toLowerCase()} (${detail})`);
      }
    }
    const approved = conditions.some((x) => x.type === 'Approved' && x.status !== 'False');
    if (approved && csr.status?.certificate) return Buffer.from(csr.status.certificate, 'base64').toString('utf8');
    if (approved && !approvedSeen) {
      approvedSeen = true;
      hooks.approved?.(name);
    }
    return undefined;
  };
  let csr = first;
  let failures = 0;
  for (;;) {
    const cert = check(csr);
    if (cert) return cert;
    const resourceVersion = csr.metadata?.resourceVersion;
    try {
      const res = await http.stream(CSR_PATH, {
        watch: 'true',
        fieldSelector: `metadata.name=${name}`,
        timeoutSeconds: String(WATCH_SECONDS),
        ...(resourceVersion ? { resourceVersion } : {}),
      }, hooks.signal ?? new AbortController().signal);
      try {
        for await (const line of createInterface({ input: res, crlfDelay: Infinity })) {
          if (!line.trim()) continue;
          const event = JSON.parse(line) as { type: string; object: CsrObject & { code?: number } };
          if (event.type === 'ERROR') break; // 410 Gone and such: read the CSR again below
          if (event.type === 'DELETED') throw new CsrRefusedError(name, 'Deleted', `CertificateSigningRequest ${name} was deleted before a certificate was issued`);
          if (event.type === 'BOOKMARK') continue;
          const issued = check(event.object);
          if (issued) return issued;
        }
      } finally {
        res.destroy();
      }
      failures = 0;
    } catch (err) {
      if (err instanceof CsrRefusedError || hooks.signal?.aborted) throw err;
      // The API server went away for a moment: wait a little and look again.
      await sleep(Math.min(1000 * 2 ** failures++, 30_000), undefined, { signal: hooks.signal });
    }
    try {
      csr = await http.request<CsrObject>({ method: 'GET', path: `${CSR_PATH}/${name}`, timeoutMs: REQUEST_TIMEOUT_MS, signal: hooks.signal });
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) throw new CsrRefusedError(name, 'Deleted', `CertificateSigningRequest ${name} was deleted before a certificate was issued`);
      if (hooks.signal?.aborted) throw err;
      await sleep(Math.min(1000 * 2 ** failures++, 30_000), undefined, { signal: hooks.signal });
    }
  }
}
