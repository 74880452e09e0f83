// Kubelet TLS bootstrapping against a real control plane: kube-apiserver with --enable-bootstrap-token-auth
// and kube-controller-manager running the real certificates controllers (csrapproving, csrsigning,
// csrcleaner). vmlet starts with nothing but a bootstrap kubeconfig (a bootstrap token), sends a CSR that
// the csrapproving controller approves under the RBAC that kubeadm sets up, and joins as
// system:node:<name>; a restart reuses the certificate; a kubelet-serving CSR approved with the real
// `kubectl certificate approve` becomes the kubelet API's certificate; a CSR denied with
// `kubectl certificate deny` stops vmlet with an error naming it.
import 'reflect-metadata';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, test } from 'node:test';
import * as x509 from '@peculiar/x509';
import { stringify } from 'yaml';
import { startCluster, type Cluster } from '../harness/cluster.ts';
import { ControllerManager } from '../harness/controller-manager.ts';
import { waitFor } from '../harness/processes.ts';
import { killVmProcessesUnder, VmletProcess } from '../harness/vmlet.ts';

// Auto-approved: its extra group is bound to the nodeclient ClusterRole. The manual one is not.
const TOKEN = { id: 'abcdef', secret: '0123456789abcdef', group: 'system:bootstrappers:vmlet' };
const MANUAL_TOKEN = { id: 'manual', secret: 'fedcba9876543210', group: 'system:bootstrappers:vmlet-manual' };

interface Csr {
  metadata: { name: string; creationTimestamp: string };
  spec: { signerName: string; username: string; groups?: string[]; usages: string[]; request: string };
  status?: { conditions?: Array<{ type: string; status: string; reason?: string; message?: string }>; certificate?: string };
}

let cluster: Cluster;
let kcm: ControllerManager;
const vmlets: VmletProcess[] = [];

before(async () => {
  cluster = await startCluster({ bootstrapTokenAuth: true });
  try {
    kcm = await ControllerManager.start(cluster);
    const apply = await cluster.kubectl(['apply', '-f', '-'], { input: bootstrapObjects() });
    assert.equal(apply.code, 0, apply.stderr);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
});

after(async () => {
  for (const v of vmlets) {
    await v.stop();
    await killVmProcessesUnder(v.dir);
  }
  await kcm?.stop();
  await cluster?.stop();
});

/** What `kubeadm init` sets up for joining nodes: bootstrap token Secrets and the CSR RBAC. */
function bootstrapObjects(): string {
  const token = (t: typeof TOKEN) => ({
    apiVersion: 'v1', kind: 'Secret', type: 'bootstrap.kubernetes.io/token',
    metadata: { name: `bootstrap-token-${t.id}`, namespace: 'kube-system' },
    stringData: { 'token-id': t.id, 'token-secret': t.secret, 'usage-bootstrap-authentication': 'true', 'auth-extra-groups': t.group },
  });
  const binding = (name: string, role: string, group: string) => ({
    apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRoleBinding', metadata: { name },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: role },
    subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'Group', name: group }],
  });
  return [
    token(TOKEN),
    token(MANUAL_TOKEN),
    // Any bootstrap token may send a CSR...
    binding('vmlet:node-bootstrapper', 'system:node-bootstrapper', 'system:bootstrappers'),
    // ...those of the vmlet token's group are approved by the csrapproving controller...
    binding('vmlet:node-autoapprove-bootstrap', 'system:certificates.k8s.io:certificatesigningrequests:nodeclient', TOKEN.group),
    // ...and so are the renewals nodes ask for with their own certificates.
    binding('vmlet:node-autoapprove-certificate-rotation', 'system:certificates.k8s.io:certificatesigningrequests:selfnodeclient', 'system:nodes'),
  ].map((o) => stringify(o)).join('---\n');
}

async function bootstrapKubeconfig(t: typeof TOKEN): Promise<string> {
  const file = path.join(cluster.dir, `bootstrap-${t.id}.kubeconfig`);
  await writeFile(file, stringify({
    apiVersion: 'v1', kind: 'Config',
    clusters: [{ name: 'test', cluster: { server: cluster.url, 'certificate-authority-data': Buffer.from(cluster.caCert).toString('base64') } }],
    users: [{ name: 'tls-bootstrap-token-user', user: { token: `${t.id}.${t.secret}` } }],
    contexts: [{ name: 'bootstrap', context: { cluster: 'test', user: 'tls-bootstrap-token-user' } }],
    'current-context': 'bootstrap',
  }), { mode: 0o600 });
  return file;
}

async function csrs(): Promise<Csr[]> {
  const res = await cluster.kubectl(['get', 'csr', '-o', 'json']);
  assert.equal(res.code, 0, res.stderr);
  return (JSON.parse(res.stdout) as { items: Csr[] }).items;
}

async function startVmlet(node: string, args: string[]): Promise<VmletProcess> {
  const vmlet = await VmletProcess.start({ kubeconfig: undefined, nodeName: node, dir: path.join(cluster.dir, node), args });
  vmlets.push(vmlet);
  return vmlet;
}

const condition = (csr: Csr, type: string) => csr.status?.conditions?.find((c) => c.type === type && c.status === 'True');

test('a node joins with a bootstrap token: its CSR is auto-approved and signed, and it registers as system:node:<name>', async () => {
  const NODE = 'tls-bootstrap-node';
  const vmlet = await startVmlet(NODE, [`--bootstrap-kubeconfig=${await bootstrapKubeconfig(TOKEN)}`]);
  await vmlet.waitUntilUp(120_000);

  const clientCsrs = (await csrs()).filter((c) => c.spec.signerName === 'kubernetes.io/kube-apiserver-client-kubelet');
  assert.equal(clientCsrs.length, 1, JSON.stringify(clientCsrs.map((c) => c.metadata.name)));
  const csr = clientCsrs[0]!;
  assert.match(csr.metadata.name, /^node-csr-[A-Za-z0-9_-]+$/);
  assert.equal(csr.spec.username, `system:bootstrap:${TOKEN.id}`);
  assert.ok(csr.spec.groups?.includes(TOKEN.group));
  assert.deepEqual([...csr.spec.usages].sort(), ['client auth', 'digital signature']);
  const request = new x509.Pkcs10CertificateRequest(Buffer.from(csr.spec.request, 'base64').toString('utf8'));
  assert.equal(request.subjectName.getField('CN')[0], `system:node:${NODE}`);
  assert.deepEqual(request.subjectName.getField('O'), ['system:nodes']);
  // Approved by kube-controller-manager's csrapproving controller, not by anyone else.
  assert.equal(condition(csr, 'Approved')?.reason, 'AutoApproved');
  assert.ok(csr.status?.certificate, 'the CSR has its certificate');
  const waiting = (await vmlet.logs()).find((l) => l.csr === csr.metadata.name && /waiting for CSR/.test(l.msg));
  assert.ok(waiting, 'vmlet logged that it waits for the CSR');
  assert.match(waiting.msg, new RegExp(`kubectl certificate approve ${csr.metadata.name}`));

  // The kubeconfig vmlet wrote uses the issued certificate, from the cluster CA, for system:node:<name>.
  const kubeconfig = await readFile(path.join(vmlet.dir, 'cache', 'vmlet.kubeconfig'), 'utf8');
  const certFile = /client-certificate: (.+)/.exec(kubeconfig)?.[1]?.trim();
  assert.equal(certFile, path.join(vmlet.dir, 'cache', 'pki', 'vmlet-client-current.pem'));
  const pem = await readFile(certFile ?? '', 'utf8');
  assert.match(pem, /BEGIN PRIVATE KEY/);
  const cert = new X509Certificate(pem);
  assert.equal(cert.subject.split('\n').find((l) => l.startsWith('CN=')), `CN=system:node:${NODE}`);
  assert.ok(cert.verify(new X509Certificate(cluster.caCert).publicKey), 'signed by the cluster CA');

  // The Node is Ready, and the API server saw system:node:<name> register it (audit log).
  await waitFor('Node Ready', async () => {
    const res = await cluster.kubectl(['get', 'node', NODE, '-o', 'json']);
    if (res.code !== 0) return undefined;
    const node = JSON.parse(res.stdout) as { status: { conditions: Array<{ type: string; status: string }> } };
    return node.status.conditions.some((c) => c.type === 'Ready' && c.status === 'True') ? true : undefined;
  }, { timeoutMs: 60_000 });
  const audit = (await readFile(cluster.auditLogFile, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as {
    verb: string; user: { username: string }; objectRef?: { resource?: string; name?: string }; responseStatus?: { code?: number };
  });
  const created = audit.find((e) => e.verb === 'create' && e.objectRef?.resource === 'nodes' && e.responseStatus?.code === 201);
  assert.equal(created?.user.username, `system:node:${NODE}`);

  // A restart finds a usable certificate: no new CSR.
  await vmlet.stop();
  const again = await startVmlet(NODE, [`--bootstrap-kubeconfig=${await bootstrapKubeconfig(TOKEN)}`]);
  await again.waitUntilUp(120_000);
  assert.ok((await again.logs()).some((l) => /no TLS bootstrap needed/.test(l.msg)));
  assert.equal((await csrs()).filter((c) => c.spec.signerName === 'kubernetes.io/kube-apiserver-client-kubelet').length, 1);
  await again.stop();
});

test('with --server-tls-bootstrap the kubelet API serves the certificate of an approved kubelet-serving CSR', async () => {
  const NODE = 'tls-serving-node';
  const vmlet = await startVmlet(NODE, [`--bootstrap-kubeconfig=${await bootstrapKubeconfig(TOKEN)}`, '--server-tls-bootstrap']);
  await vmlet.waitUntilUp(120_000);
  const port = Number(new URL(vmlet.kubeletUrl).port);

  const csr = await waitFor('a kubelet-serving CSR', async () =>
    (await csrs()).find((c) => c.spec.signerName === 'kubernetes.io/kubelet-serving' && c.spec.username === `system:node:${NODE}`), { timeoutMs: 60_000, process: vmlet.proc });
  assert.deepEqual([...csr.spec.usages].sort(), ['digital signature', 'server auth']);
  const request = new x509.Pkcs10CertificateRequest(Buffer.from(csr.spec.request, 'base64').toString('utf8'));
  assert.equal(request.subjectName.getField('CN')[0], `system:node:${NODE}`);
  assert.deepEqual(request.subjectName.getField('O'), ['system:nodes']);
  const san = request.extensions.find((e): e is x509.SubjectAlternativeNameExtension => e instanceof x509.SubjectAlternativeNameExtension);
  const sans = san?.names.toJSON() ?? [];
  assert.ok(sans.some((n) => n.type === 'ip' && n.value === '127.0.0.1'), JSON.stringify(sans));
  assert.ok(sans.some((n) => n.type === 'dns' && n.value === NODE), JSON.stringify(sans));
  // Nothing approves kubelet-serving CSRs on its own: until someone does, the self-signed certificate is served.
  assert.equal(condition(csr, 'Approved'), undefined);
  assert.notEqual((await peerCertificate(port)).issuer, new X509Certificate(cluster.caCert).subject);

  const approve = await cluster.kubectl(['certificate', 'approve', csr.metadata.name]);
  assert.equal(approve.code, 0, approve.stderr);
  // Trusting only the cluster CA, the handshake succeeds once the issued certificate is served.
  const served = await waitFor('the kubelet API to serve the CA-signed certificate', async () => {
    const cert = await peerCertificate(port, cluster.caCert);
    return cert;
  }, { timeoutMs: 60_000, process: vmlet.proc });
  assert.equal(served.subject.split('\n').find((l) => l.startsWith('CN=')), `CN=system:node:${NODE}`);
  assert.ok(served.checkIP('127.0.0.1'));
  assert.ok((await vmlet.logs()).some((l) => l.msg === 'kubelet serving certificate issued'));
  await vmlet.stop();
});

test('a denied CSR stops vmlet with an error that names it', async () => {
  const NODE = 'tls-denied-node';
  const vmlet = await startVmlet(NODE, [`--bootstrap-kubeconfig=${await bootstrapKubeconfig(MANUAL_TOKEN)}`]);
  const csr = await waitFor('the pending client CSR', async () =>
    (await csrs()).find((c) => c.spec.username === `system:bootstrap:${MANUAL_TOKEN.id}`), { timeoutMs: 60_000, process: vmlet.proc });
  assert.equal(condition(csr, 'Approved'), undefined, 'not auto-approved: its group has no nodeclient binding');
  const deny = await cluster.kubectl(['certificate', 'deny', csr.metadata.name]);
  assert.equal(deny.code, 0, deny.stderr);
  const status = await vmlet.proc.exited;
  assert.equal(status.code, 1);
  const log = await readFile(vmlet.proc.logFile, 'utf8');
  assert.match(log, new RegExp(`vmlet: TLS bootstrap failed: CertificateSigningRequest ${csr.metadata.name} was denied \\(KubectlDeny`));
});

/** The certificate the kubelet API presents; with a CA, only one that chains to it (else the handshake fails). */
function peerCertificate(port: number, ca?: string): Promise<X509Certificate> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ...(ca ? { ca } : { rejectUnauthorized: false }) }, () => {
      const cert = socket.getPeerX509Certificate();
      socket.destroy();
      if (cert) resolve(cert);
      else reject(new Error('no peer certificate'));
    });
    socket.once('error', reject);
  });
}
