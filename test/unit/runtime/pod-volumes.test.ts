import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { V1Pod, V1Volume } from '@kubernetes/client-node';
import { PodSpecError } from '../../../src/runtime/pod/errors.ts';
import { volumeContent } from '../../../src/runtime/pod/volumes.ts';

const pod: V1Pod = { metadata: { name: 'web', namespace: 'ns', uid: 'u1', labels: { b: '2', a: '1' } }, spec: { containers: [] } };
const lookups = {
  configMap: (_ns: string, name: string) => Promise.resolve(name === 'cfg' ? { one: '1', two: '2' } : undefined),
  secret: (_ns: string, name: string) => Promise.resolve(name === 'sec' ? { token: 't0k' } : undefined),
};
const facts = { nodeName: 'n1', hostIP: '10.0.0.1' };
const content = (v: Omit<V1Volume, 'name'>) => volumeContent(pod, { name: 'v', ...v }, lookups, facts);

test('a configMap volume holds every key as a file, or only the listed items at their paths and modes', async () => {
  assert.deepEqual(await content({ configMap: { name: 'cfg' } }), { kind: 'files', files: [{ path: 'one', data: '1', mode: 0o644 }, { path: 'two', data: '2', mode: 0o644 }] });
  assert.deepEqual(await content({ configMap: { name: 'cfg', defaultMode: 0o600, items: [{ key: 'two', path: 'sub/2.txt', mode: 0o444 }, { key: 'one', path: 'one' }] } }),
    { kind: 'files', files: [{ path: 'sub/2.txt', data: '2', mode: 0o444 }, { path: 'one', data: '1', mode: 0o600 }] });
});

test('a missing ConfigMap, Secret or key is FailedMount in the kubelet\'s words, unless optional', async () => {
  await assert.rejects(content({ configMap: { name: 'nope' } }), (e: unknown) => e instanceof PodSpecError && e.reason === 'FailedMount' && /configmap "nope" not found/.test(e.message));
  await assert.rejects(content({ secret: { secretName: 'nope' } }), /secret "nope" not found/);
  await assert.rejects(content({ configMap: { name: 'cfg', items: [{ key: 'three', path: 'x' }] } }), /non-existent configmap key: three/);
  assert.deepEqual(await content({ configMap: { name: 'nope', optional: true } }), { kind: 'files', files: [] });
});

test('downwardAPI files carry fields, and label maps as sorted key="value" lines; projected volumes merge their sources', async () => {
  const down = await content({ downwardAPI: { items: [{ path: 'name', fieldRef: { fieldPath: 'metadata.name' } }, { path: 'labels', fieldRef: { fieldPath: 'metadata.labels' } }] } });
  assert.deepEqual(down, { kind: 'files', files: [{ path: 'name', data: 'web', mode: 0o644 }, { path: 'labels', data: 'a="1"\nb="2"', mode: 0o644 }] });
  const projected = await content({ projected: { sources: [{ secret: { name: 'sec' } }, { configMap: { name: 'cfg', items: [{ key: 'one', path: 'one' }] } }] } });
  assert.deepEqual(projected, { kind: 'files', files: [{ path: 'token', data: 't0k', mode: 0o644 }, { path: 'one', data: '1', mode: 0o644 }] });
});

test('emptyDir and a volume with no source are empty directories; hostPath names the host directory', async () => {
  assert.deepEqual(await content({ emptyDir: {} }), { kind: 'emptyDir' });
  assert.deepEqual(await content({}), { kind: 'emptyDir' });
  assert.deepEqual(await content({ hostPath: { path: '/srv/data' } }), { kind: 'hostPath', path: '/srv/data' });
});
