// What each of a pod's volumes holds, before it is shared with the VM: the files of configMap, secret,
// downwardAPI and projected volumes (with items, paths and modes, as the kubelet writes them), an empty
// directory for emptyDir, or the host directory of a hostPath. Pure but for the ConfigMap/Secret
// lookups; the runtime writes the files into the pod's volume directory and shares it over virtiofs.
import type { V1ConfigMapProjection, V1DownwardAPIVolumeFile, V1KeyToPath, V1Pod, V1ServiceAccountTokenProjection, V1Volume } from '@kubernetes/client-node';
import { fieldValue, type EnvFacts, type EnvLookups } from './env.ts';
import { PodSpecError } from './errors.ts';

export interface VolumeFile {
  /** Relative to the volume's root. */
  path: string;
  data: string;
  mode: number;
}

export type VolumeContent =
  | { kind: 'files'; files: VolumeFile[] }
  | { kind: 'emptyDir' }
  | { kind: 'hostPath'; path: string };

const DEFAULT_MODE = 0o644;

export async function volumeContent(pod: V1Pod, volume: V1Volume, lookups: EnvLookups, facts: EnvFacts): Promise<VolumeContent> {
  const ns = pod.metadata?.namespace ?? 'default';
  const at = `volume "${volume.name}"`;
  if (volume.hostPath) return { kind: 'hostPath', path: volume.hostPath.path };
  if (volume.configMap) {
    const cm = volume.configMap;
    return { kind: 'files', files: await keyFiles('configmap', cm.name ?? '', await lookups.configMap(ns, cm.name ?? ''), cm.items, cm.optional, cm.defaultMode, at) };
  }
  if (volume.secret) {
    const s = volume.secret;
    return { kind: 'files', files: await keyFiles('secret', s.secretName ?? '', await lookups.secret(ns, s.secretName ?? ''), s.items, s.optional, s.defaultMode ?? DEFAULT_MODE, at) };
  }
  if (volume.downwardAPI) return { kind: 'files', files: downward(pod, volume.downwardAPI.items ?? [], volume.downwardAPI.defaultMode, facts, at) };
  if (volume.projected) {
    const files: VolumeFile[] = [];
    const mode = volume.projected.defaultMode;
    for (const src of volume.projected.sources ?? []) {
      if (src.configMap) files.push(...(await projection('configmap', src.configMap, await lookups.configMap(ns, src.configMap.name ?? ''), mode, at)));
      if (src.secret) files.push(...(await projection('secret', src.secret, await lookups.secret(ns, src.secret.name ?? ''), mode, at)));
      if (src.downwardAPI) files.push(...downward(pod, src.downwardAPI.items ?? [], mode, facts, at));
      if (src.serviceAccountToken) files.push(await tokenFile(pod, src.serviceAccountToken, mode, lookups, at));
    }
    return { kind: 'files', files };
  }
  return { kind: 'emptyDir' };
}

/** A projected service account token, bound to the pod (the kubelet's TokenRequest; it rotates it at 80%). */
async function tokenFile(pod: V1Pod, src: V1ServiceAccountTokenProjection, mode: number | undefined, lookups: EnvLookups, at: string): Promise<VolumeFile> {
  const serviceAccount = pod.spec?.serviceAccountName || 'default';
  if (!lookups.serviceAccountToken) {
    throw new PodSpecError('FailedMount', `MountVolume.SetUp failed for ${at}: a serviceAccountToken needs an API server to issue it, and this node runs without one`);
  }
  try {
    const token = await lookups.serviceAccountToken({
      namespace: pod.metadata?.namespace ?? 'default', serviceAccount, ...(src.audience ? { audience: src.audience } : {}),
      expirationSeconds: src.expirationSeconds ?? 3600, podName: pod.metadata?.name ?? '', podUid: pod.metadata?.uid ?? '',
    });
    return { path: src.path, data: token, mode: mode ?? DEFAULT_MODE };
  } catch (err) {
    throw new PodSpecError('FailedMount', `MountVolume.SetUp failed for ${at}: failed to fetch token: ${(err as Error).message}`);
  }
}

function projection(kind: 'configmap' | 'secret', p: V1ConfigMapProjection, data: Record<string, string> | undefined, mode: number | undefined, at: string): Promise<VolumeFile[]> {
  return keyFiles(kind, p.name ?? '', data, p.items, p.optional, mode, at);
}

async function keyFiles(kind: 'configmap' | 'secret', name: string, data: Record<string, string> | undefined, items: V1KeyToPath[] | undefined, optional: boolean | undefined, defaultMode: number | undefined, at: string): Promise<VolumeFile[]> {
  await Promise.resolve();
  if (!data) {
    if (optional) return [];
    throw new PodSpecError('FailedMount', `MountVolume.SetUp failed for ${at}: ${kind} "${name}" not found`);
  }
  const mode = defaultMode ?? DEFAULT_MODE;
  if (!items?.length) return Object.entries(data).map(([key, value]) => ({ path: key, data: value, mode }));
  return items.flatMap((item) => {
    const value = data[item.key];
    if (value === undefined) {
      if (optional) return [];
      throw new PodSpecError('FailedMount', `MountVolume.SetUp failed for ${at}: configuration references non-existent ${kind} key: ${item.key}`);
    }
    return [{ path: item.path, data: value, mode: item.mode ?? mode }];
  });
}

function downward(pod: V1Pod, items: V1DownwardAPIVolumeFile[], defaultMode: number | undefined, facts: EnvFacts, at: string): VolumeFile[] {
  return items.map((item) => {
    if (!item.fieldRef) throw new PodSpecError('FailedMount', `MountVolume.SetUp failed for ${at}: ${item.path}: only fieldRef items are supported in downwardAPI volumes so far`);
    const path = item.fieldRef.fieldPath;
    // Whole label and annotation maps are files of key="value" lines, as the kubelet writes them.
    const map = path === 'metadata.labels' ? pod.metadata?.labels : path === 'metadata.annotations' ? pod.metadata?.annotations : undefined;
    const data = map ? Object.keys(map).sort().map((k) => `${k}=${JSON.stringify(map[k])}`).join('\n') : fieldValue(pod, path, facts);
    return { path: item.path, data, mode: item.mode ?? defaultMode ?? DEFAULT_MODE };
  });
}
