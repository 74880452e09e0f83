// Runs Kubernetes' real kube-controller-manager against a test cluster with only the certificates
// controllers: csrapproving (auto-approves node client CSRs whose requester RBAC allows it), csrsigning
// (signs approved CSRs with the cluster CA) and csrcleaner. Loopback only, on a free port.
import { join } from 'node:path';
import type { Cluster } from './cluster.ts';
import { httpGet } from './https.ts';
import { freePort, spawnTracked, stopProcess, waitFor, type TrackedProcess } from './processes.ts';
import { Agent } from 'undici';

export const CERTIFICATE_CONTROLLERS = ['csrapproving', 'csrsigning', 'csrcleaner'] as const;

export class ControllerManager {
  private constructor(
    readonly proc: TrackedProcess,
    /** https://127.0.0.1:<port> of its secure port (/healthz). */
    readonly url: string,
  ) {}

  get logFile(): string {
    return this.proc.logFile;
  }

  /**
   * Starts kube-controller-manager (as the cluster admin: the controllers need to approve, sign and
   * run SubjectAccessReviews) and waits until /healthz answers. Stops it again when that fails.
   */
  static async start(cluster: Cluster, controllers: readonly string[] = CERTIFICATE_CONTROLLERS): Promise<ControllerManager> {
    const binary = cluster.binaries.kubeControllerManager;
    const port = await freePort();
    const args = [
      `--kubeconfig=${cluster.adminKubeconfig}`,
      `--authentication-kubeconfig=${cluster.adminKubeconfig}`,
      `--authorization-kubeconfig=${cluster.adminKubeconfig}`,
      `--controllers=${controllers.join(',')}`,
      `--cluster-signing-cert-file=${cluster.caFile}`,
      `--cluster-signing-key-file=${cluster.caKeyFile}`,
      '--use-service-account-credentials=false',
      '--leader-elect=false',
      '--bind-address=127.0.0.1',
      `--secure-port=${port}`,
      `--cert-dir=${join(cluster.dir, 'kube-controller-manager-certs')}`,
      '--v=2',
    ];
    const proc = spawnTracked('kube-controller-manager', binary, args, { logFile: join(cluster.dir, 'kube-controller-manager.log') });
    const cm = new ControllerManager(proc, `https://127.0.0.1:${port}`);
    // Its serving certificate is self-signed (in --cert-dir): the probe does not check it.
    const insecure = new Agent({ connect: { rejectUnauthorized: false } });
    try {
      await waitFor('kube-controller-manager /healthz', async () => {
        const res = await httpGet(`${cm.url}/healthz`, { agent: insecure, timeoutMs: 5000 });
        return res.status === 200 ? true : undefined;
      }, { timeoutMs: 120_000, intervalMs: 500, process: proc });
    } catch (err) {
      await cm.stop();
      throw err;
    } finally {
      await insecure.close();
    }
    return cm;
  }

  async stop(): Promise<void> {
    await stopProcess(this.proc, 10_000);
  }
}
