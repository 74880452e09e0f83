// What vmlet cannot run, found before anything is pulled or booted. Pure: the pod and the node's settings
// in, a PodSpecError out (every problem at once, so a user fixes a spec in one round, not one per Event).
//
// Which checks can ever fire: the API server validates a pod on create, so through it some specs never
// reach vmlet (marked "API server rejects" below). They are still checked, because static pods from
// --pod-manifest-path (standalone mode) reach vmlet without any API server. Checks marked "API server
// allows" are the ones a user of a cluster will actually meet.
import path from 'node:path';
import type { V1Container, V1DownwardAPIVolumeFile, V1Pod, V1Probe, V1Volume } from '@kubernetes/client-node';
import { parseImageRef } from '../../images/registry/reference.ts';
import { parseQuantity } from '../../kube/quantity.ts';
import { PodSpecError } from './errors.ts';

export interface CheckOptions {
  /** Host directories a hostPath volume may name (itself or below); empty: no hostPath at all. */
  hostPathPrefixes: string[];
  /** RuntimeClass names vmlet answers to; when given, any other runtimeClassName is refused. */
  runtimeClasses?: string[];
}

/** Kubernetes' env var name rule (validation.IsEnvVarName before RelaxedEnvironmentVariableValidation). */
export const ENV_NAME = /^[-._a-zA-Z][-._a-zA-Z0-9]*$/;

interface Problem {
  reason: string;
  message: string;
}

const SUPPORTED_VOLUMES = ['configMap', 'secret', 'downwardAPI', 'projected', 'emptyDir', 'hostPath'] as const;
const SUPPORTED_PROJECTIONS = ['configMap', 'secret', 'downwardAPI', 'serviceAccountToken'] as const;
const VOLUME_HINT = 'VM pods support configMap, secret, downwardAPI, projected, emptyDir and hostPath (under the node\'s allowed prefixes)';
/** hostPath types a VM can get: a directory, shared over virtiofs ("" skips the kubelet's type check). */
const HOSTPATH_TYPES = ['', 'Directory', 'DirectoryOrCreate'];
/**
 * The smallest ephemeral-storage limit vmlet starts a VM with: a VM writes this much to its disk while it
 * boots (journal, logs, package caches), so a smaller limit could only ever end in an eviction.
 */
export const MIN_EPHEMERAL_STORAGE = 64 * 1024 * 1024;
/** The container resources env and downwardAPI may refer to in a VM pod (the VM's disk is its image's). */
const REFERABLE_RESOURCES = ['limits.cpu', 'limits.memory', 'requests.cpu', 'requests.memory'];

/**
 * Names the container of a hybrid pod that runs as the VM (default: the first); every other container of
 * spec.containers is a sidecar on the node's container engine.
 */
export const VM_CONTAINER_ANNOTATION = 'vmlet.dev/vm-container';

/** Index in spec.containers of the VM container: the one the annotation names, else 0. */
export function vmContainerIndex(pod: V1Pod): number {
  const named = pod.metadata?.annotations?.[VM_CONTAINER_ANNOTATION];
  const i = named === undefined ? -1 : (pod.spec?.containers ?? []).findIndex((c) => c.name === named);
  return i >= 0 ? i : 0;
}

/** The VM container (spec.containers[vmContainerIndex]). */
export function vmContainer(pod: V1Pod): V1Container {
  return pod.spec!.containers[vmContainerIndex(pod)]!;
}

/** The pod's sidecar containers (every container but the VM container), in spec order. */
export function sidecarContainers(pod: V1Pod): V1Container[] {
  const vm = vmContainerIndex(pod);
  return (pod.spec?.containers ?? []).filter((_, i) => i !== vm);
}

/**
 * Where an init container runs: in the VM ("vm", an agent process) when its image is the VM container's,
 * else on the container engine ("engine"); an init container with restartPolicy Always is a native
 * sidecar, which runs on the engine for the pod's whole life ("native").
 */
export function initContainerPlace(pod: V1Pod, ic: V1Container): 'vm' | 'engine' | 'native' {
  if (ic.restartPolicy === 'Always') return 'native';
  return ic.image === vmContainer(pod).image ? 'vm' : 'engine';
}

/** The pod's containers that run on the container engine: native sidecars, then sidecars, then init containers. */
export function engineContainers(pod: V1Pod): Array<{ container: V1Container; kind: 'native' | 'sidecar' | 'init' }> {
  const inits = pod.spec?.initContainers ?? [];
  return [
    ...inits.filter((ic) => initContainerPlace(pod, ic) === 'native').map((container) => ({ container, kind: 'native' as const })),
    ...sidecarContainers(pod).map((container) => ({ container, kind: 'sidecar' as const })),
    ...inits.filter((ic) => initContainerPlace(pod, ic) === 'engine').map((container) => ({ container, kind: 'init' as const })),
  ];
}

/** Throws a PodSpecError naming every field vmlet cannot run; returns when the pod can become a VM. */
export function checkPod(pod: V1Pod, opts: CheckOptions): void {
  const problems: Problem[] = [];
  const add = (reason: string, message: string) => problems.push({ reason, message });
  const spec = pod.spec;
  if (!spec) throw new PodSpecError('InvalidPodSpec', 'spec: the pod has no spec');

  const containers = spec.containers ?? [];
  // API server rejects; a static pod may not.
  if (containers.length === 0) add('InvalidPodSpec', 'spec.containers: a pod needs one container, the VM container; none is given');
  // API server allows any annotation value.
  const named = pod.metadata?.annotations?.[VM_CONTAINER_ANNOTATION];
  if (named !== undefined && !containers.some((c) => c.name === named)) {
    add('InvalidPodSpec', `metadata.annotations["${VM_CONTAINER_ANNOTATION}"]: no container named "${named}" in spec.containers (there are: ${containers.map((c) => c.name).join(', ') || 'none'}); name the container that runs as the VM`);
  }
  const vmIndex = vmContainerIndex(pod);

  // API server allows all three (Pod Security may refuse them).
  for (const field of ['hostNetwork', 'hostPID', 'hostIPC'] as const) {
    if (spec[field]) add('UnsupportedPodSpec', `spec.${field}: true is not supported: a VM pod runs in its own guest kernel and cannot share the host's ${field.slice(4) === 'Network' ? 'network' : field.slice(4)} namespace; remove spec.${field}`);
  }
  // API server rejects them on create; they arrive later through the ephemeralcontainers subresource.
  (spec.ephemeralContainers ?? []).forEach((c, i) => {
    add('UnsupportedPodSpec', `spec.ephemeralContainers[${i}] (${c.name}): ephemeral containers (kubectl debug) are not supported in VM pods; use kubectl exec into the VM instead`);
  });
  // API server allows when the RuntimeClass object exists (the RuntimeClass admission plugin checks that).
  if (spec.runtimeClassName && opts.runtimeClasses && !opts.runtimeClasses.includes(spec.runtimeClassName)) {
    add('UnsupportedPodSpec', `spec.runtimeClassName: "${spec.runtimeClassName}" is not a runtime class of this node (${opts.runtimeClasses.length ? `known: ${opts.runtimeClasses.join(', ')}` : 'it has none'})`);
  }
  if (spec.os?.name && spec.os.name !== 'linux') {
    add('UnsupportedPodSpec', `spec.os.name: "${spec.os.name}" is not supported; VM pods declare linux (or leave spec.os out)`);
  }
  if (spec.resourceClaims?.length) add('UnsupportedPodSpec', 'spec.resourceClaims: dynamic resource allocation is not supported in VM pods; remove the claims');

  const volumes = new Map<string, V1Volume>();
  (spec.volumes ?? []).forEach((v, i) => {
    const at = `spec.volumes[${i}] (${v.name})`;
    // API server rejects duplicates.
    if (volumes.has(v.name)) add('InvalidPodSpec', `${at}: the volume name "${v.name}" is used twice`);
    volumes.set(v.name, v);
    checkVolume(v, at, opts, add);
  });

  containers.forEach((c, i) => checkContainer(c, where('containers', i, c), volumes, add, i === vmIndex ? 'vm' : 'sidecar'));
  // Init containers with the VM container's image run as processes in the pod's VM, before its main
  // process, and need a command; any other image runs on the container engine, as a sidecar does.
  const vmImage = containers[vmIndex]?.image;
  (spec.initContainers ?? []).forEach((c, i) => {
    const at = where('initContainers', i, c);
    const inVm = c.image === vmImage;
    // restartPolicy Always (API server allows it: SidecarContainers, on by default since 1.29) is a native sidecar.
    if (c.restartPolicy === 'Always' && inVm) {
      add('UnsupportedPodSpec', `${at}: restartPolicy Always makes "${c.name}" a native sidecar, which runs on the node's container engine, but its image is the VM's ("${vmImage}"); give it a container image, or drop restartPolicy to run it in the VM to completion before the main process`);
      return;
    }
    checkContainer(c, at, volumes, add, inVm ? 'vm' : 'sidecar');
    if (inVm && !c.command?.length && !c.args?.length) {
      add('UnsupportedPodSpec', `${at}: an init container with the VM's image runs as a process in the VM, and a VM image has no entrypoint; set command`);
    }
  });

  if (problems.length === 0) return;
  const first = problems[0]!;
  const messages = problems.map((p) => p.message);
  throw new PodSpecError(first.reason, messages.length === 1 ? first.message : `${messages.length} problems: ${messages.join('; ')}`, messages);
}

function where(list: 'containers' | 'initContainers', i: number, c: V1Container): string {
  return `spec.${list}[${i}] (${c.name})`;
}

type Add = (reason: string, message: string) => void;

function checkVolume(v: V1Volume, at: string, opts: CheckOptions, add: Add): void {
  // A volume with no source is an emptyDir (the API server's defaulting; static pods are defaulted too).
  const sources = Object.keys(v).filter((k) => k !== 'name' && (v as unknown as Record<string, unknown>)[k] != null);
  // API server allows every one of these (they need a storage driver vmlet does not have).
  const unsupported = sources.filter((s) => !(SUPPORTED_VOLUMES as readonly string[]).includes(s));
  for (const s of unsupported) {
    const hint = s === 'persistentVolumeClaim' || s === 'ephemeral' || s === 'csi' ? 'persistent and CSI volumes need a storage driver on the node, which vmlet does not have yet' : `${s} volumes are not supported`;
    add('UnsupportedPodSpec', `${at}: ${hint}; ${VOLUME_HINT}`);
  }
  if (v.hostPath) {
    const p = v.hostPath.path;
    const allowed = path.isAbsolute(p) && opts.hostPathPrefixes.some((prefix) => under(path.normalize(p), path.normalize(prefix)));
    // API server allows any path (Pod Security's baseline level refuses hostPath altogether).
    if (!allowed && opts.hostPathPrefixes.length === 0) {
      add('UnsupportedPodSpec', `${at}.hostPath.path: hostPath "${p}" is outside the host directories this node shares (none are configured: the node's hostPathPrefixes setting, --host-path-prefix, is empty); use an emptyDir, configMap or secret volume instead, or ask the node's administrator to share a directory with --host-path-prefix`);
    } else if (!allowed) {
      add('UnsupportedPodSpec', `${at}.hostPath.path: hostPath "${p}" is outside the host directories this node shares (${opts.hostPathPrefixes.join(', ')}: its hostPathPrefixes setting); use a path under one of them, or ask the node's administrator to add one with --host-path-prefix`);
    }
    const type = v.hostPath.type ?? '';
    if (!HOSTPATH_TYPES.includes(type)) {
      add('UnsupportedPodSpec', `${at}.hostPath.type: "${type}" is not supported: a VM gets host directories (shared over virtiofs), not single files, sockets or devices; share the directory that holds it (type Directory) and use the file's path below the mountPath in the guest`);
    }
  }
  if (v.emptyDir?.medium && v.emptyDir.medium !== 'Memory') {
    add('UnsupportedPodSpec', `${at}: emptyDir medium "${v.emptyDir.medium}" is not supported; use "" (disk) or "Memory"`);
  }
  (v.projected?.sources ?? []).forEach((src, j) => {
    for (const k of Object.keys(src).filter((key) => (src as Record<string, unknown>)[key] != null)) {
      if (!(SUPPORTED_PROJECTIONS as readonly string[]).includes(k)) {
        add('UnsupportedPodSpec', `${at}.projected.sources[${j}]: ${k} is not supported; projected volumes may hold configMap, secret, downwardAPI and serviceAccountToken`);
      }
    }
    checkDownwardItems(src.downwardAPI?.items, `${at}.projected.sources[${j}].downwardAPI`, add);
  });
  checkDownwardItems(v.downwardAPI?.items, `${at}.downwardAPI`, add);
}

// API server allows resourceFieldRef items (with a containerName).
function checkDownwardItems(items: V1DownwardAPIVolumeFile[] | undefined, at: string, add: Add): void {
  (items ?? []).forEach((item, k) => {
    if (item.resourceFieldRef) {
      add('UnsupportedPodSpec', `${at}.items[${k}] (${item.path}).resourceFieldRef: "${item.resourceFieldRef.resource}" is not supported in downwardAPI volumes of VM pods yet; use an environment variable with valueFrom.resourceFieldRef, or a fieldRef item`);
    }
  });
}

function under(p: string, prefix: string): boolean {
  const rel = path.relative(prefix, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

function checkContainer(c: V1Container, at: string, volumes: Map<string, V1Volume>, add: Add, kind: 'vm' | 'sidecar'): void {
  // API server rejects an empty image on a pod (not on a pod template); a static pod may have none.
  if (!c.image?.trim()) add('InvalidPodSpec', `${at}.image: no image is given; name the VM image, e.g. ghcr.io/cirruslabs/ubuntu:latest`);
  else if (c.image !== c.image.trim()) add('InvalidPodSpec', `${at}.image: "${c.image}" has leading or trailing spaces`);
  else {
    // API server allows any image text without spaces at its ends; the kubelet's reason is InvalidImageName.
    try {
      parseImageRef(c.image);
    } catch (err) {
      const why = (err as Error).message.replace(/^.*invalid image reference "[^"]*": /, '');
      add('InvalidImageName', `${at}.image: "${c.image}" is not a valid image reference: ${why}; write it as [registry/]repository[:tag][@sha256:digest], e.g. ghcr.io/cirruslabs/ubuntu:latest`);
    }
  }

  // API server allows.
  (c.ports ?? []).forEach((p, i) => {
    if (p.hostPort && kind === 'vm') add('UnsupportedPodSpec', `${at}.ports[${i}].hostPort: ${p.hostPort} is not supported: the VM's ports are not published on the host; remove hostPort and reach the pod through its IP or a Service`);
    // A sidecar's ports are published on the pod IP (the host's) with their own numbers anyway.
    if (p.hostPort && kind === 'sidecar') add('UnsupportedPodSpec', `${at}.ports[${i}].hostPort: ${p.hostPort} is not supported for sidecar containers: their containerPorts are published on the pod IP (the node's) with the same number; remove hostPort`);
  });
  if (c.securityContext?.privileged && kind === 'vm') {
    add('UnsupportedPodSpec', `${at}.securityContext.privileged: true is not supported: the VM has its own kernel and no access to the host's devices; remove privileged (root in the guest needs no privilege on the host)`);
  }
  if (c.securityContext?.privileged && kind === 'sidecar') {
    add('UnsupportedPodSpec', `${at}.securityContext.privileged: true is not supported: "${c.name}" is a sidecar container on the node's container engine, where privileged would give it the host; remove privileged, or make it the VM container (annotation ${VM_CONTAINER_ANNOTATION})`);
  }
  // API server allows a relative workingDir.
  if (c.workingDir && !c.workingDir.startsWith('/')) add('InvalidPodSpec', `${at}.workingDir: "${c.workingDir}" is not an absolute path; write it from / (e.g. /${c.workingDir})`);
  if (c.volumeDevices?.length) add('UnsupportedPodSpec', `${at}.volumeDevices: raw block devices are not supported in VM pods`);

  const mountPaths = new Set<string>();
  (c.volumeMounts ?? []).forEach((m, i) => {
    const mat = `${at}.volumeMounts[${i}]`;
    // API server rejects an unknown volume, a duplicate mountPath and ".." in subPath; allows a relative mountPath.
    if (!volumes.has(m.name)) add('InvalidPodSpec', `${mat}.name: no volume named "${m.name}" in spec.volumes${volumes.size ? ` (there are: ${[...volumes.keys()].join(', ')})` : ''}`);
    if (!m.mountPath?.startsWith('/')) add('InvalidPodSpec', `${mat}.mountPath: "${m.mountPath ?? ''}" is not an absolute path; the guest mounts volumes at absolute paths`);
    else {
      const normal = path.posix.normalize(m.mountPath).replace(/(.)\/$/, '$1');
      if (mountPaths.has(normal)) add('InvalidPodSpec', `${mat}.mountPath: "${m.mountPath}" is already mounted by another volumeMount of this container`);
      mountPaths.add(normal);
    }
    if (m.subPath && (m.subPath.startsWith('/') || m.subPath.split('/').includes('..'))) {
      add('InvalidPodSpec', `${mat}.subPath: "${m.subPath}" must be a relative path inside the volume, without ".."`);
    }
  });

  // API server rejects a probe or hook with no handler, or with two.
  for (const kind of ['livenessProbe', 'readinessProbe', 'startupProbe'] as const) {
    const probe = c[kind];
    if (probe) checkHandler(probe, `${at}.${kind}`, ['exec', 'httpGet', 'tcpSocket', 'grpc'], add);
  }
  for (const kind of ['postStart', 'preStop'] as const) {
    const hook = c.lifecycle?.[kind];
    if (hook) checkHandler(hook, `${at}.lifecycle.${kind}`, ['exec', 'httpGet', 'tcpSocket', 'sleep'], add);
  }

  // API server rejects these names unless RelaxedEnvironmentVariableValidation is on (beta, default on, in
  // 1.32; GA in 1.34): newer clusters let any printable name but "=" through, and then they reach vmlet.
  (c.env ?? []).forEach((e, i) => {
    if (!ENV_NAME.test(e.name)) add('InvalidPodSpec', `${at}.env[${i}].name: "${e.name}" is not a valid environment variable name (letters, digits, "_", "-", "." and not starting with a digit)`);
  });
  (c.env ?? []).forEach((e, i) => {
    const ref = e.valueFrom?.resourceFieldRef;
    // API server allows ephemeral-storage and hugepages-* too.
    if (ref && !REFERABLE_RESOURCES.includes(ref.resource)) {
      add('UnsupportedPodSpec', `${at}.env[${i}] (${e.name}).valueFrom.resourceFieldRef.resource: "${ref.resource}" is not supported in VM pods; use one of ${REFERABLE_RESOURCES.join(', ')} (a VM's disk is its image's, not an ephemeral-storage allocation)`);
    }
  });
  (c.envFrom ?? []).forEach((e, i) => {
    if (e.prefix && !ENV_NAME.test(e.prefix)) add('InvalidPodSpec', `${at}.envFrom[${i}].prefix: "${e.prefix}" is not a valid start of an environment variable name (letters, digits, "_", "-", "." and not starting with a digit)`);
  });

  checkResources(c, at, add);
}

function checkHandler(handler: object, at: string, kinds: string[], add: Add): void {
  const set = kinds.filter((k) => (handler as Record<string, unknown>)[k] != null);
  if (set.length === 0) add('InvalidPodSpec', `${at}: no handler is given; set one of ${kinds.join(', ')}`);
  else if (set.length > 1) add('InvalidPodSpec', `${at}: only one handler may be given, found ${set.join(' and ')}`);
  void (handler as V1Probe);
}

function checkResources(c: V1Container, at: string, add: Add): void {
  const parsed: Record<string, number | undefined> = {};
  for (const kind of ['limits', 'requests'] as const) {
    for (const res of ['cpu', 'memory'] as const) {
      const text = c.resources?.[kind]?.[res];
      if (text === undefined) continue;
      try {
        parsed[`${kind}.${res}`] = parseQuantity(String(text));
      } catch {
        // API server rejects.
        add('InvalidPodSpec', `${at}.resources.${kind}.${res}: "${String(text)}" is not a quantity (examples: 500m, 2, 512Mi, 4Gi)`);
      }
    }
  }
  // API server allows any non-negative amount.
  for (const kind of ['limits', 'requests'] as const) {
    const text = c.resources?.[kind]?.['ephemeral-storage'];
    if (text === undefined || text === null) continue;
    let bytes: number | undefined;
    try {
      bytes = parseQuantity(String(text));
    } catch {
      add('InvalidPodSpec', `${at}.resources.${kind}.ephemeral-storage: "${String(text)}" is not a quantity (examples: 1Gi, 20Gi)`);
    }
    if (kind === 'limits' && bytes !== undefined && bytes < MIN_EPHEMERAL_STORAGE) {
      add('InvalidVmSize', `${at}.resources.limits.ephemeral-storage: ${String(text)} is less than a VM writes to its disk while it boots; give at least 64Mi (e.g. 1Gi) or remove the limit (vmlet does not enforce ephemeral-storage limits yet: a VM's disk is a copy of its image's)`);
    }
  }
  // API server allows a zero limit (the request then defaults to zero too).
  if (parsed['limits.cpu'] !== undefined && parsed['limits.cpu'] <= 0) add('InvalidVmSize', `${at}.resources.limits.cpu: ${String(c.resources?.limits?.cpu)} leaves the VM no CPU; a VM needs at least 1 (any value up to 1000m gives 1 vCPU)`);
  if (parsed['limits.memory'] !== undefined && parsed['limits.memory'] <= 0) add('InvalidVmSize', `${at}.resources.limits.memory: ${String(c.resources?.limits?.memory)} leaves the VM no memory; give it e.g. 1Gi`);
  // API server rejects a request above its limit.
  for (const res of ['cpu', 'memory'] as const) {
    const limit = parsed[`limits.${res}`];
    const request = parsed[`requests.${res}`];
    if (limit !== undefined && request !== undefined && limit > 0 && request > limit) {
      add('InvalidVmSize', `${at}.resources.requests.${res}: ${String(c.resources?.requests?.[res])} is above the limit ${String(c.resources?.limits?.[res])}; a request may not exceed its limit`);
    }
  }
}

/**
 * What vmlet accepts but does not apply, one Warning Event message each (reason `UnsupportedPodSpecField`),
 * for the runtime to post once when it takes the pod. The line between refusing and warning: a field that
 * asks for more of the host than a VM can give (privileged, host namespaces, hostPort, hostPath outside the
 * prefixes) is refused by checkPod, because the pod would not work as its author expects; a field that asks
 * for less privilege (the restricted Pod Security settings) is accepted, because the VM boundary already
 * keeps the pod from the host and refusing would turn away every pod written for restricted namespaces —
 * but the author is told that inside the VM it is not applied.
 */
export function podWarnings(pod: V1Pod): string[] {
  const out: string[] = [];
  const spec = pod.spec;
  if (!spec) return out;
  const notApplied = (at: string, fields: string[], what: string) => {
    if (fields.length) out.push(`${fields.map((f) => `${at}.${f}`).join(', ')}: not applied in the VM: ${what}`);
  };
  const identity = 'the main process runs as root inside the VM (the VM, not a user ID, keeps it from the host); run the command as another user yourself (e.g. su -s /bin/sh app -c ...) if the image needs it';
  const podSc = spec.securityContext ?? {};
  notApplied('spec.securityContext', (['runAsUser', 'runAsGroup', 'runAsNonRoot', 'fsGroup', 'supplementalGroups'] as const).filter((k) => podSc[k] != null), identity);
  notApplied('spec.securityContext', (['seLinuxOptions', 'seccompProfile', 'appArmorProfile', 'sysctls'] as const).filter((k) => podSc[k] != null), 'the guest kernel is the VM image\'s own, configured by the image, not by the pod');
  const vmIndex = vmContainerIndex(pod);
  // Sidecars: what their engine cannot apply comes back from it when they are created (Warning Events then).
  [...(spec.initContainers ?? []).map((c, i) => [c, where('initContainers', i, c)] as const), ...(spec.containers ?? []).flatMap((c, i) => (i === vmIndex ? [[c, where('containers', i, c)] as const] : []))].forEach(([c, at]) => {
    const sc = c.securityContext ?? {};
    notApplied(`${at}.securityContext`, (['runAsUser', 'runAsGroup', 'runAsNonRoot'] as const).filter((k) => sc[k] != null), identity);
    const confine = (['capabilities', 'readOnlyRootFilesystem', 'allowPrivilegeEscalation', 'seLinuxOptions', 'seccompProfile', 'appArmorProfile', 'procMount'] as const).filter((k) => sc[k] != null && !(k === 'allowPrivilegeEscalation' && sc[k] === true) && !(k === 'readOnlyRootFilesystem' && sc[k] === false));
    notApplied(`${at}.securityContext`, confine, 'root in the VM has every capability and a writable disk; the VM boundary, not these settings, keeps the pod from the host');
  });
  return out;
}

/** A RuntimeClass as the API returns it: its name and the handler (the CRI runtime) it selects. */
export interface RuntimeClassRef {
  name: string;
  handler: string;
}

/**
 * The kubelet hands a pod's RuntimeClass handler to its container runtime, which refuses one it does not
 * have; vmlet is that runtime, so it checks the handler itself. `found`: the RuntimeClass named by
 * spec.runtimeClassName (undefined: it does not exist, e.g. deleted after the pod was admitted);
 * `handlers`: the handlers this node runs (e.g. ["vmlet"]). Throws UnsupportedPodSpec; a pod without a
 * runtimeClassName always passes.
 */
export function checkRuntimeClass(pod: V1Pod, found: RuntimeClassRef | undefined, handlers: readonly string[]): void {
  const name = pod.spec?.runtimeClassName;
  if (!name) return;
  const ours = handlers.length === 1 ? `handler "${handlers[0]}"` : `handlers ${handlers.map((h) => `"${h}"`).join(', ')}`;
  if (!found) {
    throw new PodSpecError('UnsupportedPodSpec', `spec.runtimeClassName: RuntimeClass "${name}" not found; create it with handler: ${handlers[0] ?? 'vmlet'}, or remove runtimeClassName`);
  }
  if (!handlers.includes(found.handler)) {
    throw new PodSpecError('UnsupportedPodSpec', `spec.runtimeClassName: RuntimeClass "${name}" selects handler "${found.handler}", which this node does not have (it runs VMs with ${ours}); use a RuntimeClass whose handler is ${handlers[0] ?? 'vmlet'}, or run the pod on a node with "${found.handler}"`);
  }
}
