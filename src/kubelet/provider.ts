// What the kubelet API needs from the runtime: the seam between src/kubelet/ (HTTP, auth, streaming
// protocols) and src/runtime/ (pods as VMs). The kubelet API never reaches a driver or an agent directly;
// PodRuntime implements this. Errors are KubeletError: an HTTP status and a Kubernetes-style reason.
import type { V1Pod } from '@kubernetes/client-node';
import type { Duplex, Readable, Writable } from 'node:stream';

/**
 * A failure the kubelet API answers with `status`: the message as plain text on plain endpoints (as the
 * kubelet's go-restful WriteError; the API server wraps it in its own Status), a Status body carrying
 * `reason` when an upgrade is refused.
 */
export class KubeletError extends Error {
  override name = 'KubeletError';
  constructor(
    readonly status: number,
    /** Kubernetes' StatusReason: NotFound, BadRequest, InternalError, ServiceUnavailable, ... */
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

/** A process in the pod's VM (exec) or the container's main process (attach), as streams. */
export interface StreamedProcess {
  /** null unless stdin was asked for. end() closes the process's stdin (not with a tty). */
  stdin: Writable | null;
  stdout: Readable | null;
  /** null with a tty (stderr is merged into the terminal). */
  stderr: Readable | null;
  /** Resolves with the exit code (128 + signal when killed) once the outputs have ended; attach: when detached or the process exits. */
  exited: Promise<{ exitCode: number; signal: string | null }>;
  resize(rows: number, cols: number): Promise<void>;
  /** The client went away: hang the process up (exec) or detach (attach). */
  close(): void;
}

export interface StreamOptions {
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
  tty: boolean;
  /** The initial terminal size, when known. */
  size?: { rows: number; cols: number };
}

export interface ContainerLogOptions {
  follow?: boolean;
  tailLines?: number;
  sinceTime?: Date;
  timestamps?: boolean;
  /** Stop after this many bytes (the kubelet cuts at the byte, not at a line). */
  limitBytes?: number;
  /** The previous, terminated run of the container. */
  previous?: boolean;
  /** Only this output stream (the PodLogsQuerySplitStreams feature): All by default. */
  stream?: 'All' | 'Stdout' | 'Stderr';
}

/** CPU and memory of a pod's VM, as the Summary API and /metrics/resource report them. */
export interface PodUsage {
  timestamp: Date;
  /** Cumulative CPU time of the guest, nanoseconds. */
  cpuUsageCoreNanoSeconds: number;
  memoryWorkingSetBytes: number;
  memoryAvailableBytes: number;
  memoryUsageBytes: number;
  /** Root file system of the guest. */
  fs?: { capacityBytes: number; availableBytes: number; usedBytes: number; inodes: number; inodesFree: number };
}

export interface KubeletProvider {
  /** The pod as this node knows it (bound to it, not yet forgotten), or undefined. */
  getPod(namespace: string, name: string): V1Pod | undefined;
  /** Every pod this node knows (for /pods). */
  listPods(): V1Pod[];
  /** Pods with a running VM (for /runningpods). */
  runningPods(): V1Pod[];
  /** Runs `command` in the pod's VM (`kubectl exec`). Throws KubeletError (404 no such container, 409/500 not running). */
  exec(pod: V1Pod, container: string, command: string[], opts: StreamOptions): Promise<StreamedProcess>;
  /** Connects to the container's main process (`kubectl attach`). */
  attach(pod: V1Pod, container: string, opts: StreamOptions): Promise<StreamedProcess>;
  /** The container's log in the kubelet's format (CRI lines turned into plain output). */
  logs(pod: V1Pod, container: string, opts: ContainerLogOptions): Promise<Readable>;
  /** A TCP connection to `port` on the pod's VM's loopback (`kubectl port-forward`). */
  portForward(pod: V1Pod, port: number): Promise<Duplex>;
  /** Usage of a running pod's VM; undefined when it has none. */
  usage(pod: V1Pod): Promise<PodUsage | undefined>;
}
