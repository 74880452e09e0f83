// How big the VM of a pod is: its container's limits, else its requests, else the node's default, per
// resource. A VM has whole vCPUs, so millicores round up (500m → 1, 1500m → 2); memory rounds up to MiB.
import type { V1Container } from '@kubernetes/client-node';
import { parseQuantity } from '../../kube/quantity.ts';
import { PodSpecError } from './errors.ts';

export interface NodeVmSizing {
  defaultCpus: number;
  defaultMemoryMiB: number;
  maxCpus: number;
  maxMemoryMiB: number;
}

export interface VmSize {
  cpus: number;
  memoryMiB: number;
}

/** The smallest VM vmlet boots (the same floor as vmSpecFromImage). */
export const MIN_MEMORY_MIB = 64;
const MiB = 1024 * 1024;

export function vmSize(container: V1Container, node: NodeVmSizing): VmSize {
  const cpu = pick(container, 'cpu');
  const memory = pick(container, 'memory');
  const cpus = cpu ? Math.ceil(quantity(container, cpu) - 1e-9) : node.defaultCpus;
  const memoryMiB = memory ? Math.ceil(quantity(container, memory) / MiB - 1e-9) : node.defaultMemoryMiB;

  const cpuField = cpu ? `${cpu.field} ${cpu.text}` : 'the node default';
  if (cpus < 1) throw new PodSpecError('InvalidVmSize', `container "${container.name}": ${cpuField} gives the VM no CPU; a VM needs at least 1 vCPU`);
  if (cpus > node.maxCpus) throw new PodSpecError('InvalidVmSize', `container "${container.name}": ${cpuField} asks for ${cpus} vCPUs; a VM on this node may have at most ${node.maxCpus}`);
  const memField = memory ? `${memory.field} ${memory.text}` : 'the node default';
  if (memoryMiB < MIN_MEMORY_MIB) throw new PodSpecError('InvalidVmSize', `container "${container.name}": ${memField} gives the VM ${memoryMiB} MiB of memory; a VM needs at least ${MIN_MEMORY_MIB} MiB`);
  if (memoryMiB > node.maxMemoryMiB) throw new PodSpecError('InvalidVmSize', `container "${container.name}": ${memField} asks for ${memoryMiB} MiB of memory; a VM on this node may have at most ${node.maxMemoryMiB} MiB`);
  return { cpus, memoryMiB };
}

function pick(c: V1Container, res: 'cpu' | 'memory'): { field: string; text: string } | undefined {
  for (const kind of ['limits', 'requests'] as const) {
    const v = c.resources?.[kind]?.[res];
    if (v !== undefined && v !== null) return { field: `resources.${kind}.${res}`, text: String(v) };
  }
  return undefined;
}

function quantity(c: V1Container, q: { field: string; text: string }): number {
  try {
    return parseQuantity(q.text);
  } catch {
    throw new PodSpecError('InvalidVmSize', `container "${c.name}": ${q.field} "${q.text}" is not a quantity (examples: 500m, 2, 512Mi, 4Gi)`);
  }
}
