import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { V1Container, V1Pod } from '@kubernetes/client-node';
import { expand, resolveEnv, type EnvFacts, type EnvLookups } from '../../../src/runtime/pod/env.ts';
import { PodSpecError } from '../../../src/runtime/pod/errors.ts';

const configMaps: Record<string, Record<string, string>> = {
  app: { LOG_LEVEL: 'debug', 'bad key': 'x', '1ST': 'y', 'dotted.key': 'ok', HOST: 'cm-host' },
  other: { HOST: 'other-host' },
};
const secrets: Record<string, Record<string, string>> = { db: { password: 's3cret', user: 'admin' } };

function lookups(reads: string[] = [], skipped: unknown[] = []): EnvLookups {
  return {
    configMap: async (ns, name) => (reads.push(`cm ${ns}/${name}`), configMaps[name]),
    secret: async (ns, name) => (reads.push(`secret ${ns}/${name}`), secrets[name]),
    skippedKeys: (s) => skipped.push(s),
  };
}
const facts: EnvFacts = { nodeName: 'node-a', hostIP: '10.0.0.5', podIP: '10.244.0.7' };

function pod(container: Partial<V1Container>, spec: Partial<V1Pod['spec']> = {}): { pod: V1Pod; container: V1Container } {
  const c: V1Container = { name: 'vm', image: 'x', ...container };
  return {
    pod: {
      metadata: { name: 'web-0', namespace: 'shop', uid: 'uid-1', labels: { app: 'web' }, annotations: { 'team.io/owner': 'ann' } },
      spec: { containers: [c], nodeName: 'node-a', serviceAccountName: 'web-sa', ...spec },
    },
    container: c,
  };
}

async function env(container: Partial<V1Container>, spec: Partial<V1Pod['spec']> = {}, f: EnvFacts = facts, l = lookups()): Promise<Record<string, string>> {
  const p = pod(container, spec);
  return resolveEnv(p.pod, p.container, l, f);
}

async function failure(container: Partial<V1Container>): Promise<string> {
  try {
    await env(container);
    return 'resolved';
  } catch (err) {
    assert.ok(err instanceof PodSpecError);
    return `${err.reason}: ${err.message}`;
  }
}

test('$(VAR) expansion follows Kubernetes: defined refs expand, $$ escapes, unknown and unclosed refs stay', () => {
  const vars = new Map([['A', 'alpha'], ['EMPTY', '']]);
  assert.equal(expand('$(A)-x', vars), 'alpha-x');
  assert.equal(expand('$$(A)', vars), '$(A)');
  assert.equal(expand('$$$(A)', vars), '$alpha');
  assert.equal(expand('$(B)', vars), '$(B)');
  assert.equal(expand('<$(EMPTY)>', vars), '<>');
  assert.equal(expand('$(A', vars), '$(A');
  assert.equal(expand('cost: $5 $', vars), 'cost: $5 $');
  assert.equal(expand('$(A)$(A)', vars), 'alphaalpha');
  assert.equal(expand('$()', vars), '$()');
});

test('env values expand against variables defined before them, not after', async () => {
  const out = await env({ env: [{ name: 'A', value: 'one' }, { name: 'B', value: '$(A)-$(C)' }, { name: 'C', value: 'three' }] });
  assert.deepEqual(out, { A: 'one', B: 'one-$(C)', C: 'three' });
});

test('envFrom imports ConfigMap and Secret keys with their prefix, skipping invalid names and telling which', async () => {
  const skipped: Array<{ kind: string; name: string; keys: string[]; message: string }> = [];
  const out = await env(
    { envFrom: [{ configMapRef: { name: 'app' } }, { prefix: 'DB_', secretRef: { name: 'db' } }] },
    {},
    facts,
    lookups([], skipped),
  );
  assert.deepEqual(out, { HOST: 'cm-host', LOG_LEVEL: 'debug', 'dotted.key': 'ok', DB_password: 's3cret', DB_user: 'admin' });
  assert.equal(skipped.length, 1);
  assert.deepEqual(skipped[0]!.keys, ['1ST', 'bad key']);
  assert.equal(skipped[0]!.message, 'Keys [1ST, bad key] from the EnvFrom configMap shop/app were skipped since they are considered invalid environment variable names.');
});

test('a prefix can make a key that starts with a digit valid', async () => {
  const out = await env({ envFrom: [{ prefix: 'X_', configMapRef: { name: 'app' } }] });
  assert.equal(out.X_1ST, 'y');
  assert.equal(out['X_bad key'], undefined);
});

test('later envFrom sources and then env override earlier ones, and envFrom values are not expanded', async () => {
  const out = await env({
    envFrom: [{ configMapRef: { name: 'app' } }, { configMapRef: { name: 'other' } }],
    env: [{ name: 'LOG_LEVEL', value: 'info' }, { name: 'URL', value: 'http://$(HOST)/' }],
  });
  assert.equal(out.HOST, 'other-host');
  assert.equal(out.LOG_LEVEL, 'info');
  assert.equal(out.URL, 'http://other-host/');
});

test('a missing envFrom source fails with the kubelet wording unless it is optional', async () => {
  assert.equal(await failure({ envFrom: [{ configMapRef: { name: 'nope' } }] }), 'CreateContainerConfigError: spec.containers[0] (vm).envFrom[0].configMapRef: configmap "nope" not found; create it in namespace shop, or set optional: true to start without it');
  assert.equal(await failure({ envFrom: [{ secretRef: { name: 'nope' } }] }), 'CreateContainerConfigError: spec.containers[0] (vm).envFrom[0].secretRef: secret "nope" not found; create it in namespace shop, or set optional: true to start without it');
  assert.deepEqual(await env({ envFrom: [{ configMapRef: { name: 'nope', optional: true } }], env: [{ name: 'A', value: '1' }] }), { A: '1' });
});

test('configMapKeyRef and secretKeyRef read one key; missing objects and keys fail unless optional, which skips the variable', async () => {
  const out = await env({
    env: [
      { name: 'LEVEL', valueFrom: { configMapKeyRef: { name: 'app', key: 'LOG_LEVEL' } } },
      { name: 'PW', valueFrom: { secretKeyRef: { name: 'db', key: 'password' } } },
      { name: 'GONE', valueFrom: { secretKeyRef: { name: 'db', key: 'token', optional: true } } },
      { name: 'GONE2', valueFrom: { configMapKeyRef: { name: 'nope', key: 'k', optional: true } } },
      { name: 'REF', value: '$(PW)@$(GONE)' },
    ],
  });
  assert.deepEqual(out, { LEVEL: 'debug', PW: 's3cret', REF: 's3cret@$(GONE)' });
  assert.equal(await failure({ env: [{ name: 'X', valueFrom: { configMapKeyRef: { name: 'nope', key: 'k' } } }] }), 'CreateContainerConfigError: spec.containers[0] (vm).env[0] (X).valueFrom.configMapKeyRef: configmap "nope" not found; create it in namespace shop, or set optional: true to start without it');
  assert.match(await failure({ env: [{ name: 'X', valueFrom: { configMapKeyRef: { name: 'app', key: 'k' } } }] }), /^CreateContainerConfigError: spec\.containers\[0\] \(vm\)\.env\[0\] \(X\)\.valueFrom\.configMapKeyRef: couldn't find key k in ConfigMap shop\/app \(its keys: .*\); add the key to the ConfigMap, correct the key, or set optional: true to start without it$/);
  assert.equal(await failure({ env: [{ name: 'X', valueFrom: { secretKeyRef: { name: 'db', key: 'k' } } }] }), "CreateContainerConfigError: spec.containers[0] (vm).env[0] (X).valueFrom.secretKeyRef: couldn't find key k in Secret shop/db (its keys: password, user); add the key to the Secret, correct the key, or set optional: true to start without it");
  assert.equal(await failure({ env: [{ name: 'X', valueFrom: { secretKeyRef: { name: 'vault', key: 'k' } } }] }), 'CreateContainerConfigError: spec.containers[0] (vm).env[0] (X).valueFrom.secretKeyRef: secret "vault" not found; create it in namespace shop, or set optional: true to start without it');
});

test('each ConfigMap and Secret is read once per resolution, in the pod namespace', async () => {
  const reads: string[] = [];
  await env(
    {
      envFrom: [{ configMapRef: { name: 'app' } }],
      env: [
        { name: 'A', valueFrom: { configMapKeyRef: { name: 'app', key: 'HOST' } } },
        { name: 'B', valueFrom: { secretKeyRef: { name: 'db', key: 'user' } } },
        { name: 'C', valueFrom: { secretKeyRef: { name: 'db', key: 'password' } } },
      ],
    },
    {},
    facts,
    lookups(reads),
  );
  assert.deepEqual(reads, ['cm shop/app', 'secret shop/db']);
});

test('fieldRef gives the pod fields the kubelet supports', async () => {
  const f = (fieldPath: string) => ({ name: fieldPath.replace(/\W/g, '_'), valueFrom: { fieldRef: { fieldPath } } });
  const paths = [
    'metadata.name', 'metadata.namespace', 'metadata.uid', "metadata.labels['app']", "metadata.annotations['team.io/owner']", "metadata.labels['missing']",
    'spec.nodeName', 'spec.serviceAccountName', 'status.hostIP', 'status.hostIPs', 'status.podIP', 'status.podIPs',
  ];
  const out = await env({ env: paths.map(f) }, {}, { ...facts, podIPs: ['10.244.0.7', 'fd00::7'] });
  assert.deepEqual(Object.values(out), ['web-0', 'shop', 'uid-1', 'web', 'ann', '', 'node-a', 'web-sa', '10.0.0.5', '10.0.0.5', '10.244.0.7', '10.244.0.7,fd00::7']);
  assert.equal(await failure({ env: [f('metadata.generation')] }), 'CreateContainerConfigError: spec.containers[0] (vm).env[0] (metadata_generation).valueFrom.fieldRef: unsupported fieldPath: metadata.generation');
});

test('resourceFieldRef reports limits and requests with their divisor; cpu rounds up', async () => {
  const rf = (name: string, resource: string, divisor?: string) => ({ name, valueFrom: { resourceFieldRef: { resource, ...(divisor ? { divisor } : {}) } } });
  const out = await env({
    resources: { limits: { cpu: '1500m', memory: '1Gi' }, requests: { cpu: '250m' } },
    env: [
      rf('CPU', 'limits.cpu'),
      rf('CPU_M', 'limits.cpu', '1m'),
      rf('REQ_CPU', 'requests.cpu'),
      rf('MEM', 'limits.memory'),
      rf('MEM_MI', 'limits.memory', '1Mi'),
      rf('MEM_REQ', 'requests.memory', '1Mi'),
    ],
  });
  assert.deepEqual(out, { CPU: '2', CPU_M: '1500', REQ_CPU: '1', MEM: String(2 ** 30), MEM_MI: '1024', MEM_REQ: '1024' });
});

test('resourceFieldRef of an unset limit reports the VM size, and an unset request with no limit reports 0', async () => {
  const rf = (name: string, resource: string, divisor?: string) => ({ name, valueFrom: { resourceFieldRef: { resource, ...(divisor ? { divisor } : {}) } } });
  const out = await env({ env: [rf('CPU', 'limits.cpu'), rf('MEM', 'limits.memory', '1Mi'), rf('REQ', 'requests.memory')] }, {}, { ...facts, vm: { cpus: 3, memoryMiB: 4096 } });
  assert.deepEqual(out, { CPU: '3', MEM: '4096', REQ: '0' });
  assert.match(await failure({ env: [rf('CPU', 'limits.cpu')] }), /^CreateContainerConfigError: spec\.containers\[0\] \(vm\)\.env\[0\] \(CPU\)\.valueFrom\.resourceFieldRef: limits\.cpu: container "vm" has no limit and the VM size is not known/);
  assert.equal(await failure({ env: [rf('G', 'limits.nvidia.com/gpu')] }), 'CreateContainerConfigError: spec.containers[0] (vm).env[0] (G).valueFrom.resourceFieldRef: unsupported container resource : limits.nvidia.com/gpu');
});

test('resourceFieldRef may name another container of the pod', async () => {
  const p = pod({ env: [{ name: 'SETUP_MEM', valueFrom: { resourceFieldRef: { containerName: 'setup', resource: 'limits.memory', divisor: '1Mi' } } }] });
  p.pod.spec!.initContainers = [{ name: 'setup', image: 'x', resources: { limits: { memory: '256Mi' } } }];
  assert.deepEqual(await resolveEnv(p.pod, p.container, lookups(), facts), { SETUP_MEM: '256' });
});

test('service-link variables come first, are overridden by explicit env, can be referenced, and are left out when enableServiceLinks is false', async () => {
  const f = { ...facts, services: [{ metadata: { namespace: 'shop', name: 'db' }, spec: { clusterIP: '10.96.0.9', ports: [{ port: 5432 }] } }] };
  const out = await env({ env: [{ name: 'DB_SERVICE_PORT', value: '6543' }, { name: 'DSN', value: 'pg://$(DB_SERVICE_HOST):$(DB_SERVICE_PORT)' }] }, {}, f);
  assert.equal(out.DB_SERVICE_HOST, '10.96.0.9');
  assert.equal(out.DB_PORT_5432_TCP, 'tcp://10.96.0.9:5432');
  assert.equal(out.DB_SERVICE_PORT, '6543');
  assert.equal(out.DSN, 'pg://10.96.0.9:6543');
  const off = await env({ env: [{ name: 'DSN', value: '$(DB_SERVICE_HOST)' }] }, { enableServiceLinks: false }, f);
  assert.deepEqual(off, { DSN: '$(DB_SERVICE_HOST)' });
});

test('an env var with neither value nor valueFrom is set, empty; a later duplicate wins', async () => {
  assert.deepEqual(await env({ env: [{ name: 'A' }, { name: 'B', value: '1' }, { name: 'B', value: '2' }] }), { A: '', B: '2' });
});

test('a ConfigMap key named __proto__ becomes an ordinary variable', async () => {
  configMaps.proto = JSON.parse('{"__proto__": "p"}') as Record<string, string>;
  const out = await env({ envFrom: [{ configMapRef: { name: 'proto' } }] });
  assert.ok(Object.hasOwn(out, '__proto__'));
  assert.equal(Object.getOwnPropertyDescriptor(out, '__proto__')?.value, 'p');
});
