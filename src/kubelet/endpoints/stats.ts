// /stats/summary: the kubelet's Summary API (k8s.io/kubelet/pkg/apis/stats/v1alpha1) from host readings
// and each running pod's VM usage. A pod is one VM and its one container is the VM, so the container's
// and the pod's CPU and memory are the same numbers. Building the summary is pure (readings in, JSON out);
// reading the host is the small I/O part at the end.
import type { V1Pod } from '@kubernetes/client-node';
import { readFile, statfs } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { sampleHost } from '../../host/facts.ts';
import type { PodUsage } from '../provider.ts';

// ----- the Summary API's shape (the fields vmlet fills) -----

export interface CPUStats {
  time: string;
  usageNanoCores?: number;
  usageCoreNanoSeconds?: number;
}

export interface MemoryStats {
  time: string;
  availableBytes?: number;
  usageBytes?: number;
  workingSetBytes?: number;
}

export interface FsStats {
  time: string;
  availableBytes?: number;
  capacityBytes?: number;
  usedBytes?: number;
  inodesFree?: number;
  inodes?: number;
  inodesUsed?: number;
}

export interface ContainerStats {
  name: string;
  startTime: string;
  cpu?: CPUStats;
  memory?: MemoryStats;
  rootfs?: FsStats;
}

export interface PodStats {
  podRef: { name: string; namespace: string; uid: string };
  startTime: string;
  containers: ContainerStats[];
  cpu?: CPUStats;
  memory?: MemoryStats;
  'ephemeral-storage'?: FsStats;
}

export interface NodeStats {
  nodeName: string;
  startTime: string;
  cpu?: CPUStats;
  memory?: MemoryStats;
  fs?: FsStats;
  runtime?: { imageFs?: FsStats; containerFs?: FsStats };
  rlimit?: { time: string; maxpid?: number; curproc?: number };
}

export interface Summary {
  node: NodeStats;
  pods: PodStats[];
}

// ----- readings in -----

export interface FsReading {
  capacityBytes: number;
  availableBytes: number;
  usedBytes: number;
  inodes?: number;
  inodesFree?: number;
}

export interface HostReadings {
  time: Date;
  bootTime: Date;
  /** Cumulative CPU time of all cores, nanoseconds. */
  cpuUsageCoreNanoSeconds: number;
  memory: { availableBytes: number; usageBytes: number; workingSetBytes: number };
  rootFs?: FsReading;
  /** The volume of the image cache (and the VMs' disks): the runtime's image file system. */
  imageFs?: FsReading;
  pids?: { running: number; max: number };
}

export interface PodReading {
  pod: V1Pod;
  usage?: PodUsage;
}

/**
 * Turns cumulative CPU time into a rate (nanocores) between two readings of the same thing, as cAdvisor
 * does between its samples. A reading less than a second after the last one reuses the last rate.
 */
export class CpuRates {
  private readonly last = new Map<string, { at: number; ns: number; rate?: number }>();

  rate(id: string, at: Date, ns: number): number | undefined {
    const t = at.getTime();
    const prev = this.last.get(id);
    if (prev && t - prev.at < 1000 && t >= prev.at && ns >= prev.ns) return prev.rate;
    const rate = prev && t > prev.at && ns >= prev.ns ? Math.round(((ns - prev.ns) / (t - prev.at)) * 1000) : undefined;
    this.last.set(id, { at: t, ns, ...(rate !== undefined ? { rate } : {}) });
    return rate;
  }

  /** Forgets everything but `ids` (pods that are gone). */
  retain(ids: ReadonlySet<string>): void {
    for (const id of this.last.keys()) if (!ids.has(id)) this.last.delete(id);
  }
}

export const NODE_RATE_ID = '/';

export interface SummaryInput {
  nodeName: string;
  host: HostReadings;
  pods: readonly PodReading[];
  rates: CpuRates;
  /** `?only_cpu_and_memory=true`: the node's and pods' CPU and memory only (what metrics-server reads). */
  onlyCpuAndMemory?: boolean;
}

export function buildSummary(input: SummaryInput): Summary {
  const { host, rates } = input;
  const time = rfc3339(host.time);
  const node: NodeStats = {
    nodeName: input.nodeName,
    startTime: rfc3339(host.bootTime),
    cpu: cpuStats(time, host.cpuUsageCoreNanoSeconds, rates.rate(NODE_RATE_ID, host.time, host.cpuUsageCoreNanoSeconds)),
    memory: { time, ...host.memory },
  };
  if (!input.onlyCpuAndMemory) {
    if (host.rootFs) node.fs = fsStats(time, host.rootFs);
    if (host.imageFs) node.runtime = { imageFs: fsStats(time, host.imageFs) };
    if (host.pids) node.rlimit = { time, maxpid: host.pids.max, curproc: host.pids.running };
  }
  const seen = new Set<string>([NODE_RATE_ID]);
  const pods = input.pods.map((p) => {
    const uid = p.pod.metadata?.uid ?? '';
    seen.add(uid);
    return podStats(p, rates, input.onlyCpuAndMemory ?? false);
  });
  rates.retain(seen);
  return { node, pods };
}

function podStats({ pod, usage }: PodReading, rates: CpuRates, onlyCpuAndMemory: boolean): PodStats {
  const meta = pod.metadata ?? {};
  const podStart = toDate(pod.status?.startTime) ?? toDate(meta.creationTimestamp);
  const stats: PodStats = {
    podRef: { name: meta.name ?? '', namespace: meta.namespace ?? '', uid: meta.uid ?? '' },
    startTime: podStart ? rfc3339(podStart) : '',
    containers: [],
  };
  let cpu: CPUStats | undefined;
  let memory: MemoryStats | undefined;
  let fs: FsStats | undefined;
  if (usage) {
    const t = rfc3339(usage.timestamp);
    cpu = cpuStats(t, usage.cpuUsageCoreNanoSeconds, rates.rate(meta.uid ?? '', usage.timestamp, usage.cpuUsageCoreNanoSeconds));
    memory = { time: t, availableBytes: usage.memoryAvailableBytes, usageBytes: usage.memoryUsageBytes, workingSetBytes: usage.memoryWorkingSetBytes };
    if (usage.fs && !onlyCpuAndMemory) fs = fsStats(t, usage.fs);
  }
  // The VM is the pod's one container: it carries the VM's numbers.
  const container = pod.spec?.containers?.[0];
  if (container) {
    const status = pod.status?.containerStatuses?.find((s) => s.name === container.name);
    const started = toDate(status?.state?.running?.startedAt) ?? podStart;
    const c: ContainerStats = { name: container.name, startTime: started ? rfc3339(started) : '' };
    if (cpu) c.cpu = cpu;
    if (memory) c.memory = memory;
    if (fs) c.rootfs = fs;
    stats.containers.push(c);
  }
  if (cpu) stats.cpu = cpu;
  if (memory) stats.memory = memory;
  if (fs) stats['ephemeral-storage'] = fs;
  return stats;
}

function cpuStats(time: string, ns: number, rate: number | undefined): CPUStats {
  return { time, ...(rate !== undefined ? { usageNanoCores: rate } : {}), usageCoreNanoSeconds: Math.round(ns) };
}

function fsStats(time: string, r: FsReading): FsStats {
  const s: FsStats = { time, availableBytes: r.availableBytes, capacityBytes: r.capacityBytes, usedBytes: r.usedBytes };
  if (r.inodes !== undefined) s.inodes = r.inodes;
  if (r.inodesFree !== undefined) s.inodesFree = r.inodesFree;
  if (r.inodes !== undefined && r.inodesFree !== undefined) s.inodesUsed = r.inodes - r.inodesFree;
  return s;
}

/** metav1.Time on the wire: RFC 3339 in UTC, whole seconds. */
export function rfc3339(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** Pods read from the API are JSON (times as strings) even where the types say Date. */
export function toDate(v: unknown): Date | undefined {
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? undefined : v;
  if (typeof v === 'string' && v) {
    const d = new Date(v);
    return Number.isNaN(d.getTime()) ? undefined : d;
  }
  return undefined;
}

// ----- reading the host -----

/** CPU, memory, root and image-cache file systems and PIDs of the host, now. */
export async function readHost(imageCacheDir: string): Promise<HostReadings> {
  const time = new Date();
  const [sample, memory, rootFs, imageFs] = await Promise.all([
    sampleHost(imageCacheDir).catch(() => undefined),
    hostMemory(),
    fsOf('/'),
    fsOf(imageCacheDir),
  ]);
  // os.cpus() times are milliseconds per core since boot; busy = everything but idle.
  const cpuMs = os.cpus().reduce((sum, c) => sum + c.times.user + c.times.nice + c.times.sys + c.times.irq, 0);
  return {
    time,
    bootTime: new Date(Math.floor((time.getTime() - os.uptime() * 1000) / 1000) * 1000),
    cpuUsageCoreNanoSeconds: cpuMs * 1e6,
    memory,
    ...(rootFs ? { rootFs } : {}),
    ...(imageFs ? { imageFs } : {}),
    ...(sample?.pids ? { pids: sample.pids } : {}),
  };
}

/**
 * The node's memory as cAdvisor reports the root cgroup: usage = total - free, working set = usage minus
 * inactive file pages (reclaimable), available = total - working set.
 */
async function hostMemory(): Promise<HostReadings['memory']> {
  const total = os.totalmem();
  const meminfo = process.platform === 'linux' ? await readFile('/proc/meminfo', 'utf8').catch(() => '') : '';
  const kb = (name: string) => {
    const m = new RegExp(`^${name.replace(/[()]/g, '\\$&')}:\\s+(\\d+) kB`, 'm').exec(meminfo);
    return m ? Number(m[1]) * 1024 : undefined;
  };
  const free = kb('MemFree') ?? os.freemem();
  const usage = Math.max(0, total - free);
  const inactiveFile = kb('Inactive(file)') ?? 0;
  const workingSet = Math.max(0, usage - inactiveFile);
  return { availableBytes: Math.max(0, total - workingSet), usageBytes: usage, workingSetBytes: workingSet };
}

async function fsOf(dir: string): Promise<FsReading | undefined> {
  let probe = path.resolve(dir);
  for (;;) {
    try {
      const s = await statfs(probe);
      const capacity = s.blocks * s.bsize;
      const available = s.bavail * s.bsize;
      const reading: FsReading = { capacityBytes: capacity, availableBytes: available, usedBytes: Math.max(0, capacity - s.bfree * s.bsize) };
      // Some file systems (APFS, btrfs) report no inode limit: leave inodes out rather than say 0.
      if (s.files > 0) {
        reading.inodes = s.files;
        reading.inodesFree = s.ffree;
      }
      return reading;
    } catch {
      const parent = path.dirname(probe);
      if (parent === probe) return undefined;
      probe = parent;
    }
  }
}
