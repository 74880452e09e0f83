// Static pods to the runtime: what PodController (src/kube/pods/) is for pods from the API server, for
// pods from the manifest directory (source.ts). One worker per pod UID at a time, a few pods at once,
// backed-off retries of a failed sync; the runtime's `changed(uid)` brings a pod back to its worker (a
// freed VM slot, a main process that exited). Without an API server, a pod's status changes and Events
// go to the log as JSON lines, and the pods with their current status are served to the local API
// (`vmlet ps`) through `pods()`. With one, `onStatus` also hands each status to the mirror pods.
import type { V1Pod, V1PodStatus } from '@kubernetes/client-node';
import { Backoff } from '../kube/backoff.ts';
import type { Logger } from '../observability/log.ts';
import type { EventType, PodRuntime } from '../runtime/pod-runtime.ts';
import { podStatus, type PodRuntimeState, type PodStatusJson } from '../runtime/pod/status.ts';
import { UidQueue } from '../runtime/uid-queue.ts';
import { forbiddenReferences } from './manifests.ts';

export interface StaticPodControllerOptions {
  runtime: Pick<PodRuntime, 'sync' | 'remove' | 'state'>;
  log: Logger;
  /** Pods worked on at once. */
  concurrency?: number;
  /** A static pod's status changed (for its mirror pod); `undefined` status: the pod is gone. */
  onStatus?(pod: V1Pod, status: PodStatusJson | undefined): void;
  /** An Event about a static pod (for its mirror pod); it is logged in any case. */
  onEvent?(pod: V1Pod, type: EventType, reason: string, message: string): void;
}

interface Work {
  pod: V1Pod;
  gone: boolean;
  /** Why vmlet refuses to run it (it references API objects). */
  refused?: { reason: string; message: string; at: Date };
  backoff: Backoff;
  retryAt?: number;
  retryTimer?: NodeJS.Timeout;
  /** The status last logged, to log only changes. */
  logged?: string;
}

export class StaticPodController {
  private readonly work = new Map<string, Work>();
  private readonly queue: UidQueue;

  constructor(private readonly o: StaticPodControllerOptions) {
    this.queue = new UidQueue((uid) => this.process(uid), o.concurrency ?? 4);
  }

  /** A static pod appeared (or its file changed: the new content is a new pod with a new UID). */
  add(pod: V1Pod, file?: string): void {
    const uid = pod.metadata!.uid!;
    const refs = forbiddenReferences(pod);
    const w: Work = { pod, gone: false, backoff: new Backoff(1000, 60_000) };
    if (refs.length) {
      const message = `static pods may not reference API objects (the kubelet refuses them too): ${refs.join('; ')}`;
      w.refused = { reason: 'StaticPodReferencesApiObjects', message, at: new Date() };
      this.event(pod, 'Warning', 'FailedCreate', message);
    }
    this.work.set(uid, w);
    this.o.log.info({ pod: name(pod), uid, ...(file ? { file } : {}) }, 'static pod added');
    this.queue.enqueue(uid);
  }

  /** A static pod's file is gone (or changed): its VM is stopped. */
  remove(pod: V1Pod): void {
    const uid = pod.metadata!.uid!;
    const w = this.work.get(uid);
    if (!w) return;
    w.gone = true;
    clearTimeout(w.retryTimer);
    this.o.log.info({ pod: name(pod), uid }, 'static pod removed');
    this.queue.enqueue(uid);
  }

  /** The runtime says the pod's state changed. */
  changed(uid: string): void {
    this.queue.enqueue(uid);
  }

  event(pod: V1Pod, type: EventType, reason: string, message: string): void {
    const fields = { pod: name(pod), uid: pod.metadata?.uid, event: type, reason };
    if (type === 'Warning') this.o.log.warn(fields, message);
    else this.o.log.info(fields, message);
    this.o.onEvent?.(pod, type, reason, message);
  }

  /** The static pods with their current status (the local API's /pods and `vmlet ps`). */
  pods(): V1Pod[] {
    const now = new Date();
    return [...this.work.entries()].filter(([, w]) => !w.gone).map(([uid, w]) => {
      const status = this.status(uid, w, now);
      return status ? { ...w.pod, status: status as unknown as V1PodStatus } : w.pod;
    });
  }

  get(uid: string): V1Pod | undefined {
    return this.work.get(uid)?.pod;
  }

  /** Stops working: VMs keep running, for the next vmlet to adopt (their UIDs are stable). */
  async stop(): Promise<void> {
    this.queue.stop();
    for (const w of this.work.values()) clearTimeout(w.retryTimer);
  }

  private status(uid: string, w: Work, now: Date): PodStatusJson | undefined {
    if (w.refused) {
      const state: PodRuntimeState = {
        phase: 'Failed', hostIP: '', vmReady: false, waiting: { reason: w.refused.reason, message: w.refused.message },
        container: { name: w.pod.spec!.containers[0]!.name, image: w.pod.spec!.containers[0]!.image ?? '', state: { kind: 'waiting', reason: w.refused.reason, message: w.refused.message }, ready: false, started: false, restartCount: 0 },
      };
      return podStatus(w.pod, state, now);
    }
    const state = this.o.runtime.state(uid);
    return state ? podStatus(w.pod, state, now) : undefined;
  }

  private async process(uid: string): Promise<void> {
    const w = this.work.get(uid);
    if (!w) return;
    const { pod } = w;
    try {
      if (w.gone) {
        await this.o.runtime.remove(pod);
        this.work.delete(uid);
        this.o.onStatus?.(pod, undefined);
        return;
      }
      if (!w.refused) {
        const backingOff = w.retryAt !== undefined && Date.now() < w.retryAt;
        // As the PodController: sync() returns at once for a pod whose VM runs or is starting, and boots the
        // VM of a Running pod again once the back-off after its death has passed.
        if (!backingOff) {
          const syncing = this.o.runtime.sync(pod);
          this.report(uid, w);
          await syncing;
        }
        if (!backingOff) w.backoff.reset();
      }
      this.report(uid, w);
    } catch (err) {
      const delay = w.backoff.next();
      w.retryAt = Date.now() + delay;
      this.o.log.warn({ pod: name(pod), uid, err: (err as Error).message.split('\n')[0], retryInMs: delay }, 'static pod sync failed; will retry');
      this.report(uid, w);
      clearTimeout(w.retryTimer);
      w.retryTimer = setTimeout(() => {
        w.retryAt = undefined;
        this.queue.enqueue(uid);
      }, delay);
      w.retryTimer.unref();
    }
  }

  /** Logs the pod's status when it changed (phase, container state, readiness, restarts), and hands it on. */
  private report(uid: string, w: Work): void {
    const status = this.status(uid, w, new Date());
    if (!status) return;
    const cs = status.containerStatuses?.[0];
    const state = cs?.state?.running ? 'running' : cs?.state?.terminated ? `terminated: ${cs.state.terminated.reason} (exit ${cs.state.terminated.exitCode})` : `waiting: ${cs?.state?.waiting?.reason ?? ''}`;
    const summary = `${status.phase} ${state} ready=${String(cs?.ready)} restarts=${cs?.restartCount ?? 0}`;
    if (summary !== w.logged) {
      w.logged = summary;
      const message = status.message ?? cs?.state?.waiting?.message ?? cs?.state?.terminated?.message;
      this.o.log.info({ pod: name(w.pod), uid, phase: status.phase, container: state, ready: cs?.ready ?? false, restartCount: cs?.restartCount ?? 0, ...(message ? { message } : {}) }, 'static pod status');
    }
    // A refused pod gets no mirror: the API server would refuse it for the same references.
    if (!w.refused) this.o.onStatus?.(w.pod, status);
  }
}

function name(pod: V1Pod): string {
  return `${pod.metadata?.namespace}/${pod.metadata?.name}`;
}
