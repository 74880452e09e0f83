import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { V1Container } from '@kubernetes/client-node';
import { PodSpecError } from '../../../src/runtime/pod/errors.ts';
import { vmSize } from '../../../src/runtime/pod/sizing.ts';

const node = { defaultCpus: 2, defaultMemoryMiB: 2048, maxCpus: 8, maxMemoryMiB: 16384 };
const c = (resources: V1Container['resources']): V1Container => ({ name: 'vm', image: 'x', resources });

function refusal(container: V1Container): string {
  try {
    return JSON.stringify(vmSize(container, node));
  } catch (err) {
    assert.ok(err instanceof PodSpecError);
    return `${err.reason}: ${err.message}`;
  }
}

test('a container without resources gets the node default', () => {
  assert.deepEqual(vmSize(c(undefined), node), { cpus: 2, memoryMiB: 2048 });
});

test('limits win over requests, per resource', () => {
  assert.deepEqual(vmSize(c({ limits: { cpu: '4', memory: '8Gi' }, requests: { cpu: '1', memory: '1Gi' } }), node), { cpus: 4, memoryMiB: 8192 });
  assert.deepEqual(vmSize(c({ limits: { cpu: '3' }, requests: { cpu: '1', memory: '1Gi' } }), node), { cpus: 3, memoryMiB: 1024 });
  assert.deepEqual(vmSize(c({ requests: { cpu: '1' } }), node), { cpus: 1, memoryMiB: 2048 });
});

test('millicores round up to whole vCPUs', () => {
  assert.equal(vmSize(c({ limits: { cpu: '500m' } }), node).cpus, 1);
  assert.equal(vmSize(c({ limits: { cpu: '1500m' } }), node).cpus, 2);
  assert.equal(vmSize(c({ limits: { cpu: '1000m' } }), node).cpus, 1);
  assert.equal(vmSize(c({ limits: { cpu: '1m' } }), node).cpus, 1);
  assert.equal(vmSize(c({ limits: { cpu: '2.1' } }), node).cpus, 3);
});

test('memory rounds up to whole MiB, in binary and decimal units', () => {
  assert.equal(vmSize(c({ limits: { memory: '1G' } }), node).memoryMiB, 954); // 1e9 B = 953.67 MiB
  assert.equal(vmSize(c({ limits: { memory: '512Mi' } }), node).memoryMiB, 512);
  assert.equal(vmSize(c({ limits: { memory: '1.5Gi' } }), node).memoryMiB, 1536);
  assert.equal(vmSize(c({ limits: { memory: String(256 * 1024 * 1024 + 1) } }), node).memoryMiB, 257);
});

test('out-of-bounds sizes are InvalidVmSize naming the field path, the value, the bound and what to do', () => {
  assert.match(refusal(c({ limits: { cpu: '12' } })), /^InvalidVmSize: spec\.containers\[0\] \(vm\)\.resources\.limits\.cpu: 12 asks for 12 vCPUs; a VM on this node may have at most 8; lower it to 8 or less/);
  assert.match(refusal(c({ limits: { cpu: '1000' } })), /^InvalidVmSize: spec\.containers\[0\] \(vm\)\.resources\.limits\.cpu: 1000 asks for 1000 vCPUs/);
  assert.match(refusal(c({ requests: { cpu: '8001m' } })), /^InvalidVmSize: spec\.containers\[0\] \(vm\)\.resources\.requests\.cpu: 8001m asks for 9 vCPUs; .*at most 8/);
  assert.match(refusal(c({ limits: { cpu: '0' } })), /^InvalidVmSize: spec\.containers\[0\] \(vm\)\.resources\.limits\.cpu: 0 gives the VM no CPU; a VM needs at least 1 vCPU/);
  assert.match(refusal(c({ limits: { memory: '32Gi' } })), /^InvalidVmSize: spec\.containers\[0\] \(vm\)\.resources\.limits\.memory: 32Gi asks for 32768 MiB of memory; a VM on this node may have at most 16384 MiB; lower it to 16384Mi or less$/);
  assert.match(refusal(c({ limits: { memory: '1Ti' } })), /^InvalidVmSize: .*\.resources\.limits\.memory: 1Ti asks for 1048576 MiB of memory/);
  assert.match(refusal(c({ limits: { memory: '16Mi' } })), /^InvalidVmSize: .*resources\.limits\.memory: 16Mi gives the VM 16 MiB of memory; a VM needs at least 64 MiB \(and its image may ask for more\); give it e\.g\. 512Mi$/);
  assert.match(refusal(c({ limits: { memory: 'lots' } })), /^InvalidVmSize: spec\.containers\[0\] \(vm\)\.resources\.limits\.memory: "lots" is not a quantity/);
  assert.throws(() => vmSize(c({ limits: { cpu: '9' } }), node, 'spec.initContainers[1] (setup)'), /^PodSpecError: spec\.initContainers\[1\] \(setup\)\.resources\.limits\.cpu: 9 asks/);
});

test('the exact bounds are allowed', () => {
  assert.deepEqual(vmSize(c({ limits: { cpu: '8', memory: '16Gi' } }), node), { cpus: 8, memoryMiB: 16384 });
});

test('a node default above the node maximum is refused as well, and says it is the default', () => {
  assert.equal(refusal(c(undefined)), '{"cpus":2,"memoryMiB":2048}');
  try {
    vmSize(c(undefined), { ...node, defaultCpus: 16 });
    assert.fail('accepted');
  } catch (err) {
    assert.ok(err instanceof PodSpecError);
    assert.match(err.message, /^spec\.containers\[0\] \(vm\): the node default \(16 vCPU\) with no cpu limit or request asks for 16 vCPUs/);
  }
});
