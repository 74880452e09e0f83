// The environment of a container, resolved as the kubelet resolves it (kubelet_pods.go
// makeEnvironmentVariables): service-link variables, then envFrom in order, then env in order, each later
// one overriding; `$(VAR)` in `value` expands against what is defined so far. Pure but for the ConfigMap
// and Secret lookups the caller passes; errors are PodSpecError('CreateContainerConfigError') worded as the
// kubelet words them, because that is what users search for.
import type { V1Container, V1Pod, V1ResourceFieldSelector, V1Service } from '@kubernetes/client-node';
import { parseQuantity } from '../../kube/quantity.ts';
import { PodSpecError } from './errors.ts';
import { serviceLinkEnv } from './service-env.ts';
import { ENV_NAME } from './validate.ts';

export interface EnvLookups {
  /** The ConfigMap's data, or undefined when it does not exist. */
  configMap(namespace: string, name: string): Promise<Record<string, string> | undefined>;
  /** The Secret's data, already decoded, or undefined when it does not exist. */
  secret(namespace: string, name: string): Promise<Record<string, string> | undefined>;
  /**
   * A service account token for a projected serviceAccountToken volume (TokenRequest, bound to the pod);
   * undefined when this node cannot ask for one (no API server).
   */
  serviceAccountToken?(req: ServiceAccountTokenRequest): Promise<string>;
  /**
   * Told about keys of an envFrom source that are not valid variable names and were skipped (the kubelet
   * skips them too, with the Warning Event `InvalidEnvironmentVariableNames`; `message` is its wording).
   */
  skippedKeys?(skipped: { kind: 'ConfigMap' | 'Secret'; name: string; keys: string[]; message: string }): void;
}

export interface ServiceAccountTokenRequest {
  namespace: string;
  serviceAccount: string;
  /** Empty: the API server's own audience. */
  audience?: string;
  expirationSeconds: number;
  podName: string;
  podUid: string;
}

export interface EnvFacts {
  nodeName: string;
  hostIP: string;
  podIP?: string;
  /** All pod IPs (status.podIPs); default: podIP. */
  podIPs?: string[];
  /** The cluster's Services, for the service-link variables (FOO_SERVICE_HOST, ...: service-env.ts). */
  services?: V1Service[];
  /**
   * The VM's size: what resourceFieldRef limits.cpu/limits.memory report for a container without limits
   * (the kubelet reports node allocatable there; a VM's whole machine is its size).
   */
  vm?: { cpus: number; memoryMiB: number };
}

export async function resolveEnv(pod: V1Pod, container: V1Container, lookups: EnvLookups, facts: EnvFacts): Promise<Record<string, string>> {
  const namespace = pod.metadata?.namespace ?? 'default';
  const env = new Map<string, string>();
  for (const [k, v] of Object.entries(serviceLinkEnv(facts.services ?? [], namespace, pod.spec?.enableServiceLinks !== false))) env.set(k, v);

  // One read per object per resolution, as the kubelet caches them for one container.
  const configMaps = new Map<string, Promise<Record<string, string> | undefined>>();
  const secrets = new Map<string, Promise<Record<string, string> | undefined>>();
  const getConfigMap = (name: string) => cached(configMaps, name, () => lookups.configMap(namespace, name));
  const getSecret = (name: string) => cached(secrets, name, () => lookups.secret(namespace, name));
  const at = containerPath(pod, container);

  for (const [i, from] of (container.envFrom ?? []).entries()) {
    const ref = from.configMapRef ?? from.secretRef;
    if (!ref) continue;
    const kind = from.configMapRef ? 'ConfigMap' : 'Secret';
    const data = await (kind === 'ConfigMap' ? getConfigMap(ref.name ?? '') : getSecret(ref.name ?? ''));
    if (!data) {
      if (ref.optional) continue;
      throw notFound(`${at}.envFrom[${i}].${kind === 'ConfigMap' ? 'configMapRef' : 'secretRef'}`, kind, ref.name ?? '', namespace);
    }
    const invalid: string[] = [];
    for (const key of Object.keys(data).sort()) {
      const name = `${from.prefix ?? ''}${key}`;
      if (!ENV_NAME.test(name)) invalid.push(name);
      else env.set(name, data[key]!);
    }
    if (invalid.length && lookups.skippedKeys) {
      const message = `Keys [${invalid.join(', ')}] from the EnvFrom ${kind === 'ConfigMap' ? 'configMap' : 'secret'} ${namespace}/${ref.name} were skipped since they are considered invalid environment variable names.`;
      lookups.skippedKeys({ kind, name: ref.name ?? '', keys: invalid, message });
    }
  }

  for (const [i, e] of (container.env ?? []).entries()) {
    const field = `${at}.env[${i}] (${e.name}).valueFrom`;
    if (e.value) {
      env.set(e.name, expand(e.value, env));
      continue;
    }
    const from = e.valueFrom;
    if (!from) {
      env.set(e.name, '');
      continue;
    }
    if (from.configMapKeyRef || from.secretKeyRef) {
      const ref = (from.configMapKeyRef ?? from.secretKeyRef)!;
      const kind = from.configMapKeyRef ? 'ConfigMap' : 'Secret';
      const refField = `${field}.${kind === 'ConfigMap' ? 'configMapKeyRef' : 'secretKeyRef'}`;
      const data = await (kind === 'ConfigMap' ? getConfigMap(ref.name ?? '') : getSecret(ref.name ?? ''));
      if (!data) {
        if (ref.optional) continue;
        throw notFound(refField, kind, ref.name ?? '', namespace);
      }
      if (!Object.hasOwn(data, ref.key)) {
        if (ref.optional) continue;
        const keys = Object.keys(data).sort();
        const has = keys.length ? `its keys: ${keys.slice(0, 10).join(', ')}${keys.length > 10 ? ', ...' : ''}` : 'it has no keys';
        throw new PodSpecError('CreateContainerConfigError', `${refField}: couldn't find key ${ref.key} in ${kind} ${namespace}/${ref.name} (${has}); add the key to the ${kind}, correct the key, or set optional: true to start without it`);
      }
      env.set(e.name, data[ref.key]!);
    } else if (from.fieldRef) {
      env.set(e.name, prefixed(`${field}.fieldRef`, () => fieldValue(pod, from.fieldRef!.fieldPath, facts)));
    } else if (from.resourceFieldRef) {
      env.set(e.name, prefixed(`${field}.resourceFieldRef`, () => resourceValue(pod, container, from.resourceFieldRef!, facts)));
    } else {
      env.set(e.name, '');
    }
  }
  return Object.fromEntries(env);
}

function cached<T>(cache: Map<string, Promise<T>>, key: string, load: () => Promise<T>): Promise<T> {
  let p = cache.get(key);
  if (!p) cache.set(key, (p = load()));
  return p;
}

function notFound(field: string, kind: 'ConfigMap' | 'Secret', name: string, namespace: string): PodSpecError {
  // The kubelet's words (`configmap "x" not found`), which users search for, with the field and what to do.
  return new PodSpecError('CreateContainerConfigError', `${field}: ${kind.toLowerCase()} "${name}" not found; create it in namespace ${namespace}, or set optional: true to start without it`);
}

/** A PodSpecError from `fn` with the field it concerns in front. */
function prefixed<T>(field: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof PodSpecError) throw new PodSpecError(err.reason, `${field}: ${err.message}`);
    throw err;
  }
}

/** `spec.containers[0] (vm)` or `spec.initContainers[1] (setup)`: where the container is in the pod. */
function containerPath(pod: V1Pod, container: V1Container): string {
  for (const list of ['containers', 'initContainers'] as const) {
    const i = (pod.spec?.[list] ?? []).findIndex((c) => c === container || c.name === container.name);
    if (i >= 0) return `spec.${list}[${i}] (${container.name})`;
  }
  return `container "${container.name}"`;
}

/**
 * `$(VAR)` expansion exactly as Kubernetes does it (third_party/forked/golang/expansion): `$$` is a literal
 * `$`, a reference to an undefined variable and an unclosed `$(` stay as written, any other `$x` too.
 */
export function expand(input: string, vars: ReadonlyMap<string, string>): string {
  let out = '';
  let checkpoint = 0;
  for (let cursor = 0; cursor < input.length; cursor++) {
    if (input[cursor] !== '$' || cursor + 1 >= input.length) continue;
    out += input.slice(checkpoint, cursor);
    const next = input[cursor + 1];
    let advance = 1;
    if (next === '$') out += '$';
    else if (next === '(') {
      const close = input.indexOf(')', cursor + 2);
      if (close < 0) out += '$(';
      else {
        const name = input.slice(cursor + 2, close);
        out += vars.has(name) ? vars.get(name)! : `$(${name})`;
        advance = close - cursor;
      }
    } else out += `$${next}`;
    cursor += advance;
    checkpoint = cursor + 1;
  }
  return out + input.slice(checkpoint);
}

const SUBSCRIPT = /^metadata\.(labels|annotations)\['(.*)'\]$/;

export function fieldValue(pod: V1Pod, fieldPath: string, facts: EnvFacts): string {
  const sub = SUBSCRIPT.exec(fieldPath);
  if (sub) return (sub[1] === 'labels' ? pod.metadata?.labels : pod.metadata?.annotations)?.[sub[2]!] ?? '';
  const podIPs = facts.podIPs ?? (facts.podIP ? [facts.podIP] : (pod.status?.podIPs ?? []).map((p) => p.ip));
  switch (fieldPath) {
    case 'metadata.name': return pod.metadata?.name ?? '';
    case 'metadata.namespace': return pod.metadata?.namespace ?? '';
    case 'metadata.uid': return pod.metadata?.uid ?? '';
    case 'spec.nodeName': return pod.spec?.nodeName ?? facts.nodeName;
    case 'spec.serviceAccountName': return pod.spec?.serviceAccountName ?? '';
    case 'status.hostIP': return facts.hostIP;
    case 'status.hostIPs': return facts.hostIP;
    case 'status.podIP': return podIPs[0] ?? '';
    case 'status.podIPs': return podIPs.join(',');
  }
  throw new PodSpecError('CreateContainerConfigError', `unsupported fieldPath: ${fieldPath}`);
}

const MiB = 1024 * 1024;

function resourceValue(pod: V1Pod, container: V1Container, ref: V1ResourceFieldSelector, facts: EnvFacts): string {
  const target = ref.containerName ? [...(pod.spec?.containers ?? []), ...(pod.spec?.initContainers ?? [])].find((c) => c.name === ref.containerName) : container;
  if (!target) throw new PodSpecError('CreateContainerConfigError', `containerName: container "${ref.containerName}" not found in the pod`);
  const [kind, res] = ref.resource.split('.', 2) as [string, string];
  if ((kind !== 'limits' && kind !== 'requests') || (res !== 'cpu' && res !== 'memory')) {
    throw new PodSpecError('CreateContainerConfigError', `unsupported container resource : ${ref.resource}`);
  }
  const divisorText = ref.divisor === undefined || ref.divisor === null || String(ref.divisor) === '0' ? '1' : String(ref.divisor);
  const limit = target.resources?.limits?.[res];
  // A request left out defaults to the limit (the API server's defaulting); the limit to the VM's size.
  const text = kind === 'requests' ? (target.resources?.requests?.[res] ?? limit ?? '0') : limit;
  let value: number;
  if (text !== undefined && text !== null) value = parseQuantity(String(text));
  else if (facts.vm) value = res === 'cpu' ? facts.vm.cpus : facts.vm.memoryMiB * MiB;
  else throw new PodSpecError('CreateContainerConfigError', `${ref.resource}: container "${target.name}" has no limit and the VM size is not known`);
  const divisor = parseQuantity(divisorText);
  if (res === 'cpu') return String(Math.ceil(milli(value) / milli(divisor)));
  return String(Math.ceil(Math.ceil(value - 1e-9) / Math.ceil(divisor - 1e-9)));
}

/** Quantity.MilliValue(): millis, rounded up. */
function milli(cores: number): number {
  return Math.ceil(cores * 1000 - 1e-6);
}
