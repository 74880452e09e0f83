// The Kubernetes side of pods: watches the pods bound to this node (the same Reflector as the Node's:
// bookmarks, idle watchdog, relist on 410, a periodic resync), runs one worker per pod UID at a time with
// bounded concurrency and backed-off retries, hands pods to the runtime (src/runtime/pod-runtime.ts), and
// writes back what the runtime says: the pod's status (patched only when it changed), Events, and the
// final DELETE once a deleted pod's VM is gone (with the pod's UID as precondition, so a new pod of the
// same name is never touched).
import type { CoreV1Event, V1Pod, V1PodList } from '@kubernetes/client-node';
import type { Logger } from '../../observability/log.ts';
import type { AgentMetrics } from '../../observability/metrics.ts';
import type { EventType, PodRuntime } from '../../runtime/pod-runtime.ts';
import { podStatus, statusChanged } from '../../runtime/pod/status.ts';
import { UidQueue } from '../../runtime/uid-queue.ts';
import { Backoff } from '../backoff.ts';
import { describeApiError, httpStatus, PATCH, type KubeApi } from '../client.ts';
import { Reflector } from '../reflector.ts';

/** The kubelet's annotation on a mirror pod (the API's copy of a static pod): it is never run from the API. */
const MIRROR_ANNOTATION = 'kubernetes.io/config.mirror';

export interface PodControllerOptions {
  api: KubeApi;
  nodeName: string;
  log: Logger;
  metrics: AgentMetrics;
  /** Pods worked on at once (pulls and boots are heavy). */
  concurrency?: number;
  resyncIntervalMs?: number;
  /** A mirror pod (of a static pod) was seen or deleted: it is not run, this hears of it (src/static/mirror.ts). */
  mirror?(pod: V1Pod, gone: boolean): void;
}

interface Work {
  /** Latest object seen (kept after the API deleted it, to clean up). */
  pod: V1Pod;
  gone: boolean;
  backoff: Backoff;
  retryTimer?: NodeJS.Timeout;
  /** Until then a failed sync is not tried again (status changes are still posted). */
  retryAt?: number;
}

export class PodController {
  private readonly reflector: Reflector<V1Pod>;
  private readonly work = new Map<string, Work>();
  private runtime!: PodRuntime;
  private readonly queue: UidQueue;

  constructor(private readonly o: PodControllerOptions) {
    this.queue = new UidQueue((uid) => this.process(uid), o.concurrency ?? 4);
    const fieldSelector = `spec.nodeName=${o.nodeName}`;
    this.reflector = new Reflector<V1Pod>({
      resource: 'pods',
      api: o.api,
      list: () => o.api.call<V1PodList>('list', 'pods', { method: 'GET', path: '/api/v1/pods', query: { fieldSelector } }),
      watchPath: '/api/v1/pods',
      watchQuery: { fieldSelector },
      handler: {
        added: (pod) => this.seen(pod),
        updated: (pod) => this.seen(pod),
        deleted: (pod) => this.seen(pod, true),
      },
      log: o.log.child({ component: 'pod-watch' }),
      metrics: o.metrics,
      resyncIntervalMs: o.resyncIntervalMs ?? 60_000,
    });
  }

  /** Lists pods once (for adoption), then watches and works. `staticPod`: pods from elsewhere whose VMs are kept too. */
  async start(runtime: PodRuntime, staticPod?: (uid: string) => V1Pod | undefined): Promise<void> {
    this.runtime = runtime;
    const list = await this.o.api.call<V1PodList>('list', 'pods', { method: 'GET', path: '/api/v1/pods', query: { fieldSelector: `spec.nodeName=${this.o.nodeName}` } });
    const byUid = new Map(list.items.map((p) => [p.metadata!.uid!, p]));
    const { adopted, removed } = await runtime.adopt((uid) => {
      const pod = byUid.get(uid);
      return pod && !pod.metadata?.deletionTimestamp && !pod.metadata?.annotations?.[MIRROR_ANNOTATION] ? pod : staticPod?.(uid);
    });
    if (adopted.length || removed.length) this.o.log.info({ adopted, removed }, 'VMs from before the restart: adopted those with a pod, removed the others');
    this.reflector.start();
  }

  async stop(): Promise<void> {
    this.queue.stop();
    for (const w of this.work.values()) clearTimeout(w.retryTimer);
    await this.reflector.stop();
  }

  /** The runtime says the pod's state changed: post its status (through the queue, one worker per pod). */
  changed(uid: string): void {
    this.queue.enqueue(uid);
  }

  event(pod: V1Pod, type: EventType, reason: string, message: string): void {
    const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    const ns = pod.metadata!.namespace!;
    const container = pod.spec?.containers?.[0]?.name;
    const body: CoreV1Event = {
      metadata: { generateName: `${pod.metadata!.name}.`, namespace: ns },
      involvedObject: { kind: 'Pod', apiVersion: 'v1', namespace: ns, name: pod.metadata!.name, uid: pod.metadata!.uid, ...(container ? { fieldPath: `spec.containers{${container}}` } : {}) },
      reason,
      message: message.slice(0, 1024),
      type,
      count: 1,
      firstTimestamp: now as unknown as Date,
      lastTimestamp: now as unknown as Date,
      source: { component: 'vmlet', host: this.o.nodeName },
      reportingComponent: 'vmlet',
      reportingInstance: this.o.nodeName,
    };
    this.o.api.call('create', 'events', { method: 'POST', path: `/api/v1/namespaces/${ns}/events`, body }).catch((err: unknown) => {
      this.o.log.warn({ pod: `${ns}/${pod.metadata!.name}`, reason, err: describeApiError(err) }, 'could not record an event');
    });
  }

  private seen(pod: V1Pod, gone = false): void {
    const uid = pod.metadata?.uid;
    if (!uid) return;
    // A mirror pod stands for a static pod, which runs from its manifest file (src/static/).
    if (pod.metadata?.annotations?.[MIRROR_ANNOTATION] !== undefined) return this.o.mirror?.(pod, gone);
    const w = this.work.get(uid);
    if (w) {
      // An event older than the copy held here (the answer to this node's own status patch, which the
      // watch has not caught up with) says nothing new; taken, it would make the next comparison see that
      // patch as undone, and send it again.
      if (!gone && olderThan(pod, w.pod)) return;
      w.pod = pod;
      w.gone ||= gone;
    } else {
      this.work.set(uid, { pod, gone, backoff: new Backoff(1000, 60_000) });
    }
    this.queue.enqueue(uid);
  }

  private async process(uid: string): Promise<void> {
    const w = this.work.get(uid);
    if (!w) return;
    const { pod } = w;
    const name = `${pod.metadata!.namespace}/${pod.metadata!.name}`;
    this.o.log.debug({ pod: name, uid, gone: w.gone, deleting: Boolean(pod.metadata?.deletionTimestamp) }, 'pod work');
    try {
      if (w.gone) {
        // Deleted from the API (force-deleted, or we deleted it): whatever runs goes.
        await this.runtime.remove(pod);
        this.work.delete(uid);
        return;
      }
      if (pod.metadata?.deletionTimestamp) {
        await this.runtime.remove(pod);
        this.o.log.info({ pod: name, uid }, 'pod stopped; deleting its object');
        await this.o.api.call('delete', 'pods', {
          method: 'DELETE', path: `/api/v1/namespaces/${pod.metadata.namespace}/pods/${pod.metadata.name}`,
          body: { kind: 'DeleteOptions', apiVersion: 'v1', gracePeriodSeconds: 0, preconditions: { uid } },
        }).catch((err: unknown) => {
          if (httpStatus(err) !== 404 && httpStatus(err) !== 409) throw err; // gone already, or another pod now
        });
        this.work.delete(uid);
        return;
      }
      const backingOff = w.retryAt !== undefined && Date.now() < w.retryAt;
      // sync() returns at once for a pod whose VM runs or is starting; a Running pod whose VM died and
      // whose back-off has passed gets its VM booted again here.
      if (!backingOff) {
        // Sync runs long (pull, boot): post the status first so "ContainerCreating" shows meanwhile.
        const syncing = this.runtime.sync(pod);
        // A sync that fails before the status is posted (a pull refused at once) must not be an unhandled
        // rejection meanwhile: that ends the process. It is still awaited, and handled, below.
        syncing.catch(() => undefined);
        await this.postStatus(w);
        await syncing;
      }
      await this.postStatus(w);
      if (!backingOff) w.backoff.reset();
    } catch (err) {
      const delay = w.backoff.next();
      w.retryAt = Date.now() + delay;
      this.o.log.warn({ pod: name, err: describeApiError(err), retryInMs: delay }, 'pod sync failed; will retry');
      await this.postStatus(w).catch(() => undefined);
      clearTimeout(w.retryTimer);
      w.retryTimer = setTimeout(() => {
        w.retryAt = undefined;
        this.queue.enqueue(uid);
      }, delay);
      w.retryTimer.unref();
    }
  }

  private async postStatus(w: Work): Promise<void> {
    const pod = w.pod;
    const state = this.runtime.state(pod.metadata!.uid!);
    if (!state || w.gone) return;
    const next = podStatus(pod, state, new Date());
    if (!statusChanged(pod.status, next)) return;
    const updated = await this.o.api.call<V1Pod>('patch', 'pods/status', {
      method: 'PATCH',
      path: `/api/v1/namespaces/${pod.metadata!.namespace}/pods/${pod.metadata!.name}/status`,
      contentType: PATCH.strategic,
      // A field left out of a strategic merge patch keeps its old value: a reason that no longer holds is
      // cleared explicitly, the pod's and each condition's (conditions merge by type: a Ready condition
      // turned True would otherwise keep ContainersNotReady and its message, and differ from `next` forever).
      body: {
        metadata: { uid: pod.metadata!.uid },
        status: { reason: null, message: null, ...next, conditions: next.conditions?.map((c) => ({ reason: null, message: null, ...c })) },
      },
    });
    // The next comparison is against what the server now holds (the watch may be a moment behind).
    if (updated?.metadata?.uid === pod.metadata!.uid) w.pod = updated;
  }
}

/**
 * Whether `a` is an older version of the same object than `b`. An object's resourceVersions come from
 * etcd's revision and grow with each write; anything else is taken as not older.
 */
function olderThan(a: V1Pod, b: V1Pod): boolean {
  const ra = a.metadata?.resourceVersion;
  const rb = b.metadata?.resourceVersion;
  return ra !== undefined && rb !== undefined && /^\d+$/.test(ra) && /^\d+$/.test(rb) && BigInt(ra) < BigInt(rb);
}
