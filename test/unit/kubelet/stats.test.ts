// The Summary API built from readings, CPU rates between readings, and /metrics/resource as Prometheus
// text — parsed back here by a small parser of the exposition format and checked name by name.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { V1Pod } from '@kubernetes/client-node';
import { goDuration } from '../../../src/kube/go-duration.ts';
import { kubeletConfiguration } from '../../../src/kubelet/endpoints/health.ts';
import { resourceMetricsText } from '../../../src/kubelet/endpoints/metrics.ts';
import { buildSummary, CpuRates, readHost, type HostReadings } from '../../../src/kubelet/endpoints/stats.ts';
import { parsePrometheus } from './prometheus-text.ts';

const T0 = new Date('2026-05-01T10:00:00.000Z');
const host = (at: Date, cpuNs: number): HostReadings => ({
  time: at,
  bootTime: new Date('2026-04-30T00:00:00Z'),
  cpuUsageCoreNanoSeconds: cpuNs,
  memory: { availableBytes: 6e9, usageBytes: 3e9, workingSetBytes: 2e9 },
  rootFs: { capacityBytes: 100e9, availableBytes: 40e9, usedBytes: 60e9, inodes: 1000, inodesFree: 600 },
  imageFs: { capacityBytes: 500e9, availableBytes: 100e9, usedBytes: 400e9 },
  pids: { running: 300, max: 4_194_304 },
});

// Pods come from the API as JSON: times are strings whatever the types say.
const pod = {
  metadata: { name: 'web', namespace: 'shop', uid: 'uid-web', creationTimestamp: '2026-05-01T09:00:00Z' },
  spec: { containers: [{ name: 'vm', image: 'x' }] },
  status: { startTime: '2026-05-01T09:00:05Z', containerStatuses: [{ name: 'vm', state: { running: { startedAt: '2026-05-01T09:00:30Z' } } }] },
} as unknown as V1Pod;
const idle = { metadata: { name: 'idle', namespace: 'shop', uid: 'uid-idle' }, spec: { containers: [{ name: 'main' }] }, status: { startTime: '2026-05-01T09:10:00Z' } } as unknown as V1Pod;

const usage = (at: Date, cpuNs: number) => ({
  timestamp: at, cpuUsageCoreNanoSeconds: cpuNs, memoryWorkingSetBytes: 300e6, memoryAvailableBytes: 700e6, memoryUsageBytes: 400e6,
  fs: { capacityBytes: 20e9, availableBytes: 15e9, usedBytes: 5e9, inodes: 100, inodesFree: 90 },
});

test('the summary has the kubelet\'s shape: node, pods with podRef, containers, cpu, memory, fs', () => {
  const rates = new CpuRates();
  const s = buildSummary({ nodeName: 'mac-1', host: host(T0, 5e12), pods: [{ pod, usage: usage(T0, 2e9) }, { pod: idle }], rates });
  assert.deepEqual(s.node, {
    nodeName: 'mac-1',
    startTime: '2026-04-30T00:00:00Z',
    cpu: { time: '2026-05-01T10:00:00Z', usageCoreNanoSeconds: 5e12 },
    memory: { time: '2026-05-01T10:00:00Z', availableBytes: 6e9, usageBytes: 3e9, workingSetBytes: 2e9 },
    fs: { time: '2026-05-01T10:00:00Z', availableBytes: 40e9, capacityBytes: 100e9, usedBytes: 60e9, inodes: 1000, inodesFree: 600, inodesUsed: 400 },
    runtime: { imageFs: { time: '2026-05-01T10:00:00Z', availableBytes: 100e9, capacityBytes: 500e9, usedBytes: 400e9 } },
    rlimit: { time: '2026-05-01T10:00:00Z', maxpid: 4_194_304, curproc: 300 },
  });
  const [web, quiet] = s.pods;
  const cpu = { time: '2026-05-01T10:00:00Z', usageCoreNanoSeconds: 2e9 };
  const memory = { time: '2026-05-01T10:00:00Z', availableBytes: 700e6, usageBytes: 400e6, workingSetBytes: 300e6 };
  const fs = { time: '2026-05-01T10:00:00Z', availableBytes: 15e9, capacityBytes: 20e9, usedBytes: 5e9, inodes: 100, inodesFree: 90, inodesUsed: 10 };
  assert.deepEqual(web, {
    podRef: { name: 'web', namespace: 'shop', uid: 'uid-web' },
    startTime: '2026-05-01T09:00:05Z',
    containers: [{ name: 'vm', startTime: '2026-05-01T09:00:30Z', cpu, memory, rootfs: fs }],
    cpu, memory, 'ephemeral-storage': fs,
  });
  assert.deepEqual(quiet, { podRef: { name: 'idle', namespace: 'shop', uid: 'uid-idle' }, startTime: '2026-05-01T09:10:00Z', containers: [{ name: 'main', startTime: '2026-05-01T09:10:00Z' }] });
});

test('usageNanoCores is the rate between two readings at least a second apart', () => {
  const rates = new CpuRates();
  const at = (s: number) => new Date(T0.getTime() + s * 1000);
  buildSummary({ nodeName: 'n', host: host(at(0), 1e12), pods: [{ pod, usage: usage(at(0), 1e9) }], rates });
  const s = buildSummary({ nodeName: 'n', host: host(at(10), 1e12 + 40e9), pods: [{ pod, usage: usage(at(10), 1e9 + 5e9) }], rates });
  assert.equal(s.node.cpu?.usageNanoCores, 4e9, '40 core-seconds in 10 s = 4 cores');
  assert.equal(s.pods[0]!.cpu?.usageNanoCores, 5e8, 'half a core');
  assert.equal(s.pods[0]!.containers[0]!.cpu?.usageNanoCores, 5e8);
  // 200 ms later: too close for a new rate; the last one stands.
  const again = buildSummary({ nodeName: 'n', host: host(new Date(at(10).getTime() + 200), 1e12 + 41e9), pods: [], rates, onlyCpuAndMemory: true });
  assert.equal(again.node.cpu?.usageNanoCores, 4e9);
  // The pod went away: its history is forgotten.
  const back = buildSummary({ nodeName: 'n', host: host(at(20), 1e12 + 80e9), pods: [{ pod, usage: usage(at(20), 9e9) }], rates });
  assert.equal(back.pods[0]!.cpu?.usageNanoCores, undefined);
});

test('only_cpu_and_memory leaves out file systems and rlimit', () => {
  const s = buildSummary({ nodeName: 'n', host: host(T0, 1), pods: [{ pod, usage: usage(T0, 1) }], rates: new CpuRates(), onlyCpuAndMemory: true });
  assert.deepEqual(Object.keys(s.node).sort(), ['cpu', 'memory', 'nodeName', 'startTime']);
  assert.deepEqual(Object.keys(s.pods[0]!).sort(), ['containers', 'cpu', 'memory', 'podRef', 'startTime']);
});

test('/metrics/resource: the kubelet\'s names, types, labels, values in seconds and bytes, timestamps', () => {
  const weird = { ...pod, metadata: { ...pod.metadata, name: 'we"ird\\pod' } } as V1Pod;
  const s = buildSummary({ nodeName: 'n', host: host(T0, 1234.5e9), pods: [{ pod, usage: usage(T0, 2.5e9) }, { pod: weird, usage: usage(T0, 1e9) }], rates: new CpuRates(), onlyCpuAndMemory: true });
  const { samples, types, help } = parsePrometheus(resourceMetricsText(s, false));
  const get = (name: string, labels: Record<string, string> = {}) => samples.filter((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  assert.deepEqual(Object.fromEntries(types), {
    container_cpu_usage_seconds_total: 'counter',
    container_memory_working_set_bytes: 'gauge',
    container_start_time_seconds: 'gauge',
    node_cpu_usage_seconds_total: 'counter',
    node_memory_working_set_bytes: 'gauge',
    pod_cpu_usage_seconds_total: 'counter',
    pod_memory_working_set_bytes: 'gauge',
    resource_scrape_error: 'gauge',
  });
  assert.equal(help.get('node_cpu_usage_seconds_total'), '[STABLE] Cumulative cpu time consumed by the node in core-seconds');
  assert.deepEqual(get('node_cpu_usage_seconds_total'), [{ name: 'node_cpu_usage_seconds_total', labels: {}, value: 1234.5, timestamp: T0.getTime() }]);
  assert.equal(get('node_memory_working_set_bytes')[0]!.value, 2e9);
  const c = get('container_cpu_usage_seconds_total', { pod: 'web' });
  assert.deepEqual(c, [{ name: 'container_cpu_usage_seconds_total', labels: { container: 'vm', namespace: 'shop', pod: 'web' }, value: 2.5, timestamp: T0.getTime() }]);
  assert.equal(get('container_memory_working_set_bytes', { pod: 'web', container: 'vm' })[0]!.value, 300e6);
  assert.deepEqual(get('container_start_time_seconds', { pod: 'web' })[0], { name: 'container_start_time_seconds', labels: { container: 'vm', namespace: 'shop', pod: 'web' }, value: Date.parse('2026-05-01T09:00:30Z') / 1000 });
  assert.deepEqual(get('pod_cpu_usage_seconds_total', { pod: 'web' })[0]!.labels, { namespace: 'shop', pod: 'web' });
  assert.equal(get('pod_memory_working_set_bytes', { pod: 'we"ird\\pod' })[0]!.value, 300e6, 'label values are escaped and read back');
  assert.deepEqual(get('resource_scrape_error'), [{ name: 'resource_scrape_error', labels: {}, value: 0 }]);
});

test('a failed scrape still parses and says so', () => {
  const { samples } = parsePrometheus(resourceMetricsText(undefined, true));
  assert.deepEqual(samples, [{ name: 'resource_scrape_error', labels: {}, value: 1 }]);
});

test('the host is readable here: CPU grows, memory and file systems are plausible', async () => {
  const a = await readHost('/tmp');
  await new Promise((r) => setTimeout(r, 50));
  const b = await readHost('/tmp');
  assert.ok(a.cpuUsageCoreNanoSeconds > 0 && b.cpuUsageCoreNanoSeconds >= a.cpuUsageCoreNanoSeconds);
  assert.ok(a.memory.workingSetBytes > 0 && a.memory.workingSetBytes <= a.memory.usageBytes);
  assert.ok(a.rootFs && a.rootFs.capacityBytes > a.rootFs.availableBytes);
  assert.ok(a.bootTime.getTime() < Date.now());
});

test('configz: the kubelet\'s field names and Go durations', () => {
  assert.deepEqual(['2m0s', '5m0s', '30s', '1h0m0s', '250ms', '1.5s'], [120_000, 300_000, 30_000, 3_600_000, 250, 1500].map(goDuration));
  const c = kubeletConfiguration({
    nodeName: 'mac-1', address: '0.0.0.0', port: 10250, tlsCertFile: '/p/kubelet.crt', tlsPrivateKeyFile: '/p/kubelet.key', clientCAFile: '/ca.crt',
    anonymous: false, authorizationMode: 'Webhook', tokenCacheTtlMs: 120_000, authorizedCacheTtlMs: 300_000, unauthorizedCacheTtlMs: 30_000, maxPods: 110,
  });
  assert.deepEqual(c.authentication, { x509: { clientCAFile: '/ca.crt' }, webhook: { enabled: true, cacheTTL: '2m0s' }, anonymous: { enabled: false } });
  assert.deepEqual(c.authorization, { mode: 'Webhook', webhook: { cacheAuthorizedTTL: '5m0s', cacheUnauthorizedTTL: '30s' } });
  assert.equal(c.kind, 'KubeletConfiguration');
  assert.equal(c.apiVersion, 'kubelet.config.k8s.io/v1beta1');
});
