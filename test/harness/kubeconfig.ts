// Writes kubeconfig files with the CA and client certificate embedded, so a file alone is enough to
// reach the test cluster (kubectl, @kubernetes/client-node, or the agent under test).
import { writeFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import type { CertificatePem } from './pki.ts';

export interface KubeconfigParams {
  server: string;
  caCert: string;
  client: CertificatePem;
  /** Used for the cluster, user and context names; shows up in kubectl's messages. */
  name?: string;
}

/** Renders a kubeconfig (YAML) with one cluster, one user and one current context. */
export function renderKubeconfig(p: KubeconfigParams): string {
  const name = p.name ?? 'vmlet-test';
  const b64 = (pem: string): string => Buffer.from(pem).toString('base64');
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name, cluster: { server: p.server, 'certificate-authority-data': b64(p.caCert) } }],
    users: [{ name, user: { 'client-certificate-data': b64(p.client.cert), 'client-key-data': b64(p.client.key) } }],
    contexts: [{ name, context: { cluster: name, user: name } }],
    'current-context': name,
  });
}

/** Writes the kubeconfig to file, readable by its owner only (it holds a private key). */
export async function writeKubeconfig(file: string, p: KubeconfigParams): Promise<string> {
  await writeFile(file, renderKubeconfig(p), { mode: 0o600 });
  return file;
}
