// Keeps this host's Node object true: registers it (or adopts an existing one of the same name), patches
// its status when something changed and at least every statusReportInterval, watches it so that a deleted
// Node is registered again and a Ready condition overwritten by someone else is put right, and renews the
// Lease. Steady state costs ~6.3 requests a minute: 6 Lease renewals, a status patch every 5 minutes and
// a watch re-established every 5–10 minutes.
import type { V1Node, V1NodeList } from '@kubernetes/client-node';
import type { Config } from '../../config/schema.ts';
import type { HypervisorProbe } from '../../drivers/probe.ts';
import type { HostFacts, HostSample } from '../../host/facts.ts';
import type { Logger } from '../../observability/log.ts';
import type { AgentMetrics } from '../../observability/metrics.ts';
import { sleep } from '../backoff.ts';
import { describeApiError, httpStatus, PATCH, type KubeApi } from '../client.ts';
import { Reflector } from '../reflector.ts';
import { NodeLease } from './lease.ts';
import { labelDrift, newNode, nodeStatus, statusChanged, type NodeStatus } from './node-object.ts';

/** Where the node's live readings come from; injected so the controller is driven by real host code in production. */
export interface NodeSensors {
  facts: HostFacts;
  sample(): Promise<HostSample>;
  probeHypervisor(): Promise<HypervisorProbe>;
}

/** How often the hypervisor is probed again (a process spawn; no API request). */
const HYPERVISOR_PROBE_INTERVAL_MS = 60_000;

export class NodeController {
  private uid?: string;
  private posted?: NodeStatus;
  private postedAt = 0;
  private hypervisor?: HypervisorProbe;
  private hypervisorAt = 0;
  private readonly lease: NodeLease;
  private readonly reflector: Reflector<V1Node>;
  private readonly stopper = new AbortController();
  private loopDone?: Promise<void>;
  /** Serialises status posts: the loop, a recovery and a watch event may all ask at once. */
  private posting: Promise<void> = Promise.resolve();
  private wantRegister = false;

  constructor(
    private readonly api: KubeApi,
    private readonly config: Config,
    private readonly sensors: NodeSensors,
    private readonly log: Logger,
    private readonly metrics: AgentMetrics,
  ) {
    const name = config.nodeName;
    this.lease = new NodeLease(
      api,
      { nodeName: name, durationMs: config.node.leaseDuration, renewIntervalMs: config.node.leaseRenewInterval, nodeUid: () => this.uid },
      log.child({ component: 'lease' }),
      metrics,
    );
    this.reflector = new Reflector<V1Node>({
      resource: 'nodes',
      api,
      list: () => api.call<V1NodeList>('list', 'nodes', { method: 'GET', path: '/api/v1/nodes', query: { fieldSelector: `metadata.name=${name}` } }),
      watchPath: '/api/v1/nodes',
      watchQuery: { fieldSelector: `metadata.name=${name}` },
      handler: {
        updated: (node) => this.onNodeChanged(node),
        deleted: () => this.onNodeDeleted(),
      },
      log: log.child({ component: 'node-watch' }),
      metrics,
    });
    api.health.onRecovered(() => {
      // Back from an outage: heartbeat and post status now, not at the next turn of each loop.
      void this.lease.renew();
      this.requestPost('recovered');
    });
  }

  private get nodePath(): string {
    return `/api/v1/nodes/${encodeURIComponent(this.config.nodeName)}`;
  }

  get nodeUid(): string | undefined {
    return this.uid;
  }

  get leaseRenewedAt(): number {
    return this.lease.renewedAt;
  }

  get lastStatus(): NodeStatus | undefined {
    return this.posted;
  }

  /** Registers or adopts the Node and posts its first status. Throws if the API server refuses. */
  async register(): Promise<void> {
    const inputs = { config: this.config, facts: this.sensors.facts, hypervisor: await this.currentHypervisor(true) };
    let node: V1Node;
    try {
      node = await this.api.call<V1Node>('create', 'nodes', { method: 'POST', path: '/api/v1/nodes', body: newNode(inputs) });
      this.log.info({ uid: node.metadata?.uid }, 'registered Node');
    } catch (err) {
      if (httpStatus(err) !== 409) throw err;
      node = await this.api.call<V1Node>('get', 'nodes', { method: 'GET', path: this.nodePath });
      this.log.info({ uid: node.metadata?.uid }, 'adopted existing Node');
      await this.fixLabels(node);
    }
    this.uid = node.metadata?.uid;
    this.posted = undefined;
    await this.postStatus('registered');
  }

  /** Starts the Lease, the status loop and the Node watch; call after register(). */
  start(): void {
    this.lease.start();
    this.reflector.start();
    this.loopDone ??= this.statusLoop();
  }

  async stop(): Promise<void> {
    this.stopper.abort();
    await Promise.all([this.lease.stop(), this.reflector.stop(), this.loopDone]);
    await this.posting;
  }

  /** First Lease renewal, done right after registration so the node is heartbeating at once. */
  renewLease(): Promise<boolean> {
    return this.lease.renew();
  }

  private async statusLoop(): Promise<void> {
    while (!this.stopper.signal.aborted) {
      await sleep(this.config.node.statusSampleInterval, this.stopper.signal);
      if (this.stopper.signal.aborted) break;
      if (this.wantRegister) {
        await this.reregister();
        continue;
      }
      const due = Date.now() - this.postedAt >= this.config.node.statusReportInterval;
      this.requestPost(due ? 'heartbeat' : 'changed', !due);
      await this.posting;
    }
  }

  /** Queues a status post; with `onlyIfChanged`, nothing is sent unless the status differs from the last post. */
  private requestPost(reason: string, onlyIfChanged = false): void {
    this.posting = this.posting.then(() => this.postStatus(reason, onlyIfChanged)).catch(() => undefined);
  }

  private async postStatus(reason: string, onlyIfChanged = false): Promise<void> {
    const [sample, hypervisor] = await Promise.all([this.sensors.sample(), this.currentHypervisor()]);
    const status = nodeStatus({
      config: this.config,
      facts: this.sensors.facts,
      sample,
      hypervisor,
      kubeletPort: this.config.kubeletPort,
      previous: this.posted?.conditions,
      now: new Date(),
    });
    if (onlyIfChanged && !statusChanged(this.posted, status)) return;
    if (this.posted && statusChanged(this.posted, status)) this.logTransitions(this.posted, status);
    try {
      const node = await this.api.call<V1Node>('patch', 'nodes/status', {
        method: 'PATCH',
        path: `${this.nodePath}/status`,
        body: { status },
        contentType: PATCH.strategic,
      });
      this.uid = node.metadata?.uid ?? this.uid;
      this.posted = status;
      this.postedAt = Date.now();
      this.metrics.nodeStatusUpdates.inc({ reason, result: 'success' });
    } catch (err) {
      this.metrics.nodeStatusUpdates.inc({ reason, result: 'failure' });
      const code = httpStatus(err);
      if (code === 404) this.wantRegister = true;
      if (code) this.log.warn({ status: code, err: describeApiError(err) }, 'node status update refused');
      throw err;
    }
  }

  private logTransitions(before: NodeStatus, after: NodeStatus): void {
    for (const c of after.conditions) {
      const old = before.conditions.find((o) => o.type === c.type);
      if (old?.status !== c.status) {
        this.log.info({ condition: c.type, from: old?.status, to: c.status, reason: c.reason, message: c.message }, 'node condition changed');
      }
    }
  }

  private async currentHypervisor(force = false): Promise<HypervisorProbe> {
    if (force || !this.hypervisor || Date.now() - this.hypervisorAt >= HYPERVISOR_PROBE_INTERVAL_MS) {
      this.hypervisor = await this.sensors.probeHypervisor();
      this.hypervisorAt = Date.now();
    }
    return this.hypervisor;
  }

  private onNodeChanged(node: V1Node): void {
    if (node.metadata?.uid && this.uid && node.metadata.uid !== this.uid) this.uid = node.metadata.uid;
    void this.fixLabels(node).catch(() => undefined);
    // Someone else (the node lifecycle controller, a user) changed a condition vmlet owns: say it again.
    const ours = this.posted?.conditions;
    if (!ours) return;
    const drifted = ours.some((c) => {
      const theirs = node.status?.conditions?.find((t) => t.type === c.type);
      return theirs !== undefined && theirs.status !== c.status;
    });
    if (drifted) this.requestPost('overwritten');
  }

  private onNodeDeleted(): void {
    this.log.warn('Node object was deleted; registering it again');
    this.wantRegister = true;
    void this.reregister();
  }

  private reregistering?: Promise<void>;

  private reregister(): Promise<void> {
    if (!this.wantRegister) return Promise.resolve();
    this.reregistering ??= (async () => {
      try {
        await this.register();
        this.wantRegister = false;
        await this.lease.renew();
      } catch (err) {
        this.log.debug({ err: describeApiError(err) }, 'registration retry failed');
      } finally {
        this.reregistering = undefined;
      }
    })();
    return this.reregistering;
  }

  private async fixLabels(node: V1Node): Promise<void> {
    const drift = labelDrift(node, { config: this.config, facts: this.sensors.facts, hypervisor: await this.currentHypervisor() });
    if (!drift) return;
    this.log.info({ labels: drift }, 'restoring Node labels vmlet owns');
    await this.api.call('patch', 'nodes', { method: 'PATCH', path: this.nodePath, body: { metadata: { labels: drift } }, contentType: PATCH.merge });
  }
}
