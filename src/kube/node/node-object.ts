// The Node object vmlet registers, and its status, computed from configuration and host readings.
// Pure functions: no I/O, no clock reads (the caller passes `now`), so every field is unit-tested.
import type { V1Node } from '@kubernetes/client-node';
import type { Config } from '../../config/schema.ts';
import type { HypervisorProbe } from '../../drivers/probe.ts';
import type { HostFacts, HostSample } from '../../host/facts.ts';
import { KUBELET_VERSION, RUNTIME_VERSION } from '../../version.ts';
import { formatBytes, formatCpu } from '../quantity.ts';

/** The extended resource that counts VM slots; pods ask for one with `resources.limits["vmlet.dev/vm"]: 1`. */
export const VM_SLOT_RESOURCE = 'vmlet.dev/vm';
export const LABEL_HYPERVISOR = 'vmlet.dev/hypervisor';
export const LABEL_GUEST_OS_PREFIX = 'guest.vmlet.dev/';
/** The condition that says whether VMs can be started at all. */
export const HYPERVISOR_CONDITION = 'HypervisorReady';

export interface NodeInputs {
  config: Config;
  facts: HostFacts;
  hypervisor: HypervisorProbe;
}

/** Guest OSes the node offers: configured, else what the hypervisor can boot. */
export function offeredGuestOSes({ config, hypervisor }: Pick<NodeInputs, 'config' | 'hypervisor'>): readonly string[] {
  return config.node.guestOSes ?? hypervisor.guestOSes;
}

/** Labels vmlet owns on its Node; they are set at registration and put back if someone changes them. */
export function nodeLabels(inputs: NodeInputs): Record<string, string> {
  const { config, facts, hypervisor } = inputs;
  const labels: Record<string, string> = {
    ...config.node.labels,
    'kubernetes.io/os': facts.os,
    'kubernetes.io/arch': facts.arch,
    'kubernetes.io/hostname': config.nodeName,
    type: 'virtual-kubelet',
    [LABEL_HYPERVISOR]: hypervisor.driver ?? 'none',
  };
  for (const guest of offeredGuestOSes(inputs)) labels[`${LABEL_GUEST_OS_PREFIX}${guest}`] = 'true';
  return labels;
}

/** The Node as first created: metadata and spec (taints only apply at registration, as with the kubelet). */
export function newNode(inputs: NodeInputs): V1Node {
  const taints = inputs.config.node.taints;
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: { name: inputs.config.nodeName, labels: nodeLabels(inputs) },
    spec: taints.length ? { taints: taints.map((t) => ({ key: t.key, effect: t.effect, ...(t.value ? { value: t.value } : {}) })) } : {},
  };
}

/** Labels to patch onto an existing Node so that vmlet's own labels hold; null when nothing differs. */
export function labelDrift(existing: V1Node, inputs: NodeInputs): Record<string, string> | null {
  const want = nodeLabels(inputs);
  const have = existing.metadata?.labels ?? {};
  const drift = Object.fromEntries(Object.entries(want).filter(([k, v]) => have[k] !== v));
  return Object.keys(drift).length ? drift : null;
}

export interface StatusInputs extends NodeInputs {
  sample: HostSample;
  kubeletPort: number;
  /** The conditions last posted, so that lastTransitionTime only moves when a status flips. */
  previous?: NodeCondition[];
  now: Date;
}

/** The full Node status vmlet reports. */
export function nodeStatus(inputs: StatusInputs): NodeStatus {
  const { config, facts, sample, hypervisor } = inputs;
  const slots = hypervisor.usable ? config.node.vmSlots : 0;
  const capacity: Record<string, string> = {
    cpu: formatCpu(facts.cpus),
    memory: formatBytes(facts.memoryBytes),
    'ephemeral-storage': formatBytes(sample.diskTotalBytes),
    pods: String(config.node.maxPods),
    [VM_SLOT_RESOURCE]: String(config.node.vmSlots),
  };
  const allocatable: Record<string, string> = {
    ...capacity,
    cpu: formatCpu(Math.max(0, facts.cpus - config.node.reservedCpu)),
    memory: formatBytes(Math.max(0, facts.memoryBytes - config.node.reservedMemory)),
    // No hypervisor, no VM slots: the scheduler then keeps VM pods that request a slot away.
    [VM_SLOT_RESOURCE]: String(slots),
  };
  return {
    capacity,
    allocatable,
    conditions: nodeConditions(inputs),
    addresses: nodeAddresses(config, facts),
    daemonEndpoints: { kubeletEndpoint: { Port: inputs.kubeletPort } },
    declaredFeatures: [...DECLARED_FEATURES],
    nodeInfo: {
      machineID: facts.machineID,
      systemUUID: facts.systemUUID,
      bootID: facts.bootID,
      kernelVersion: facts.kernelVersion,
      osImage: facts.osImage,
      containerRuntimeVersion: RUNTIME_VERSION,
      kubeletVersion: KUBELET_VERSION,
      kubeProxyVersion: '',
      operatingSystem: facts.os,
      architecture: facts.arch,
    },
  };
}

export function nodeAddresses(config: Config, facts: HostFacts): Array<{ type: string; address: string }> {
  const ip = config.node.ip ?? facts.ips[0] ?? '127.0.0.1';
  return [
    { type: 'InternalIP', address: ip },
    { type: 'Hostname', address: config.nodeName },
  ];
}

interface ConditionVerdict {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
}

/** A Node condition as JSON on the wire (times as RFC 3339 strings). */
export interface NodeCondition extends ConditionVerdict {
  lastHeartbeatTime: string;
  lastTransitionTime: string;
}

/** The Node status as vmlet posts it (JSON on the wire). */
export interface NodeStatus {
  capacity: Record<string, string>;
  allocatable: Record<string, string>;
  conditions: NodeCondition[];
  addresses: Array<{ type: string; address: string }>;
  daemonEndpoints: { kubeletEndpoint: { Port: number } };
  /** Node-declared features (KEP-5328): what the API server may rely on when it talks to this node. */
  declaredFeatures: string[];
  nodeInfo: Record<string, string>;
}

/**
 * ExtendWebSocketsToKubelet: the kubelet API serves exec/attach (v5.channel.k8s.io) and port-forward
 * (SPDY/3.1+portforward.k8s.io) over WebSockets, so an API server (1.36+) passes kubectl's WebSockets
 * through instead of translating them to SPDY (src/kubelet/streaming/, test/e2e/kubectl-streaming.test.ts).
 */
export const DECLARED_FEATURES = ['ExtendWebSocketsToKubelet'] as const;

function nodeConditions(inputs: StatusInputs): NodeCondition[] {
  const { config, sample, hypervisor } = inputs;
  const mem = sample.memoryAvailableBytes;
  const memLow = mem < config.pressure.memoryAvailable;
  // Messages hold no live readings: a status that changed with every sample would be posted every 10 s.
  const diskPct = sample.diskTotalBytes > 0 ? (100 * sample.diskAvailableBytes) / sample.diskTotalBytes : 100;
  const diskLow = diskPct < config.pressure.diskAvailablePercent;
  const pids = sample.pids;
  const pidPct = pids && pids.max > 0 ? (100 * (pids.max - pids.running)) / pids.max : undefined;
  const pidLow = pidPct !== undefined && pidPct < config.pressure.pidAvailablePercent;

  const verdicts: ConditionVerdict[] = [
    hypervisor.usable
      ? { type: 'Ready', status: 'True', reason: 'KubeletReady', message: `vmlet is posting ready status; ${hypervisor.message}` }
      : { type: 'Ready', status: 'False', reason: 'HypervisorNotReady', message: `no VM can start: ${hypervisor.message}` },
    memLow
      ? { type: 'MemoryPressure', status: 'True', reason: 'KubeletHasInsufficientMemory', message: `available memory is below the ${formatBytes(config.pressure.memoryAvailable)} threshold` }
      : { type: 'MemoryPressure', status: 'False', reason: 'KubeletHasSufficientMemory', message: 'vmlet has sufficient memory available' },
    diskLow
      ? { type: 'DiskPressure', status: 'True', reason: 'KubeletHasDiskPressure', message: `the image cache volume has less than ${config.pressure.diskAvailablePercent}% free` }
      : { type: 'DiskPressure', status: 'False', reason: 'KubeletHasNoDiskPressure', message: 'vmlet has no disk pressure on the image cache volume' },
    pidPct === undefined
      ? { type: 'PIDPressure', status: 'Unknown', reason: 'PIDUsageUnknown', message: 'process counts cannot be read on this host' }
      : pidLow
        ? { type: 'PIDPressure', status: 'True', reason: 'KubeletHasInsufficientPID', message: `less than ${config.pressure.pidAvailablePercent}% of PIDs are free` }
        : { type: 'PIDPressure', status: 'False', reason: 'KubeletHasSufficientPID', message: 'vmlet has sufficient PID available' },
    { type: HYPERVISOR_CONDITION, status: hypervisor.usable ? 'True' : 'False', reason: hypervisor.reason, message: hypervisor.message },
  ];
  const now = inputs.now.toISOString();
  return verdicts.map((v) => {
    const before = inputs.previous?.find((c) => c.type === v.type);
    const transitioned = !before || before.status !== v.status;
    return { ...v, lastHeartbeatTime: now, lastTransitionTime: transitioned ? now : before.lastTransitionTime };
  });
}

/**
 * Whether two statuses differ in anything but heartbeat times — the kubelet's rule for "post now" versus
 * "wait for the report interval". Resource quantities are compared as posted strings.
 */
export function statusChanged(a: NodeStatus | undefined, b: NodeStatus): boolean {
  if (!a) return true;
  return JSON.stringify(comparable(a)) !== JSON.stringify(comparable(b));
}

function comparable(status: NodeStatus): unknown {
  return {
    ...status,
    conditions: status.conditions.map((c) => ({ type: c.type, status: c.status, reason: c.reason, message: c.message })),
  };
}
