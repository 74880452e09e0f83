// The PodStatus vmlet posts for a pod, from the runtime's view of its VM; and whether it differs from what
// the API server holds, so that status is written only when it changed. Pure: the clock is an argument.
// The result is the JSON on the wire (times are RFC 3339 strings to the second, like metav1.Time), which is
// why it is typed PodStatusJson and not client-node's V1PodStatus (whose times are Date objects).
import type { V1Container, V1Pod, V1PodCondition, V1PodStatus } from '@kubernetes/client-node';
import { vmContainerIndex } from './validate.ts';

export interface PodRuntimeState {
  phase: 'Pending' | 'Running' | 'Succeeded' | 'Failed';
  /** Why the pod waits or failed, e.g. { reason: 'WaitingForVmSlot', message: '...' } */
  waiting?: { reason: string; message: string };
  startTime?: Date;
  hostIP: string;
  podIP?: string;
  /** The VM runs and its agent answers. */
  vmReady: boolean;
  /** Init containers all completed; default: the VM container has started (init runs before it). */
  initialized?: boolean;
  /** The VM container. */
  container: ContainerRuntimeState;
  /** The init containers that have started so far, in spec order (they run in the VM before the main process). */
  initContainers?: ContainerRuntimeState[];
  /** Hybrid pods: the sidecar containers (every container but the VM container) on the container engine. */
  sidecars?: ContainerRuntimeState[];
  /** Native sidecars (init containers with restartPolicy Always), on the container engine. */
  nativeSidecars?: ContainerRuntimeState[];
}

/** One container as the runtime sees it: the VM container, or an init container run in the VM. */
export interface ContainerRuntimeState {
  name: string;
  image: string;
  imageID?: string;
  /** e.g. "vmlet://<pod-uid>" */
  containerID?: string;
  state:
    | { kind: 'waiting'; reason: string; message?: string }
    | { kind: 'running'; startedAt: Date }
    | { kind: 'terminated'; exitCode: number; signal?: number; reason: string; message?: string; startedAt?: Date; finishedAt: Date };
  lastTermination?: { exitCode: number; reason: string; message?: string; startedAt?: Date; finishedAt: Date };
  ready: boolean;
  started: boolean;
  restartCount: number;
}

/** Replaces Date by string, all the way down: the JSON form of a client-node type. */
export type Json<T> = T extends Date ? string : T extends Array<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;
export type PodStatusJson = Json<V1PodStatus>;
type ConditionJson = Json<V1PodCondition>;
type ContainerStatusJson = NonNullable<PodStatusJson['containerStatuses']>[number];
type ContainerStateJson = NonNullable<ContainerStatusJson['state']>;

/** Conditions the kubelet owns; any other condition (readiness gates) belongs to someone else and is kept. */
const OWNED = ['PodScheduled', 'PodReadyToStartContainers', 'Initialized', 'ContainersReady', 'Ready'];

/** metav1.Time on the wire: RFC 3339, whole seconds, UTC. */
export function rfc3339(d: Date): string {
  return new Date(Math.floor(d.getTime() / 1000) * 1000).toISOString().replace('.000Z', 'Z');
}

export function podStatus(pod: V1Pod, state: PodRuntimeState, now: Date): PodStatusJson {
  const current = pod.status as PodStatusJson | V1PodStatus | undefined;
  const c = state.container;
  const finished = state.phase === 'Succeeded' || state.phase === 'Failed';
  const completed = state.phase === 'Succeeded';
  const initContainers = pod.spec?.initContainers ?? [];
  const initialized = initContainers.length === 0 || (state.initialized ?? (c.started || c.state.kind !== 'waiting'));
  const all = allContainers(pod, state);
  // Native sidecars are listed with the init containers, and count for readiness as the kubelet's do.
  const initStates = [...(state.initContainers ?? []), ...(state.nativeSidecars ?? [])];
  const counted = [...all, ...(state.nativeSidecars ?? [])];

  const verdicts: Array<Omit<ConditionJson, 'lastTransitionTime'>> = [
    { type: 'PodReadyToStartContainers', status: state.vmReady ? 'True' : 'False' },
    initialized
      ? { type: 'Initialized', status: 'True' }
      : { type: 'Initialized', status: 'False', reason: 'ContainersNotInitialized', message: `containers with incomplete status: [${incomplete(initContainers, initStates).join(' ')}]` },
    readiness('ContainersReady', counted, completed),
    readyCondition(pod, counted, completed),
    { type: 'PodScheduled', status: 'True' },
  ];
  const before = new Map((current?.conditions ?? []).map((k) => [k.type, k]));
  const owned = verdicts.map((v): ConditionJson => {
    const prev = before.get(v.type);
    const kept = prev && prev.status === v.status && prev.lastTransitionTime ? time(prev.lastTransitionTime) : rfc3339(now);
    return { ...v, lastTransitionTime: kept };
  });
  const foreign = (current?.conditions ?? []).filter((k) => !OWNED.includes(k.type)).map((k) => k as unknown as ConditionJson);

  const startTime = state.startTime ? rfc3339(state.startTime) : current?.startTime ? time(current.startTime) : undefined;
  const status: PodStatusJson = {
    phase: state.phase,
    ...(state.waiting ? { reason: state.waiting.reason, message: state.waiting.message } : {}),
    conditions: [...owned, ...foreign],
    hostIP: state.hostIP,
    hostIPs: [{ ip: state.hostIP }],
    ...(state.podIP ? { podIP: state.podIP, podIPs: [{ ip: state.podIP }] } : {}),
    ...(startTime ? { startTime } : {}),
    ...(current?.qosClass ? { qosClass: current.qosClass } : {}),
    ...(initContainers.length ? { initContainerStatuses: initStatuses(initContainers, initStates) } : {}),
    containerStatuses: all.map((x) => containerStatus(x, finished)),
  };
  return status;
}

function containerStatus(c: ContainerRuntimeState, finished: boolean): ContainerStatusJson {
  return {
    name: c.name,
    image: c.image,
    imageID: c.imageID ?? '',
    ...(c.containerID ? { containerID: c.containerID } : {}),
    started: finished ? false : c.started,
    ready: c.ready,
    restartCount: c.restartCount,
    state: containerState(c.state, c.containerID),
    lastState: c.lastTermination
      ? {
          terminated: {
            exitCode: c.lastTermination.exitCode,
            reason: c.lastTermination.reason,
            ...(c.lastTermination.message ? { message: c.lastTermination.message } : {}),
            ...(c.lastTermination.startedAt ? { startedAt: rfc3339(c.lastTermination.startedAt) } : {}),
            finishedAt: rfc3339(c.lastTermination.finishedAt),
            ...(c.containerID ? { containerID: c.containerID } : {}),
          },
        }
      : {},
  };
}

/** Init containers that have not completed (exited 0; a native sidecar: started), as the kubelet lists them. */
function incomplete(spec: V1Container[], states: ContainerRuntimeState[]): string[] {
  return spec.filter((ic) => {
    const st = states.find((x) => x.name === ic.name);
    if (ic.restartPolicy === 'Always') return !st?.started;
    return !(st?.state.kind === 'terminated' && st.state.exitCode === 0);
  }).map((ic) => ic.name);
}

/** Every init container of the spec: those not started yet wait in PodInitializing, as on any node. */
function initStatuses(spec: V1Container[], states: ContainerRuntimeState[]): ContainerStatusJson[] {
  return spec.map((ic) => {
    const s = states.find((x) => x.name === ic.name);
    if (s) return containerStatus(s, false);
    return { name: ic.name, image: ic.image ?? '', imageID: '', started: false, ready: false, restartCount: 0, state: { waiting: { reason: 'PodInitializing' } }, lastState: {} };
  });
}

/**
 * Every container of spec.containers, in spec order: the VM container's state and the sidecars'; a sidecar
 * not created yet waits in ContainerCreating. A pod without sidecars has the VM container alone.
 */
function allContainers(pod: V1Pod, state: PodRuntimeState): ContainerRuntimeState[] {
  const spec = pod.spec?.containers ?? [];
  if (spec.length <= 1 && !state.sidecars?.length) return [state.container];
  const vm = vmContainerIndex(pod);
  return spec.map((sc, i) => {
    if (i === vm) return state.container;
    return state.sidecars?.find((x) => x.name === sc.name)
      ?? { name: sc.name, image: sc.image ?? '', state: { kind: 'waiting', reason: 'ContainerCreating' }, ready: false, started: false, restartCount: 0 };
  });
}

function readiness(type: string, all: ContainerRuntimeState[], completed: boolean): Omit<ConditionJson, 'lastTransitionTime'> {
  if (completed) return { type, status: 'False', reason: 'PodCompleted' };
  const unready = all.filter((c) => !c.ready).map((c) => c.name);
  if (unready.length === 0) return { type, status: 'True' };
  return { type, status: 'False', reason: 'ContainersNotReady', message: `containers with unready status: [${unready.join(' ')}]` };
}

/** Ready is ContainersReady plus every readiness gate's condition being True (set by someone else). */
function readyCondition(pod: V1Pod, all: ContainerRuntimeState[], completed: boolean): Omit<ConditionJson, 'lastTransitionTime'> {
  const base = readiness('Ready', all, completed);
  if (base.status !== 'True') return base;
  const conditions = pod.status?.conditions ?? [];
  const unready: string[] = [];
  for (const gate of pod.spec?.readinessGates ?? []) {
    const cond = conditions.find((k) => k.type === gate.conditionType);
    if (!cond) unready.push(`corresponding condition of pod readiness gate "${gate.conditionType}" does not exist.`);
    else if (cond.status !== 'True') unready.push(`the status of pod readiness gate "${gate.conditionType}" is not "True", but ${cond.status}`);
  }
  return unready.length ? { type: 'Ready', status: 'False', reason: 'ReadinessGatesNotReady', message: unready.join(', ') } : base;
}

function containerState(s: ContainerRuntimeState['state'], containerID: string | undefined): ContainerStateJson {
  switch (s.kind) {
    case 'waiting':
      return { waiting: { reason: s.reason, ...(s.message ? { message: s.message } : {}) } };
    case 'running':
      return { running: { startedAt: rfc3339(s.startedAt) } };
    case 'terminated':
      return {
        terminated: {
          exitCode: s.exitCode,
          ...(s.signal !== undefined ? { signal: s.signal } : {}),
          reason: s.reason,
          ...(s.message ? { message: s.message } : {}),
          ...(s.startedAt ? { startedAt: rfc3339(s.startedAt) } : {}),
          finishedAt: rfc3339(s.finishedAt),
          ...(containerID ? { containerID } : {}),
        },
      };
  }
}

/** A time read back from the server (a string) or from a typed object (a Date), as posted. */
function time(t: string | Date): string {
  return typeof t === 'string' ? t : rfc3339(t);
}

/**
 * Whether `next` differs from what the server holds in anything vmlet writes, ignoring condition times
 * (lastProbeTime, lastTransitionTime) and the order of conditions. Fields vmlet never writes (qosClass,
 * nominatedNodeName, ...) are not compared.
 */
export function statusChanged(current: V1PodStatus | PodStatusJson | undefined, next: PodStatusJson): boolean {
  if (!current) return true;
  return canonical(current) !== canonical(next);
}

const WRITTEN = ['phase', 'reason', 'message', 'hostIP', 'hostIPs', 'podIP', 'podIPs', 'startTime', 'initContainerStatuses', 'containerStatuses'] as const;

function canonical(s: V1PodStatus | PodStatusJson): string {
  const picked: Record<string, unknown> = {};
  for (const k of WRITTEN) if (s[k] !== undefined && s[k] !== null) picked[k] = s[k];
  picked.conditions = [...(s.conditions ?? [])]
    .map((c) => ({ type: c.type, status: c.status, reason: c.reason ?? '', message: c.message ?? '' }))
    .sort((a, b) => a.type.localeCompare(b.type));
  return stable(picked);
}

/** JSON with keys sorted (the server answers in Go struct order), Dates as posted, nulls and undefineds dropped. */
function stable(v: unknown): string {
  if (v instanceof Date) return JSON.stringify(rfc3339(v));
  if (Array.isArray(v)) return `[${v.map(stable).join(',')}]`;
  if (v && typeof v === 'object') {
    const entries = Object.entries(v).filter(([, x]) => x !== undefined && x !== null).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${stable(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}
