// Static pod manifests (the kubelet's --pod-manifest-path): one file's text in, the pods it declares out,
// defaulted as the kubelet's file source defaults them (pkg/kubelet/config/common.go applyDefaults):
// the name suffixed with `-<nodeName>`, namespace `default`, spec.nodeName this node, a UID that is a hash
// of the pod as written plus the node and the file (so it is stable across restarts and changes with any
// edit), the annotations kubernetes.io/config.source=file and kubernetes.io/config.hash=<uid>, and the
// NoExecute toleration the kubelet adds so a node condition never evicts them. Pure: no I/O.
import { createHash } from 'node:crypto';
import type { V1Pod } from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';

export const CONFIG_SOURCE_ANNOTATION = 'kubernetes.io/config.source';
export const CONFIG_HASH_ANNOTATION = 'kubernetes.io/config.hash';
export const CONFIG_MIRROR_ANNOTATION = 'kubernetes.io/config.mirror';
export const CONFIG_SEEN_ANNOTATION = 'kubernetes.io/config.seen';

/** Files read from the manifest directory (others, and hidden files, are ignored). */
export const MANIFEST_EXTENSIONS = ['.yaml', '.yml', '.json'] as const;

/** A manifest file vmlet cannot read as pods; the message names the file and what is wrong, in one line. */
export class ManifestError extends Error {
  override name = 'ManifestError';
}

const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

export function isManifestFile(name: string): boolean {
  return !name.startsWith('.') && MANIFEST_EXTENSIONS.some((ext) => name.endsWith(ext));
}

/** A pod the API server created as the mirror of a static pod: vmlet never runs it, the file's pod runs. */
export function isMirrorPod(pod: V1Pod): boolean {
  return pod.metadata?.annotations?.[CONFIG_MIRROR_ANNOTATION] !== undefined;
}

export function isStaticPod(pod: V1Pod): boolean {
  const source = pod.metadata?.annotations?.[CONFIG_SOURCE_ANNOTATION];
  return source !== undefined && source !== 'api';
}

/**
 * The pods of one manifest file (a Pod, a PodList or List of pods, or several YAML documents of them),
 * defaulted for `nodeName`. `file` is the path used in messages and in the UID hash (as the kubelet's).
 * Throws ManifestError naming the file, the document and what is wrong.
 */
export function parseManifest(file: string, text: string, nodeName: string): V1Pod[] {
  const docs = parseAllDocuments(text);
  const list = Array.isArray(docs) ? docs : [docs];
  const pods: V1Pod[] = [];
  list.forEach((doc, i) => {
    const at = list.length > 1 ? `${file} (document ${i + 1})` : file;
    const error = doc.errors[0];
    if (error) {
      const pos = error.linePos?.[0];
      const what = error.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
      throw new ManifestError(`${at}: not valid YAML${pos ? ` at line ${pos.line}, column ${pos.col}` : ''}: ${what}`);
    }
    let value: unknown;
    try {
      value = doc.toJS();
    } catch (err) {
      throw new ManifestError(`${at}: not valid YAML: ${(err as Error).message.split('\n')[0]}`);
    }
    if (value === null || value === undefined) return; // an empty document ("---" at the end)
    if (typeof value !== 'object' || Array.isArray(value)) throw new ManifestError(`${at}: expected a Pod object (a mapping with kind: Pod), got ${Array.isArray(value) ? 'a list' : typeof value}`);
    const obj = value as Record<string, unknown>;
    if (obj.kind === 'PodList' || obj.kind === 'List') {
      if (!Array.isArray(obj.items)) throw new ManifestError(`${at}: ${String(obj.kind)} has no items list`);
      obj.items.forEach((item, j) => pods.push(checkedPod(item, `${at} items[${j}]`)));
      return;
    }
    pods.push(checkedPod(obj, at));
  });
  const seen = new Set<string>();
  return pods.map((raw) => {
    const pod = withDefaults(raw, file, nodeName);
    const key = `${pod.metadata!.namespace}/${pod.metadata!.name}`;
    if (seen.has(key)) throw new ManifestError(`${file}: pod ${key} is declared twice`);
    seen.add(key);
    return pod;
  });
}

function checkedPod(value: unknown, at: string): V1Pod {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ManifestError(`${at}: expected a Pod object`);
  const obj = value as Record<string, unknown>;
  if (obj.kind !== 'Pod') throw new ManifestError(`${at}: kind must be Pod (got ${obj.kind === undefined ? 'no kind' : JSON.stringify(obj.kind)})`);
  if (obj.apiVersion !== 'v1') throw new ManifestError(`${at}: apiVersion must be v1 (got ${obj.apiVersion === undefined ? 'none' : JSON.stringify(obj.apiVersion)})`);
  const meta = obj.metadata as Record<string, unknown> | undefined;
  if (typeof meta !== 'object' || meta === null) throw new ManifestError(`${at}: metadata.name is required`);
  const name = meta.name;
  if (typeof name !== 'string' || !name) throw new ManifestError(`${at}: metadata.name is required`);
  if (!DNS_SUBDOMAIN.test(name)) throw new ManifestError(`${at}: metadata.name "${name}" must be a lowercase DNS name (a-z, 0-9, "-", ".")`);
  const ns = meta.namespace;
  if (ns !== undefined && (typeof ns !== 'string' || !DNS_LABEL.test(ns))) throw new ManifestError(`${at}: metadata.namespace ${JSON.stringify(ns)} must be a lowercase DNS label`);
  const spec = obj.spec as Record<string, unknown> | undefined;
  if (typeof spec !== 'object' || spec === null) throw new ManifestError(`${at}: spec is required`);
  if (!Array.isArray(spec.containers) || spec.containers.length === 0) throw new ManifestError(`${at}: spec.containers must list at least one container`);
  spec.containers.forEach((c: unknown, i) => {
    const container = c as Record<string, unknown> | null;
    if (typeof container !== 'object' || container === null) throw new ManifestError(`${at}: spec.containers[${i}] must be a mapping`);
    if (typeof container.name !== 'string' || !container.name) throw new ManifestError(`${at}: spec.containers[${i}].name is required`);
    if (typeof container.image !== 'string' || !container.image) throw new ManifestError(`${at}: spec.containers[${i}] (${container.name}): image is required`);
  });
  return obj;
}

/** The UID the kubelet would give: md5 of the pod as written, then the host and the file. */
export function staticPodUid(pod: V1Pod, file: string, nodeName: string): string {
  const h = createHash('md5');
  h.update(canonicalJson(pod));
  h.update(`host:${nodeName}`);
  h.update(`file:${file}`);
  return h.digest('hex');
}

function withDefaults(raw: V1Pod, file: string, nodeName: string): V1Pod {
  const pod = structuredClone(raw);
  const meta = pod.metadata!;
  const uid = meta.uid ?? staticPodUid(raw, file, nodeName);
  meta.uid = uid;
  meta.name = `${meta.name}-${nodeName.toLowerCase()}`;
  meta.namespace ??= 'default';
  meta.annotations = { ...meta.annotations, [CONFIG_HASH_ANNOTATION]: uid, [CONFIG_SOURCE_ANNOTATION]: 'file' };
  const spec = pod.spec!;
  spec.nodeName = nodeName;
  const tolerations = spec.tolerations ?? [];
  if (!tolerations.some((t) => t.operator === 'Exists' && t.effect === 'NoExecute' && !t.key)) spec.tolerations = [...tolerations, { operator: 'Exists', effect: 'NoExecute' }];
  pod.status = { phase: 'Pending' };
  return pod;
}

/**
 * What a static pod may not reference (the kubelet refuses these: a static pod exists without the API
 * server, and its mirror may not reach Secrets, ConfigMaps or ServiceAccounts through the node — the
 * NodeRestriction admission plugin): one line per reference, with its field. Empty: the pod may run.
 */
export function forbiddenReferences(pod: V1Pod): string[] {
  const out: string[] = [];
  const spec = pod.spec;
  if (!spec) return out;
  const sa = spec.serviceAccountName ?? spec.serviceAccount;
  if (sa) out.push(`spec.serviceAccountName "${sa}" (a ServiceAccount)`);
  (spec.imagePullSecrets ?? []).forEach((s, i) => out.push(`spec.imagePullSecrets[${i}] "${s.name}" (a Secret)`));
  (spec.volumes ?? []).forEach((v, i) => {
    const at = `spec.volumes[${i}] (${v.name})`;
    if (v.configMap) out.push(`${at}.configMap "${v.configMap.name}" (a ConfigMap)`);
    if (v.secret) out.push(`${at}.secret "${v.secret.secretName}" (a Secret)`);
    if (v.persistentVolumeClaim) out.push(`${at}.persistentVolumeClaim "${v.persistentVolumeClaim.claimName}" (a PersistentVolumeClaim)`);
    (v.projected?.sources ?? []).forEach((s, j) => {
      if (s.configMap) out.push(`${at}.projected.sources[${j}].configMap "${s.configMap.name}" (a ConfigMap)`);
      if (s.secret) out.push(`${at}.projected.sources[${j}].secret "${s.secret.name}" (a Secret)`);
      if (s.serviceAccountToken) out.push(`${at}.projected.sources[${j}].serviceAccountToken (a ServiceAccount)`);
      if (s.clusterTrustBundle) out.push(`${at}.projected.sources[${j}].clusterTrustBundle (a ClusterTrustBundle)`);
    });
  });
  const containers = [
    ...(spec.initContainers ?? []).map((c, i) => ({ c, at: `spec.initContainers[${i}] (${c.name})` })),
    ...spec.containers.map((c, i) => ({ c, at: `spec.containers[${i}] (${c.name})` })),
  ];
  for (const { c, at } of containers) {
    (c.env ?? []).forEach((e, i) => {
      if (e.valueFrom?.configMapKeyRef) out.push(`${at}.env[${i}] (${e.name}) configMapKeyRef "${e.valueFrom.configMapKeyRef.name}" (a ConfigMap)`);
      if (e.valueFrom?.secretKeyRef) out.push(`${at}.env[${i}] (${e.name}) secretKeyRef "${e.valueFrom.secretKeyRef.name}" (a Secret)`);
    });
    (c.envFrom ?? []).forEach((e, i) => {
      if (e.configMapRef) out.push(`${at}.envFrom[${i}].configMapRef "${e.configMapRef.name}" (a ConfigMap)`);
      if (e.secretRef) out.push(`${at}.envFrom[${i}].secretRef "${e.secretRef.name}" (a Secret)`);
    });
  }
  if (spec.resourceClaims?.length) out.push('spec.resourceClaims (ResourceClaims)');
  return out;
}

/** JSON with keys sorted at every level: the same pod always hashes the same, whatever the key order in the file. */
function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const entries = Object.entries(v).filter(([, x]) => x !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonicalJson(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}
