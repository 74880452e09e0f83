// A pod's volumes on the host, as its VM gets them: each volume a directory under
// `<vmDir>/<uid>/volumes/<name>` (or the host's own directory for hostPath), shared with the VM over
// virtiofs and mounted by the agent at each mountPath (a subPath bind-mounted from it). ConfigMap, Secret,
// downwardAPI and projected volumes are written in the kubelet's atomic layout (pod/atomic-writer.ts), so
// that refresh() can rewrite them while the VM runs; emptyDir usage is measured for sizeLimit.
import type { V1Container, V1Pod } from '@kubernetes/client-node';
import { mkdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { ShareSpec } from '../drivers/hypervisor.ts';
import { parseQuantity } from '../kube/quantity.ts';
import { writeVolumeAtomically } from './pod/atomic-writer.ts';
import { diskUsage } from './pod/disk-usage.ts';
import type { EnvFacts, EnvLookups } from './pod/env.ts';
import { PodSpecError } from './pod/errors.ts';
import { volumeContent } from './pod/volumes.ts';

export interface PreparedVolume {
  volume: string;
  share: ShareSpec;
  mountPath: string;
  readOnly: boolean;
  /** volumeMounts[].subPath (or subPathExpr expanded): only this path of the volume, bind-mounted by the agent. */
  subPath?: string;
}

export class PodVolumes {
  constructor(private readonly o: { vmDir: string; lookups: EnvLookups }) {}

  private dir(pod: V1Pod, volume: string): string {
    return path.join(this.o.vmDir, pod.metadata!.uid!, 'volumes', volume);
  }

  /**
   * The containers' volume mounts as host directories to share: files written for configMap, secret,
   * downwardAPI and projected volumes (read-only in the guest), a fresh directory for emptyDir, the host's
   * own directory for hostPath (validate.ts allowed only configured prefixes). `env`: the container's, for
   * subPathExpr. Throws PodSpecError (FailedMount, CreateContainerConfigError) with the kubelet's words.
   */
  async prepare(pod: V1Pod, containers: V1Container[], facts: EnvFacts, env: Record<string, string>): Promise<PreparedVolume[]> {
    const shares = new Map<string, ShareSpec>();
    const out: PreparedVolume[] = [];
    for (const m of containers.flatMap((c) => c.volumeMounts ?? [])) {
      // An init container may mount what the main container mounts, at the same path: once is enough.
      if (out.some((v) => v.volume === m.name && v.mountPath === m.mountPath)) continue;
      const volume = (pod.spec?.volumes ?? []).find((v) => v.name === m.name)!;
      let share = shares.get(m.name);
      if (!share) {
        const content = await volumeContent(pod, volume, this.o.lookups, facts);
        let hostPath: string;
        let files = false;
        if (content.kind === 'hostPath') {
          hostPath = content.path;
          if (volume.hostPath?.type === 'DirectoryOrCreate') await mkdir(hostPath, { recursive: true, mode: 0o755 }).catch(() => undefined);
          if (!(await stat(hostPath).catch(() => undefined))?.isDirectory()) {
            throw new PodSpecError('FailedMount', `MountVolume.SetUp failed for volume "${m.name}": hostPath ${hostPath} is not a directory on the node`);
          }
        } else {
          hostPath = this.dir(pod, m.name);
          await mkdir(hostPath, { recursive: true });
          if (content.kind === 'files') {
            files = true;
            await writeVolumeAtomically(hostPath, content.files).catch((err: Error) => {
              throw new PodSpecError('FailedMount', `MountVolume.SetUp failed for volume "${m.name}": ${err.message}`);
            });
          }
        }
        share = { tag: `vol-${shares.size}`, hostPath, readOnly: files };
        shares.set(m.name, share);
      }
      const subPath = m.subPath || (m.subPathExpr ? expandSubPath(m.subPathExpr, env) : undefined);
      out.push({ volume: m.name, share, mountPath: m.mountPath, readOnly: Boolean(m.readOnly) || share.readOnly, ...(subPath ? { subPath } : {}) });
    }
    return out;
  }

  /**
   * Writes the pod's mounted configMap, secret, downwardAPI and projected volumes again where what they
   * hold changed; the names of those rewritten. A source that went missing keeps the old content, as on
   * any node: `failed` is told why. `still()`: false once the VM is gone (then it stops).
   */
  async refresh(pod: V1Pod, facts: EnvFacts, still: () => boolean, failed: (message: string) => void): Promise<string[]> {
    const written: string[] = [];
    const mounted = mountedVolumes(pod);
    for (const volume of pod.spec!.volumes ?? []) {
      if (!mounted.has(volume.name) || !(volume.configMap || volume.secret || volume.downwardAPI || volume.projected)) continue;
      if (!still()) break;
      try {
        const content = await volumeContent(pod, volume, this.o.lookups, facts);
        if (content.kind !== 'files' || !still()) continue;
        if (await writeVolumeAtomically(this.dir(pod, volume.name), content.files)) written.push(volume.name);
      } catch (err) {
        failed(`${(err as Error).message} (the volume keeps its previous content)`);
      }
    }
    return written;
  }

  /** The first mounted emptyDir that holds more than its sizeLimit, in the kubelet's eviction message. */
  async overLimit(pod: V1Pod): Promise<string | undefined> {
    const mounted = mountedVolumes(pod);
    for (const volume of pod.spec!.volumes ?? []) {
      const limit = volume.emptyDir?.sizeLimit;
      if (!limit || !mounted.has(volume.name)) continue;
      if ((await diskUsage(this.dir(pod, volume.name))) > parseQuantity(String(limit))) {
        return `Usage of EmptyDir volume "${volume.name}" exceeds the limit "${String(limit)}". `;
      }
    }
    return undefined;
  }
}

/** Each volume once, however many mounts it has. */
export function uniqueShares(volumes: PreparedVolume[]): ShareSpec[] {
  return [...new Set(volumes.map((v) => v.share))];
}

/** Volumes mounted by the VM container or an init container. */
function mountedVolumes(pod: V1Pod): Set<string> {
  return new Set([...(pod.spec!.initContainers ?? []), ...pod.spec!.containers.slice(0, 1)].flatMap((c) => (c.volumeMounts ?? []).map((m) => m.name)));
}

/**
 * subPathExpr: `$(VAR)` from the container's env, as the kubelet expands it (an unknown variable is
 * empty); the result must stay inside the volume.
 */
function expandSubPath(expr: string, env: Record<string, string>): string {
  const out = expr.replace(/\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (_, name: string) => env[name] ?? '');
  if (out.startsWith('/') || out.split('/').includes('..')) {
    throw new PodSpecError('CreateContainerConfigError', `subPathExpr "${expr}" expands to "${out}", which leaves the volume`);
  }
  return out;
}
