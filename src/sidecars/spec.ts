// Pure parts of the sidecar layer: a V1Container (plus what the runtime resolved) → the Docker API's
// create body; our labels and container names; an inspect answer → a container status. No I/O.
import { createHash } from 'node:crypto';
import type { V1Container, V1ContainerPort, V1PodSecurityContext, V1SecurityContext } from '@kubernetes/client-node';
import type { ContainerCreateOptions, ContainerInspectInfo } from 'dockerode';
import { parseQuantity } from '../kube/quantity.ts';
import { SidecarEngineError } from './errors.ts';

/** Labels on every sidecar container; `list(podUid)` finds a pod's containers by the first. */
export const LABELS = {
  podUid: 'vmlet.dev/pod-uid',
  podNamespace: 'vmlet.dev/pod-namespace',
  podName: 'vmlet.dev/pod-name',
  containerName: 'vmlet.dev/container-name',
  /** Which run of the container this is (0, 1, ...): restarts are new containers, as the kubelet's. */
  restartCount: 'vmlet.dev/restart-count',
  /** sha256 (16 hex) of the V1Container: a changed spec after a vmlet restart means "recreate". */
  containerHash: 'vmlet.dev/container-hash',
  managedBy: 'vmlet.dev/managed-by',
} as const;

export interface PodIdentity {
  namespace: string;
  name: string;
  uid: string;
}

/** A host directory in the container: the same directories the VM gets as shares. */
export interface SidecarMount {
  hostPath: string;
  containerPath: string;
  readOnly?: boolean;
}

export interface SidecarSpec {
  pod: PodIdentity;
  container: V1Container;
  /** The pod's securityContext: runAsUser/runAsGroup/runAsNonRoot fall back to it, supplementalGroups and sysctls come from it. */
  podSecurityContext?: V1PodSecurityContext;
  /** The resolved environment (pod/env.ts), in order. */
  env?: ReadonlyArray<{ name: string; value: string }>;
  /** Entrypoint and arguments after $(VAR) expansion; default: the container's command and args. */
  command?: string[];
  args?: string[];
  /** Default: container.image. A digest-pinned reference may be passed after the pull. */
  image?: string;
  /** Which run this is (a restart creates a new container with restartCount + 1). Default 0. */
  restartCount?: number;
  mounts?: SidecarMount[];
  /**
   * Network of the container: "bridge" (the engine's default network; default), "none", "host", or
   * "container:<id>" to share the network namespace (and so `localhost`) of another sidecar of the pod.
   */
  networkMode?: string;
  /** Publish the container's ports on this host address (same port numbers): the pod IP, for the VM to reach. */
  publishOn?: string;
  /**
   * More ports to expose and publish: those of the pod's other sidecars, which join this container's
   * network namespace and cannot publish their own (the engine refuses ports on a "container:" network).
   */
  publishPorts?: V1ContainerPort[];
  /** Default: the pod name (cut to 63 characters). Ignored with a "container:" network. */
  hostname?: string;
  labels?: Record<string, string>;
}

export interface CreateBody {
  name: string;
  options: ContainerCreateOptions;
  /** Fields of the spec a container engine cannot apply, each with why: for Warning Events. */
  ignored: string[];
  /** The image's user must be checked to be non-root before start (runAsNonRoot without runAsUser). */
  verifyNonRootImageUser: boolean;
}

/** "vmlet_<container>_<pod>_<namespace>_<uid>_<restartCount>", the dockershim pattern with our prefix. */
export function sidecarName(pod: PodIdentity, container: string, restartCount: number): string {
  return `vmlet_${container}_${pod.name}_${pod.namespace}_${pod.uid}_${restartCount}`;
}

export function containerHash(container: V1Container): string {
  return createHash('sha256').update(JSON.stringify(container)).digest('hex').slice(0, 16);
}

/** The Docker API create body for one sidecar; throws SidecarEngineError(InvalidSpec) for what cannot run at all. */
export function createBody(spec: SidecarSpec): CreateBody {
  const c = spec.container;
  const image = spec.image ?? c.image;
  if (!image) throw new SidecarEngineError('InvalidSpec', `container "${c.name}" has no image`);
  const restartCount = spec.restartCount ?? 0;
  const ignored: string[] = [];
  const labels: Record<string, string> = {
    ...spec.labels,
    [LABELS.podUid]: spec.pod.uid,
    [LABELS.podNamespace]: spec.pod.namespace,
    [LABELS.podName]: spec.pod.name,
    [LABELS.containerName]: c.name,
    [LABELS.restartCount]: String(restartCount),
    [LABELS.containerHash]: containerHash(c),
    [LABELS.managedBy]: 'vmlet',
  };
  const command = spec.command ?? c.command;
  const args = spec.args ?? c.args;
  const networkMode = spec.networkMode ?? 'bridge';
  const sharedNetwork = networkMode.startsWith('container:');
  const sec = securityOptions(c.securityContext, spec.podSecurityContext, c.name, ignored);
  const ports = [...(c.ports ?? []), ...(spec.publishPorts ?? [])].filter((p) => p.containerPort > 0);
  const exposed: Record<string, object> = {};
  const bindings: Record<string, Array<{ HostIp: string; HostPort: string }>> = {};
  for (const p of ports) {
    const key = `${p.containerPort}/${(p.protocol ?? 'TCP').toLowerCase()}`;
    if (exposed[key]) continue; // the first of two containers that name one port wins
    exposed[key] = {};
    if (spec.publishOn && !sharedNetwork && networkMode !== 'host' && networkMode !== 'none') {
      bindings[key] = [{ HostIp: p.hostIP ?? spec.publishOn, HostPort: String(p.hostPort ?? p.containerPort) }];
    }
  }
  if (sharedNetwork && (spec.podSecurityContext?.sysctls?.length ?? 0) > 0) ignored.push('securityContext.sysctls: set on the first sidecar, whose network the others share');
  const options: ContainerCreateOptions = {
    name: sidecarName(spec.pod, c.name, restartCount),
    Image: image,
    Labels: labels,
    Env: (spec.env ?? []).map((e) => `${e.name}=${e.value}`),
    ...(command && command.length > 0 ? { Entrypoint: command, Cmd: args ?? [] } : args && args.length > 0 ? { Cmd: args } : {}),
    ...(c.workingDir ? { WorkingDir: c.workingDir } : {}),
    ...(sharedNetwork ? {} : { Hostname: (spec.hostname ?? spec.pod.name).slice(0, 63).replace(/[-.]+$/, '') }),
    Tty: c.tty === true,
    OpenStdin: c.stdin === true,
    StdinOnce: c.stdin === true && c.stdinOnce === true,
    AttachStdin: false,
    AttachStdout: false,
    AttachStderr: false,
    ...(sec.user ? { User: sec.user } : {}),
    ...(Object.keys(exposed).length > 0 && !sharedNetwork ? { ExposedPorts: exposed } : {}),
    HostConfig: {
      NetworkMode: networkMode,
      RestartPolicy: { Name: 'no' },
      ...resources(c, ignored),
      Mounts: (spec.mounts ?? []).map((m) => ({ Type: 'bind' as const, Source: m.hostPath, Target: m.containerPath, ReadOnly: m.readOnly === true })),
      ...(Object.keys(bindings).length > 0 ? { PortBindings: bindings } : {}),
      ...sec.host,
      ...(!sharedNetwork && spec.podSecurityContext?.sysctls?.length
        ? { Sysctls: Object.fromEntries(spec.podSecurityContext.sysctls.map((s) => [s.name, s.value])) }
        : {}),
    },
  };
  return { name: options.name!, options, ignored, verifyNonRootImageUser: sec.verifyNonRootImageUser };
}

/** limits.cpu → NanoCpus, limits.memory → Memory, requests.cpu → CpuShares (as the kubelet: 1024 a core, at least 2). */
function resources(c: V1Container, ignored: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  const q = (what: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    try {
      return parseQuantity(String(v));
    } catch {
      throw new SidecarEngineError('InvalidSpec', `container "${c.name}": resources.${what} "${v}" is not a quantity`);
    }
  };
  const limits = c.resources?.limits ?? {};
  const requests = c.resources?.requests ?? {};
  const cpu = q('limits.cpu', limits.cpu);
  if (cpu !== undefined && cpu > 0) out.NanoCpus = Math.round(cpu * 1e9);
  const memory = q('limits.memory', limits.memory);
  if (memory !== undefined && memory > 0) out.Memory = Math.floor(memory);
  const cpuRequest = q('requests.cpu', requests.cpu ?? limits.cpu);
  if (cpuRequest !== undefined) out.CpuShares = Math.max(2, Math.floor(cpuRequest * 1024));
  for (const name of Object.keys(limits)) if (name !== 'cpu' && name !== 'memory') ignored.push(`resources.limits.${name}: not a container engine resource`);
  return out;
}

interface SecurityOptions {
  user?: string;
  host: Record<string, unknown>;
  verifyNonRootImageUser: boolean;
}

function securityOptions(sc: V1SecurityContext | undefined, psc: V1PodSecurityContext | undefined, name: string, ignored: string[]): SecurityOptions {
  const host: Record<string, unknown> = {};
  const uid = sc?.runAsUser ?? psc?.runAsUser;
  const gid = sc?.runAsGroup ?? psc?.runAsGroup;
  let user: string | undefined;
  if (uid !== undefined) user = gid !== undefined ? `${uid}:${gid}` : String(uid);
  else if (gid !== undefined) ignored.push('securityContext.runAsGroup: needs runAsUser too (a container engine takes "user:group")');
  const nonRoot = sc?.runAsNonRoot ?? psc?.runAsNonRoot;
  if (nonRoot === true && uid === 0) {
    throw new SidecarEngineError('InvalidSpec', `container "${name}": runAsNonRoot is true but runAsUser is 0 (root)`);
  }
  if (psc?.supplementalGroups?.length) host.GroupAdd = psc.supplementalGroups.map(String);
  if (sc?.readOnlyRootFilesystem) host.ReadonlyRootfs = true;
  if (sc?.privileged) host.Privileged = true;
  if (sc?.capabilities?.add?.length) host.CapAdd = sc.capabilities.add;
  if (sc?.capabilities?.drop?.length) host.CapDrop = sc.capabilities.drop;
  const securityOpt: string[] = [];
  if (sc?.allowPrivilegeEscalation === false) securityOpt.push('no-new-privileges');
  const seccomp = sc?.seccompProfile ?? psc?.seccompProfile;
  if (seccomp?.type === 'Unconfined') securityOpt.push('seccomp=unconfined');
  else if (seccomp?.type === 'Localhost') ignored.push('securityContext.seccompProfile: Localhost profiles are not supported for sidecars (the engine default applies)');
  if (securityOpt.length > 0) host.SecurityOpt = securityOpt;
  if (sc?.seLinuxOptions ?? psc?.seLinuxOptions) ignored.push('securityContext.seLinuxOptions: not applied to sidecars');
  if (sc?.appArmorProfile ?? psc?.appArmorProfile) ignored.push('securityContext.appArmorProfile: not applied to sidecars');
  if (sc?.procMount && sc.procMount !== 'Default') ignored.push('securityContext.procMount: not applied to sidecars');
  if (psc?.fsGroup !== undefined) ignored.push('securityContext.fsGroup: host directories are bind-mounted as they are');
  return { ...(user !== undefined ? { user } : {}), host, verifyNonRootImageUser: nonRoot === true && uid === undefined };
}

/** Is an image's Config.User root, as the kubelet judges for runAsNonRoot (a name it cannot verify counts as a refusal)? */
export function nonRootImageUserProblem(imageUser: string | undefined): string | undefined {
  const user = (imageUser ?? '').split(':')[0]!;
  if (user === '' || user === '0' || user === 'root') return 'the image runs as root and runAsNonRoot is true';
  if (!/^\d+$/.test(user)) return `the image's user "${user}" is not numeric, so runAsNonRoot cannot be verified`;
  return undefined;
}

export type SidecarState =
  | { kind: 'waiting'; reason: string; message?: string }
  | { kind: 'running'; startedAt: Date }
  | { kind: 'terminated'; exitCode: number; reason: string; message?: string; startedAt?: Date; finishedAt: Date };

/** One sidecar container as the engine reports it. */
export interface SidecarStatus {
  /** The engine's container ID (64 hex). */
  id: string;
  /** The engine's container name, without the leading "/". */
  engineName: string;
  /** "docker://<id>", for containerStatuses[].containerID. */
  containerID: string;
  pod: PodIdentity;
  /** The V1Container's name. */
  containerName: string;
  /** From our label: which run of the container this is. */
  restartCount: number;
  containerHash?: string;
  image: string;
  /** The image ID ("sha256:..."). */
  imageID: string;
  /** The engine's word: created, running, paused, restarting, exited, dead, ... */
  engineState: string;
  running: boolean;
  exitCode?: number;
  startedAt?: Date;
  finishedAt?: Date;
  oomKilled: boolean;
  /** The engine's error (e.g. why start failed). */
  error?: string;
  pid?: number;
  /** The container's address on the engine's network (none on a "container:" network, or when stopped). */
  ipAddress?: string;
  tty: boolean;
  /** The state in Kubernetes' terms (waiting/running/terminated). */
  state: SidecarState;
}

/** Docker's zero time ("0001-01-01T00:00:00Z") and unparsable dates are absent. */
export function engineTime(text: string | undefined): Date | undefined {
  if (!text || text.startsWith('0001-01-01')) return undefined;
  const d = new Date(text);
  return Number.isNaN(d.getTime()) || d.getTime() <= 0 ? undefined : d;
}

export function statusFromInspect(info: ContainerInspectInfo): SidecarStatus {
  const labels = info.Config?.Labels ?? {};
  const s = info.State;
  const startedAt = engineTime(s.StartedAt);
  const finishedAt = engineTime(s.FinishedAt);
  const running = s.Running === true || s.Status === 'running';
  let state: SidecarState;
  if (running) state = { kind: 'running', startedAt: startedAt ?? new Date() };
  else if (s.Status === 'exited' || s.Status === 'dead' || (s.Status === 'stopped' && startedAt)) {
    const exitCode = s.ExitCode ?? 0;
    const reason = s.OOMKilled ? 'OOMKilled' : exitCode === 0 ? 'Completed' : 'Error';
    state = { kind: 'terminated', exitCode, reason, ...(s.Error ? { message: s.Error } : {}), ...(startedAt ? { startedAt } : {}), finishedAt: finishedAt ?? new Date() };
  } else if (s.Error) state = { kind: 'waiting', reason: 'CreateContainerError', message: s.Error };
  else state = { kind: 'waiting', reason: 'ContainerCreating' };
  return {
    id: info.Id,
    engineName: info.Name.replace(/^\//, ''),
    containerID: `docker://${info.Id}`,
    pod: { uid: labels[LABELS.podUid] ?? '', namespace: labels[LABELS.podNamespace] ?? '', name: labels[LABELS.podName] ?? '' },
    containerName: labels[LABELS.containerName] ?? '',
    restartCount: Number(labels[LABELS.restartCount] ?? 0) || 0,
    ...(labels[LABELS.containerHash] ? { containerHash: labels[LABELS.containerHash] } : {}),
    image: info.Config?.Image ?? '',
    imageID: info.Image,
    engineState: s.Status,
    running,
    ...(running || !(startedAt || s.Status === 'exited') ? {} : { exitCode: s.ExitCode }),
    ...(startedAt ? { startedAt } : {}),
    ...(finishedAt && !running ? { finishedAt } : {}),
    oomKilled: s.OOMKilled === true,
    ...(s.Error ? { error: s.Error } : {}),
    ...(s.Pid ? { pid: s.Pid } : {}),
    ...(ipAddress(info) ? { ipAddress: ipAddress(info) } : {}),
    tty: info.Config?.Tty === true,
    state,
  };
}

/** NetworkSettings.IPAddress (Docker's default bridge), else the first network's (podman, user networks). */
function ipAddress(info: ContainerInspectInfo): string | undefined {
  const n = info.NetworkSettings as (ContainerInspectInfo['NetworkSettings'] & { IPAddress?: string }) | undefined;
  if (n?.IPAddress) return n.IPAddress;
  for (const net of Object.values(n?.Networks ?? {})) if (net?.IPAddress) return net.IPAddress;
  return undefined;
}
