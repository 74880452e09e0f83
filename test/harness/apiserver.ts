// Runs Kubernetes' real kube-apiserver for a test cluster, with the flags a production control plane
// uses for node agents (Node+RBAC authorization, NodeRestriction, kubelet client certs, audit log),
// and can stop and restart it on the same port while etcd keeps the data.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Agent } from 'undici';
import { httpGet } from './https.ts';
import type { ClusterPki } from './pki.ts';
import { spawnTracked, stopProcess, waitFor, type TrackedProcess } from './processes.ts';

export interface ApiServerConfig {
  binary: string;
  dir: string;
  port: number;
  etcdUrl: string;
  pki: ClusterPki;
  /** Authenticated as the cluster admin; used for the readiness probes. */
  adminAgent: Agent;
  /** More kube-apiserver flags (e.g. --egress-selector-config-file). */
  extraArgs?: readonly string[];
}

// Generous: on 2 busy cores a cold apiserver takes tens of seconds to install every API group.
const READY_TIMEOUT_MS = 120_000;
// The apiserver drains requests on SIGTERM; past this it is killed.
const STOP_GRACE_MS = 10_000;

// Metadata for every request: who did what to which object, without bodies, so later tests can
// assert on the agent's API traffic from audit.log. RequestReceived events only duplicate the
// ResponseComplete ones, at half the log's size.
const AUDIT_POLICY = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
`;

export class ApiServer {
  readonly url: string;
  readonly logFile: string;
  readonly auditLogFile: string;
  private proc: TrackedProcess | undefined;

  constructor(private readonly cfg: ApiServerConfig) {
    this.url = `https://127.0.0.1:${cfg.port}`;
    this.logFile = join(cfg.dir, 'kube-apiserver.log');
    this.auditLogFile = join(cfg.dir, 'audit.log');
  }

  get running(): boolean {
    return this.proc !== undefined && this.proc.exitStatus === undefined;
  }

  /** Starts the apiserver (same port, flags and certificates every time) and waits until it is ready. */
  async start(): Promise<void> {
    if (this.running) return;
    const policyFile = join(this.cfg.dir, 'audit-policy.yaml');
    await writeFile(policyFile, AUDIT_POLICY);
    const proc = spawnTracked('kube-apiserver', this.cfg.binary, this.args(policyFile), { logFile: this.logFile });
    this.proc = proc;
    try {
      await waitFor('kube-apiserver /readyz', () => this.probe('/readyz'), {
        timeoutMs: READY_TIMEOUT_MS,
        intervalMs: 500,
        process: proc,
      });
      // /readyz covers the RBAC bootstrap roles, but system namespaces are created by a controller
      // loop that may still be behind; node agents need kube-node-lease for their Lease.
      for (const path of [
        '/api/v1/namespaces/kube-node-lease',
        '/apis/rbac.authorization.k8s.io/v1/clusterroles/system:node',
        '/apis/rbac.authorization.k8s.io/v1/clusterroles/cluster-admin',
      ]) {
        await waitFor(`${path} to exist`, () => this.probe(path), { timeoutMs: 30_000, process: proc });
      }
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  async stop(): Promise<void> {
    if (this.proc) await stopProcess(this.proc, STOP_GRACE_MS);
  }

  private async probe(path: string): Promise<true | undefined> {
    const res = await httpGet(`${this.url}${path}`, { agent: this.cfg.adminAgent, timeoutMs: 5000 });
    return res.status === 200 ? true : undefined;
  }

  private args(auditPolicyFile: string): string[] {
    const { pki, dir, port, etcdUrl } = this.cfg;
    return [
      `--etcd-servers=${etcdUrl}`,
      '--bind-address=127.0.0.1',
      '--advertise-address=127.0.0.1',
      `--secure-port=${port}`,
      // Only used when no serving cert is given; keeps the apiserver from touching /var/run/kubernetes.
      `--cert-dir=${join(dir, 'apiserver-certs')}`,
      `--tls-cert-file=${pki.apiserver.certFile}`,
      `--tls-private-key-file=${pki.apiserver.keyFile}`,
      `--client-ca-file=${pki.caFile}`,
      `--service-account-key-file=${pki.serviceAccountPublicKeyFile}`,
      `--service-account-signing-key-file=${pki.serviceAccountPrivateKeyFile}`,
      '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
      '--api-audiences=https://kubernetes.default.svc.cluster.local',
      '--authorization-mode=Node,RBAC',
      '--enable-admission-plugins=NodeRestriction',
      '--service-cluster-ip-range=10.0.0.0/24',
      // The kubernetes Service cannot have a loopback endpoint (the apiserver logs a validation error
      // every 10 s trying): publish none, the Service itself still exists.
      '--endpoint-reconciler-type=none',
      // How the apiserver reaches a kubelet port (logs, exec, port-forward) and checks its cert.
      `--kubelet-client-certificate=${pki.kubeletClient.certFile}`,
      `--kubelet-client-key=${pki.kubeletClient.keyFile}`,
      `--kubelet-certificate-authority=${pki.caFile}`,
      '--kubelet-preferred-address-types=InternalIP,Hostname',
      '--allow-privileged=true',
      `--audit-policy-file=${auditPolicyFile}`,
      `--audit-log-path=${this.auditLogFile}`,
      '--v=1',
      ...(this.cfg.extraArgs ?? []),
    ];
  }
}
