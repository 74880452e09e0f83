import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadConfig } from '../../src/config/load.ts';
import type { HypervisorProbe } from '../../src/drivers/probe.ts';
import type { HostFacts, HostSample } from '../../src/host/facts.ts';
import { labelDrift, newNode, nodeStatus, statusChanged, VM_SLOT_RESOURCE } from '../../src/kube/node/node-object.ts';

const config = loadConfig({ env: {}, flags: { nodeName: 'mac-1', nodeLabel: ['team=ios'], vmSlots: '3', kubeletPort: '10250' } });
const facts: HostFacts = {
  hostname: 'Mac-1.local', os: 'darwin', arch: 'arm64', cpus: 8, memoryBytes: 16 * 2 ** 30,
  kernelVersion: '24.1.0', osImage: 'macOS 15.1', machineID: 'm', systemUUID: 'u', bootID: 'b', ips: ['192.168.1.5', 'fd00::5'],
};
const qemu: HypervisorProbe = { usable: true, driver: 'qemu', accelerator: 'hvf', guestOSes: ['linux'], reason: 'QEMUReady', message: 'qemu-system-aarch64 9.0 with HVF' };
const noHypervisor: HypervisorProbe = { usable: false, driver: null, accelerator: null, guestOSes: [], reason: 'QEMUNotInstalled', message: 'qemu-system-aarch64 was not found on PATH' };
const healthy: HostSample = { memoryAvailableBytes: 8 * 2 ** 30, diskTotalBytes: 500 * 2 ** 30, diskAvailableBytes: 200 * 2 ** 30, pids: { running: 400, max: 4096 } };
const t0 = new Date('2026-11-25T12:00:00Z');
const t1 = new Date('2026-11-25T12:00:10Z');

function status(sample: HostSample, hypervisor = qemu, previous?: ReturnType<typeof nodeStatus>, now = t0) {
  return nodeStatus({ config, facts, sample, hypervisor, kubeletPort: 10250, previous: previous?.conditions, now });
}
const condition = (s: ReturnType<typeof nodeStatus>, type: string) => s.conditions.find((c) => c.type === type)!;

test('the registered Node carries os/arch/hostname, virtual-kubelet type, hypervisor and guest labels, and the default taint', () => {
  const node = newNode({ config, facts, hypervisor: qemu });
  assert.deepEqual(node.metadata?.labels, {
    team: 'ios', 'kubernetes.io/os': 'darwin', 'kubernetes.io/arch': 'arm64', 'kubernetes.io/hostname': 'mac-1',
    type: 'virtual-kubelet', 'vmlet.dev/hypervisor': 'qemu', 'guest.vmlet.dev/linux': 'true',
  });
  assert.deepEqual(node.spec?.taints, [{ key: 'virtual-kubelet.io/provider', value: 'vmlet', effect: 'NoSchedule' }]);
});

test('capacity and allocatable report CPUs, memory, the cache volume, pods and VM slots', () => {
  const s = status(healthy);
  assert.deepEqual(s.capacity, { cpu: '8', memory: '16Gi', 'ephemeral-storage': '500Gi', pods: '110', [VM_SLOT_RESOURCE]: '3' });
  assert.equal(s.allocatable[VM_SLOT_RESOURCE], '3');
  assert.deepEqual(s.addresses, [{ type: 'InternalIP', address: '192.168.1.5' }, { type: 'Hostname', address: 'mac-1' }]);
  assert.deepEqual(s.daemonEndpoints, { kubeletEndpoint: { Port: 10250 } });
  assert.match(s.nodeInfo.kubeletVersion!, /^v1\.\d+\.\d+-vmlet-\d+\.\d+\.\d+/);
  assert.match(s.nodeInfo.containerRuntimeVersion!, /^vmlet:\/\//);
});

test('a healthy host is Ready with no pressure, and the hypervisor condition explains the driver', () => {
  const s = status(healthy);
  assert.equal(condition(s, 'Ready').status, 'True');
  for (const type of ['MemoryPressure', 'DiskPressure', 'PIDPressure']) assert.equal(condition(s, type).status, 'False', type);
  assert.deepEqual([condition(s, 'HypervisorReady').status, condition(s, 'HypervisorReady').reason], ['True', 'QEMUReady']);
});

test('without a usable hypervisor the node is not Ready and offers no VM slots', () => {
  const s = status(healthy, noHypervisor);
  assert.deepEqual([condition(s, 'Ready').status, condition(s, 'Ready').reason], ['False', 'HypervisorNotReady']);
  assert.match(condition(s, 'Ready').message, /not found on PATH/);
  assert.equal(s.allocatable[VM_SLOT_RESOURCE], '0');
  assert.equal(s.capacity[VM_SLOT_RESOURCE], '3');
});

test('pressure conditions turn on below their thresholds', () => {
  const s = status({ memoryAvailableBytes: 50 * 2 ** 20, diskTotalBytes: 100, diskAvailableBytes: 5, pids: { running: 4000, max: 4096 } });
  assert.equal(condition(s, 'MemoryPressure').status, 'True');
  assert.equal(condition(s, 'DiskPressure').status, 'True');
  assert.equal(condition(s, 'PIDPressure').status, 'True');
  const unknown = status({ ...healthy, pids: undefined });
  assert.equal(condition(unknown, 'PIDPressure').status, 'Unknown');
});

test('lastTransitionTime moves only when a condition flips; heartbeats alone are no change', () => {
  const first = status(healthy, qemu, undefined, t0);
  const same = status({ ...healthy, memoryAvailableBytes: 7 * 2 ** 30 }, qemu, first, t1);
  assert.equal(statusChanged(first, same), false, 'a new heartbeat and a new memory reading are not a change');
  assert.equal(condition(same, 'Ready').lastTransitionTime, t0.toISOString());
  assert.equal(condition(same, 'Ready').lastHeartbeatTime, t1.toISOString());
  const flipped = status(healthy, noHypervisor, first, t1);
  assert.equal(statusChanged(first, flipped), true);
  assert.equal(condition(flipped, 'Ready').lastTransitionTime, t1.toISOString());
  assert.equal(condition(flipped, 'MemoryPressure').lastTransitionTime, t0.toISOString());
});

test('label drift lists only the labels vmlet owns that differ', () => {
  const node = newNode({ config, facts, hypervisor: qemu });
  assert.equal(labelDrift(node, { config, facts, hypervisor: qemu }), null);
  node.metadata!.labels = { ...node.metadata!.labels, type: 'other', extra: 'kept' };
  assert.deepEqual(labelDrift(node, { config, facts, hypervisor: qemu }), { type: 'virtual-kubelet' });
});

test('no taints are set when the configuration has none', () => {
  const bare = loadConfig({ env: {}, flags: { nodeName: 'mac-2', registerWithTaint: ['none'] } });
  assert.deepEqual(newNode({ config: bare, facts, hypervisor: qemu }).spec, {});
});
