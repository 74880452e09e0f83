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

/**
 * @param at the container as a field path, for messages; default `spec.containers[0] (<name>)`, the VM
 * container (VM pods have one container, and init containers run in its VM).
 */
export function vmSize(container: V1Container, node: NodeVmSizing, at = `spec.containers[0] (${container.name})`): VmSize {
  const cpu = pick(container, 'cpu');
  const memory = pick(container, 'memory');
  const cpus = cpu ? Math.ceil(quantity(at, cpu) - 1e-9) : node.defaultCpus;
  const memoryMiB = memory ? Math.ceil(quantity(at, memory) / MiB - 1e-9) : node.defaultMemoryMiB;

  // "spec.containers[0] (vm).resources.limits.cpu: 1000", or "the node's default VM size (16 vCPUs)".
  const cpuField = cpu ? `${at}.${cpu.field}: ${cpu.text}` : `${at}: the node default (${node.defaultCpus} vCPU) with no cpu limit or request`;
  if (cpus < 1) throw new PodSpecError('InvalidVmSize', `${cpuField} gives the VM no CPU; a VM needs at least 1 vCPU (any value from 1m to 1 gives 1)`);
  if (cpus > node.maxCpus) {
    throw new PodSpecError('InvalidVmSize', `${cpuField} asks for ${cpus} vCPUs; a VM on this node may have at most ${node.maxCpus}; lower it to ${node.maxCpus} or less (vCPUs are whole: 1500m is 2)`);
  }
  const memField = memory ? `${at}.${memory.field}: ${memory.text}` : `${at}: the node default (${node.defaultMemoryMiB} MiB) with no memory limit or request`;
  if (memoryMiB < MIN_MEMORY_MIB) {
    throw new PodSpecError('InvalidVmSize', `${memField} gives the VM ${memoryMiB} MiB of memory; a VM needs at least ${MIN_MEMORY_MIB} MiB (and its image may ask for more); give it e.g. 512Mi`);
  }
  if (memoryMiB > node.maxMemoryMiB) {
    throw new PodSpecError('InvalidVmSize', `${memField} asks for ${memoryMiB} MiB of memory; a VM on this node may have at most ${node.maxMemoryMiB} MiB; lower it to ${node.maxMemoryMiB}Mi or less`);
  }
  return { cpus, memoryMiB };
}

function pick(c: V1Container, res: 'cpu' | 'memory'): { field: string; text: string } | undefined {
  for (const kind of ['limits', 'requests'] as const) {
    const v = c.resources?.[kind]?.[res];
    if (v !== undefined && v !== null) return { field: `resources.${kind}.${res}`, text: String(v) };
  }
  return undefined;
}

function quantity(at: string, q: { field: string; text: string }): number {
  try {
    return parseQuantity(q.text);
  } catch {
    throw new PodSpecError('InvalidVmSize', `${at}.${q.field}: "${q.text}" is not a quantity (examples: 500m, 2, 512Mi, 4Gi)`);
  }
}
