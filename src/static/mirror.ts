// Mirror pods: with an API server, each static pod gets a copy in the API (as the kubelet's mirror client
// makes it) so that `kubectl get pods` shows it — annotation kubernetes.io/config.mirror = the static
// pod's hash, an ownerReference to this Node, spec.nodeName this node (what the NodeRestriction admission
// plugin lets a node create). Its status is the static pod's, patched when it changes; Events about the
// static pod name the mirror. The mirror only reflects: vmlet runs the static pod from its file, and the
// PodController never runs a mirror pod. A mirror that is deleted (by a user: it stays Terminating until
// the node deletes it) or whose hash is not the file's current one (an edit) is deleted and created
// again; a mirror whose static pod is gone is deleted.
import type { V1Pod } from '@kubernetes/client-node';
import { Backoff } from '../kube/backoff.ts';
import { describeApiError, httpStatus, PATCH, type KubeApi } from '../kube/client.ts';
import type { Logger } from '../observability/log.ts';
import type { EventType } from '../runtime/pod-runtime.ts';
import { statusChanged, type PodStatusJson } from '../runtime/pod/status.ts';
import { CONFIG_HASH_ANNOTATION, CONFIG_MIRROR_ANNOTATION } from './manifests.ts';

export interface MirrorPodsOptions {
  api: Pick<KubeApi, 'call'>;
  nodeName: string;
  /** The Node's UID (the mirror's owner); undefined until it is registered. */
  nodeUid: () => string | undefined;
  log: Logger;
  /** Posts an Event about a pod (the PodController's). */
  event(pod: V1Pod, type: EventType, reason: string, message: string): void;
  /** How often every mirror is checked against the API (a deleted one is created again). */
  resyncIntervalMs?: number;
}

interface Entry {
  pod: V1Pod;
  /** The latest status; undefined: the static pod is gone, delete the mirror. */
  status: PodStatusJson | undefined;
  /** The mirror as the API server last returned it. */
  mirror?: V1Pod;
  /** Look the mirror up again before the next patch (it may have been deleted or replaced). */
  check: boolean;
  running?: Promise<void>;
  dirty: boolean;
  backoff: Backoff;
}

export class MirrorPods {
  private readonly entries = new Map<string, Entry>();
  private timer?: NodeJS.Timeout;
  private stopped = false;

  constructor(private readonly o: MirrorPodsOptions) {}

  start(): void {
    this.timer = setInterval(() => {
      for (const [uid, e] of this.entries) {
        e.check = true;
        this.kick(uid);
      }
    }, this.o.resyncIntervalMs ?? 60_000);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await Promise.all([...this.entries.values()].map((e) => e.running ?? Promise.resolve()));
  }

  /** The static pod's current status (undefined: the pod is gone): its mirror is made to match. */
  update(pod: V1Pod, status: PodStatusJson | undefined): void {
    const uid = pod.metadata!.uid!;
    const e = this.entries.get(uid);
    if (e) {
      e.pod = pod;
      e.status = status;
      if (!status) e.check = true;
    } else {
      if (!status) return;
      this.entries.set(uid, { pod, status, check: true, dirty: false, backoff: new Backoff(1000, 60_000) });
    }
    this.kick(uid);
  }

  /** A mirror pod the PodController's watch saw (it does not run it): a deleted or outdated one is replaced. */
  seen(mirror: V1Pod, gone: boolean): void {
    for (const [uid, e] of this.entries) {
      if (e.pod.metadata?.namespace !== mirror.metadata?.namespace || e.pod.metadata?.name !== mirror.metadata?.name) continue;
      if (gone || mirror.metadata?.deletionTimestamp || mirror.metadata?.annotations?.[CONFIG_MIRROR_ANNOTATION] !== hashOf(e.pod)) {
        e.check = true;
        this.kick(uid);
      }
    }
  }

  /** An Event about a static pod, recorded on its mirror (when it has one yet). */
  event(pod: V1Pod, type: EventType, reason: string, message: string): void {
    const mirror = this.entries.get(pod.metadata!.uid!)?.mirror;
    if (mirror) this.o.event(mirror, type, reason, message);
  }

  private kick(uid: string): void {
    const e = this.entries.get(uid);
    if (!e || this.stopped) return;
    e.dirty = true;
    if (e.running) return;
    e.running = (async () => {
      while (e.dirty && !this.stopped) {
        e.dirty = false;
        try {
          await this.reconcile(uid, e);
          e.backoff.reset();
        } catch (err) {
          const delay = e.backoff.next();
          this.o.log.warn({ pod: `${e.pod.metadata?.namespace}/${e.pod.metadata?.name}`, err: describeApiError(err), retryInMs: delay }, 'mirror pod not updated; will retry');
          e.check = true;
          setTimeout(() => this.kick(uid), delay).unref();
          break;
        }
      }
    })().finally(() => {
      e.running = undefined;
    });
  }

  private async reconcile(uid: string, e: Entry): Promise<void> {
    const { api } = this.o;
    const ns = e.pod.metadata!.namespace!;
    const name = e.pod.metadata!.name!;
    const podPath = `/api/v1/namespaces/${ns}/pods/${name}`;
    if (e.check || !e.mirror) {
      e.check = false;
      // A list on this node's pods, not a GET: the Node authorizer lets a node get only pods bound to it, so a
      // missing mirror would be a 403 rather than a 404.
      const list = await api.call<{ items: V1Pod[] }>('list', 'pods', {
        method: 'GET', path: `/api/v1/namespaces/${ns}/pods`, query: { fieldSelector: `spec.nodeName=${this.o.nodeName},metadata.name=${name}` },
      });
      e.mirror = list.items[0];
      const current = e.mirror;
      const ours = current?.metadata?.annotations?.[CONFIG_MIRROR_ANNOTATION] === hashOf(e.pod);
      if (current && (!e.status || !ours || current.metadata?.deletionTimestamp)) {
        // Gone from the file, a user deleted it, an older version of the file, or a pod that is no mirror of ours.
        if (current.metadata?.annotations?.[CONFIG_MIRROR_ANNOTATION] === undefined) {
          this.o.log.warn({ pod: `${ns}/${name}` }, 'a pod with the name of a static pod exists and is not its mirror: no mirror pod is made');
          e.mirror = undefined;
          if (!e.status) this.entries.delete(uid);
          return;
        }
        await api.call('delete', 'pods', {
          method: 'DELETE', path: podPath,
          body: { kind: 'DeleteOptions', apiVersion: 'v1', gracePeriodSeconds: 0, preconditions: { uid: current.metadata.uid } },
        }).catch((err: unknown) => {
          if (httpStatus(err) !== 404 && httpStatus(err) !== 409) throw err;
        });
        this.o.log.info({ pod: `${ns}/${name}`, mirrorUid: current.metadata?.uid }, 'mirror pod deleted');
        e.mirror = undefined;
      }
    }
    if (!e.status) {
      this.entries.delete(uid);
      return;
    }
    if (!e.mirror) {
      const nodeUid = this.o.nodeUid();
      if (!nodeUid) throw new Error(`Node ${this.o.nodeName} is not registered yet`);
      e.mirror = await api.call<V1Pod>('create', 'pods', { method: 'POST', path: `/api/v1/namespaces/${ns}/pods`, body: mirrorOf(e.pod, this.o.nodeName, nodeUid) });
      this.o.log.info({ pod: `${ns}/${name}`, uid, mirrorUid: e.mirror.metadata?.uid }, 'mirror pod created');
    }
    if (!statusChanged(e.mirror.status, e.status)) return;
    const updated = await api.call<V1Pod>('patch', 'pods/status', {
      method: 'PATCH', path: `${podPath}/status`, contentType: PATCH.strategic,
      // Conditions merge by type: a reason and message that no longer hold are cleared (null), as the pod's.
      body: { metadata: { uid: e.mirror.metadata!.uid }, status: { reason: null, message: null, ...e.status, conditions: e.status.conditions?.map((c) => ({ reason: null, message: null, ...c })) } },
    }).catch((err: unknown) => {
      // The mirror went away (or is another pod now): look it up again next time.
      if (httpStatus(err) === 404 || httpStatus(err) === 409) e.check = true;
      throw err;
    });
    e.mirror = updated;
  }
}

function hashOf(pod: V1Pod): string {
  return pod.metadata?.annotations?.[CONFIG_HASH_ANNOTATION] ?? pod.metadata!.uid!;
}

/** The mirror pod of a static pod, as the kubelet's mirror client creates it. */
export function mirrorOf(pod: V1Pod, nodeName: string, nodeUid: string): V1Pod {
  const { uid: _uid, resourceVersion: _rv, creationTimestamp: _ct, ...meta } = pod.metadata ?? {};
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      ...meta,
      annotations: { ...meta.annotations, [CONFIG_MIRROR_ANNOTATION]: hashOf(pod) },
      ownerReferences: [{ apiVersion: 'v1', kind: 'Node', name: nodeName, uid: nodeUid, controller: true }],
    },
    spec: { ...pod.spec!, nodeName },
  };
}
