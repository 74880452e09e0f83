// A real single-node control plane for tests: etcd plus kube-apiserver on loopback ports, with a test
// CA that issues any identity (admin, a node's system:node:<name>, kubelet serving certs).
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Agent } from 'undici';
import { ApiServer } from './apiserver.ts';
import { startEtcd, type Etcd } from './etcd.ts';
import { runCommand, type CommandResult } from './exec.ts';
import { httpGet, tlsAgent } from './https.ts';
import { writeKubeconfig } from './kubeconfig.ts';
import { createClusterPki, writeCertificate } from './pki.ts';
import type { CertificateAuthority, CertificateFiles, ClusterPki } from './pki.ts';
import { createFixtureDir, freePort, removeFixtureDir } from './processes.ts';
import { ensureTestDependencies, type TestBinaries } from './setup.ts';

export interface ClusterOptions {
  /** Fixture directory to use (created if needed, never deleted). Default: a fresh dir under os.tmpdir(). */
  dir?: string;
  /** Binaries to run; default: ensureTestDependencies(). */
  binaries?: TestBinaries;
  /** More kube-apiserver flags. */
  apiServerArgs?: readonly string[];
  /** Authenticate bootstrap tokens (Secrets bootstrap-token-<id> in kube-system): --enable-bootstrap-token-auth. */
  bootstrapTokenAuth?: boolean;
}

export interface KubectlOptions {
  input?: string;
  /** Default: the admin kubeconfig. */
  kubeconfig?: string;
  /** Default 60 s; kubectl is killed past it. */
  timeoutMs?: number;
}

export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const binaries = opts.binaries ?? (await ensureTestDependencies());
  const ownsDir = opts.dir === undefined;
  const dir = opts.dir ?? (await createFixtureDir('vmlet-cluster-'));
  let adminAgent: Agent | undefined;
  let etcd: Etcd | undefined;
  let apiServer: ApiServer | undefined;
  try {
    await mkdir(dir, { recursive: true });
    const pki = await createClusterPki(join(dir, 'pki'));
    adminAgent = tlsAgent({ ca: pki.ca.cert, cert: pki.admin.cert, key: pki.admin.key });
    etcd = await startEtcd(binaries.etcd, dir);
    const port = await freePort();
    apiServer = new ApiServer({ binary: binaries.kubeApiserver, dir, port, etcdUrl: etcd.url, pki, adminAgent, extraArgs: [...(opts.bootstrapTokenAuth ? ['--enable-bootstrap-token-auth'] : []), ...(opts.apiServerArgs ?? [])] });
    await apiServer.start();
    const adminKubeconfig = await writeKubeconfig(join(dir, 'admin.kubeconfig'), {
      server: apiServer.url,
      caCert: pki.ca.cert,
      client: pki.admin,
      name: 'admin',
    });
    return new Cluster({ dir, ownsDir, binaries, pki, etcd, apiServer, adminAgent, adminKubeconfig });
  } catch (err) {
    // Whatever did start is stopped here: the caller gets no Cluster to stop.
    await apiServer?.stop();
    await etcd?.stop();
    await adminAgent?.close();
    if (ownsDir) await removeFixtureDir(dir);
    throw err;
  }
}

interface ClusterParts {
  dir: string;
  ownsDir: boolean;
  binaries: TestBinaries;
  pki: ClusterPki;
  etcd: Etcd;
  apiServer: ApiServer;
  adminAgent: Agent;
  adminKubeconfig: string;
}

export class Cluster {
  /** https://127.0.0.1:<port>; stays the same across stopApiServer/startApiServer. */
  readonly url: string;
  readonly dir: string;
  /** The test CA (PEM file) that signed every certificate here; trust it to reach the apiserver. */
  readonly caFile: string;
  /** The test CA, to issue further certificates. */
  readonly ca: CertificateAuthority;
  /** Kubeconfig (certs embedded) for CN=admin, O=system:masters. */
  readonly adminKubeconfig: string;
  readonly binaries: TestBinaries;
  readonly apiServerLogFile: string;
  /** Metadata-level audit log of every API request. */
  readonly auditLogFile: string;
  private stopping: Promise<void> | undefined;
  private issued = 0;

  constructor(private readonly parts: ClusterParts) {
    this.url = parts.apiServer.url;
    this.dir = parts.dir;
    this.caFile = parts.pki.caFile;
    this.ca = parts.pki.ca;
    this.adminKubeconfig = parts.adminKubeconfig;
    this.binaries = parts.binaries;
    this.apiServerLogFile = parts.apiServer.logFile;
    this.auditLogFile = parts.apiServer.auditLogFile;
  }

  /** The CA certificate (PEM). */
  get caCert(): string {
    return this.ca.cert;
  }

  /** The CA private key's file (a signer's --cluster-signing-key-file). */
  get caKeyFile(): string {
    return join(this.dir, 'pki', 'ca.key');
  }

  /** The CA private key (PKCS#8 PEM), for tests that sign with other tools. */
  get caKey(): string {
    return this.ca.key;
  }

  get kubernetesVersion(): string {
    return this.binaries.kubernetesVersion;
  }

  /** A client certificate (written under dir/pki) for user cn in the given groups. */
  async issueClientCert(cn: string, groups: readonly string[] = []): Promise<CertificateFiles> {
    const pem = await this.ca.issueClientCert(cn, groups);
    return writeCertificate(join(this.dir, 'pki'), this.fileName(`client-${cn}`), pem);
  }

  /** A serving certificate (written under dir/pki) for the given IP addresses and DNS names. */
  async issueServingCert(sans: readonly string[]): Promise<CertificateFiles> {
    const pem = await this.ca.issueServingCert(sans);
    return writeCertificate(join(this.dir, 'pki'), this.fileName(`serving-${sans[0] ?? 'none'}`), pem);
  }

  /**
   * `vmlet run` flags for a kubelet API the API server can reach the way it reaches a real kubelet: a
   * serving certificate from the cluster CA for 127.0.0.1 and localhost (the apiserver checks it with
   * --kubelet-certificate-authority), and the cluster CA as client CA (the apiserver presents its
   * --kubelet-client-certificate). Files go under dir/kubelet-pki; extraSans adds names or IPs (a node IP).
   */
  async kubeletTlsArgs(dir: string, extraSans: readonly string[] = []): Promise<string[]> {
    const pem = await this.ca.issueServingCert(['127.0.0.1', 'localhost', ...extraSans]);
    const files = await writeCertificate(join(dir, 'kubelet-pki'), 'kubelet-serving', pem);
    return [`--kubelet-tls-cert-file=${files.certFile}`, `--kubelet-tls-key-file=${files.keyFile}`, `--kubelet-client-ca-file=${this.caFile}`];
  }

  /** Writes a kubeconfig for any identity and returns its path. */
  async kubeconfigFor(cn: string, groups: readonly string[] = []): Promise<string> {
    const client = await this.ca.issueClientCert(cn, groups);
    const file = join(this.dir, `${this.fileName(cn)}.kubeconfig`);
    return writeKubeconfig(file, { server: this.url, caCert: this.ca.cert, client, name: cn });
  }

  /** A kubeconfig with the identity a real kubelet has: CN=system:node:<name>, O=system:nodes. */
  async nodeKubeconfig(nodeName: string): Promise<string> {
    return this.kubeconfigFor(`system:node:${nodeName}`, ['system:nodes']);
  }

  /** Runs the real kubectl against this cluster, as admin unless another kubeconfig is given. */
  async kubectl(args: string[], opts: KubectlOptions = {}): Promise<CommandResult> {
    const kubeconfig = opts.kubeconfig ?? this.adminKubeconfig;
    // The discovery/HTTP cache goes in the fixture dir: ~/.kube/cache would collect one entry per test cluster.
    const flags = [`--kubeconfig=${kubeconfig}`, `--cache-dir=${join(this.dir, 'kubectl-cache')}`];
    return runCommand(this.binaries.kubectl, [...flags, ...args], {
      input: opts.input,
      timeoutMs: opts.timeoutMs ?? 60_000,
    });
  }

  /** Stops kube-apiserver only; etcd and the data stay. */
  async stopApiServer(): Promise<void> {
    await this.parts.apiServer.stop();
  }

  /** Starts kube-apiserver again on the same port with the same flags and certificates. */
  async startApiServer(): Promise<void> {
    await this.parts.apiServer.start();
  }

  /** kube-apiserver's /metrics (Prometheus text), read as admin. */
  async apiServerMetrics(): Promise<string> {
    const res = await httpGet(`${this.url}/metrics`, { agent: this.parts.adminAgent });
    if (res.status !== 200) throw new Error(`GET /metrics: HTTP ${res.status}: ${res.body.slice(0, 500)}`);
    return res.body;
  }

  /** Stops kube-apiserver, then etcd, and removes the fixture dir (unless VMLET_KEEP_TEST_DIRS=1). */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.parts.apiServer.stop();
      await this.parts.etcd.stop();
      await this.parts.adminAgent.close();
      if (this.parts.ownsDir) await removeFixtureDir(this.dir);
    })();
    return this.stopping;
  }

  // Identities contain ':' and such; file names keep to a safe alphabet, numbered to stay unique.
  private fileName(base: string): string {
    return `${base.replace(/[^A-Za-z0-9._-]/g, '_')}-${++this.issued}`;
  }
}
