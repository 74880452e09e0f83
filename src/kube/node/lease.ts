// The node's heartbeat: a Lease in kube-node-lease, renewed every 10 s as the kubelet does. One request per
// renewal — an update of the Lease kept from the last answer — and a get or create only after a conflict or
// when the Lease is missing.
import type { V1OwnerReference } from '@kubernetes/client-node';
import type { Logger } from '../../observability/log.ts';
import type { AgentMetrics } from '../../observability/metrics.ts';
import { sleep } from '../backoff.ts';
import { describeApiError, httpStatus, type KubeApi } from '../client.ts';

export const LEASE_NAMESPACE = 'kube-node-lease';
const LEASES = `/apis/coordination.k8s.io/v1/namespaces/${LEASE_NAMESPACE}/leases`;

/** A coordination.k8s.io/v1 Lease as JSON. */
export interface Lease {
  apiVersion: 'coordination.k8s.io/v1';
  kind: 'Lease';
  metadata: { name: string; namespace: string; resourceVersion?: string; uid?: string; ownerReferences?: V1OwnerReference[] };
  spec: { holderIdentity: string; leaseDurationSeconds: number; renewTime: string };
}

/** A metav1.MicroTime: RFC 3339 with exactly six fractional digits, or the API server answers 400. */
export function microTime(date: Date): string {
  return date.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

export interface LeaseOptions {
  nodeName: string;
  durationMs: number;
  renewIntervalMs: number;
  /** The Node's UID, for the owner reference (so that deleting the Node garbage-collects its Lease). */
  nodeUid: () => string | undefined;
}

export class NodeLease {
  private lease?: Lease;
  private readonly stopper = new AbortController();
  private running?: Promise<void>;
  private lastRenewed = 0;

  constructor(
    private readonly api: KubeApi,
    private readonly opts: LeaseOptions,
    private readonly log: Logger,
    private readonly metrics: AgentMetrics,
  ) {}

  /** When the Lease was last renewed (ms since epoch; 0 = never). */
  get renewedAt(): number {
    return this.lastRenewed;
  }

  start(): void {
    this.running ??= this.loop();
  }

  async stop(): Promise<void> {
    this.stopper.abort();
    await this.running;
  }

  /** Renews now (also used once at start, before the loop's first tick). */
  async renew(): Promise<boolean> {
    try {
      this.lease = this.lease ? await this.update(this.lease) : await this.getOrCreate();
      this.lastRenewed = Date.now();
      this.metrics.leaseRenewals.inc({ result: 'success' });
      return true;
    } catch (err) {
      this.metrics.leaseRenewals.inc({ result: 'failure' });
      const status = httpStatus(err);
      // A conflict (someone else wrote it) or a missing Lease: fetch it afresh on the next tick.
      if (status === 409 || status === 404) this.lease = undefined;
      // Network failures are ApiHealth's to report; an answer with an error status is news worth a line.
      if (status) this.log.warn({ status, err: describeApiError(err) }, 'lease renewal refused');
      return false;
    }
  }

  private async loop(): Promise<void> {
    while (!this.stopper.signal.aborted) {
      await sleep(this.opts.renewIntervalMs, this.stopper.signal);
      if (this.stopper.signal.aborted) break;
      await this.renew();
    }
  }

  private async update(lease: Lease): Promise<Lease> {
    const body: Lease = { ...lease, metadata: { ...lease.metadata, ownerReferences: this.owners(lease) }, spec: this.spec() };
    return this.api.call('update', 'leases', { method: 'PUT', path: `${LEASES}/${this.opts.nodeName}`, body });
  }

  private async getOrCreate(): Promise<Lease> {
    const { nodeName } = this.opts;
    try {
      const existing = await this.api.call<Lease>('get', 'leases', { method: 'GET', path: `${LEASES}/${nodeName}` });
      return await this.update(existing);
    } catch (err) {
      if (httpStatus(err) !== 404) throw err;
    }
    const body: Lease = {
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: { name: nodeName, namespace: LEASE_NAMESPACE, ownerReferences: this.owners(undefined) },
      spec: this.spec(),
    };
    return this.api.call('create', 'leases', { method: 'POST', path: LEASES, body });
  }

  private spec(): Lease['spec'] {
    return {
      holderIdentity: this.opts.nodeName,
      leaseDurationSeconds: Math.round(this.opts.durationMs / 1000),
      renewTime: microTime(new Date()),
    };
  }

  private owners(lease: Lease | undefined): V1OwnerReference[] | undefined {
    const uid = this.opts.nodeUid();
    if (!uid) return lease?.metadata?.ownerReferences;
    return [{ apiVersion: 'v1', kind: 'Node', name: this.opts.nodeName, uid }];
  }
}
