// What the kubelet API (HTTPS port and local socket) serves of the runtime: the runtime itself for exec,
// attach, logs, port-forward and usage, and pods with their status as this node sees it now (as the
// kubelet's /pods does), computed from the runtime's state — with an API server the object's status may
// lag, without one there is no other. Static pods vmlet refuses to run (they never reach the runtime)
// are listed too, Failed with the reason.
import type { V1Pod, V1PodStatus } from '@kubernetes/client-node';
import type { Duplex, Readable } from 'node:stream';
import type { ContainerLogOptions, KubeletProvider, PodUsage, StreamedProcess, StreamOptions } from '../kubelet/provider.ts';
import type { PodRuntime } from '../runtime/pod-runtime.ts';
import { podStatus } from '../runtime/pod/status.ts';

export type ViewedRuntime = KubeletProvider & Pick<PodRuntime, 'state'>;

export class PodView implements KubeletProvider {
  constructor(
    private readonly runtime: ViewedRuntime,
    /** Pods known outside the runtime (refused static pods), with their status. */
    private readonly extra: () => V1Pod[] = () => [],
  ) {}

  getPod(namespace: string, name: string): V1Pod | undefined {
    const pod = this.runtime.getPod(namespace, name);
    if (pod) return this.withStatus(pod);
    return this.extra().find((p) => p.metadata?.namespace === namespace && p.metadata?.name === name);
  }

  listPods(): V1Pod[] {
    const pods = this.runtime.listPods().map((p) => this.withStatus(p));
    const uids = new Set(pods.map((p) => p.metadata?.uid));
    return [...pods, ...this.extra().filter((p) => !uids.has(p.metadata?.uid))];
  }

  runningPods(): V1Pod[] {
    return this.runtime.runningPods().map((p) => this.withStatus(p));
  }

  exec(pod: V1Pod, container: string, command: string[], opts: StreamOptions): Promise<StreamedProcess> {
    return this.runtime.exec(pod, container, command, opts);
  }

  attach(pod: V1Pod, container: string, opts: StreamOptions): Promise<StreamedProcess> {
    return this.runtime.attach(pod, container, opts);
  }

  logs(pod: V1Pod, container: string, opts: ContainerLogOptions): Promise<Readable> {
    return this.runtime.logs(pod, container, opts);
  }

  portForward(pod: V1Pod, port: number): Promise<Duplex> {
    return this.runtime.portForward(pod, port);
  }

  usage(pod: V1Pod): Promise<PodUsage | undefined> {
    return this.runtime.usage(pod);
  }

  private withStatus(pod: V1Pod): V1Pod {
    const state = this.runtime.state(pod.metadata?.uid ?? '');
    return state ? { ...pod, status: podStatus(pod, state, new Date()) as unknown as V1PodStatus } : pod;
  }
}
