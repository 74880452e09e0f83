import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { V1Service } from '@kubernetes/client-node';
import { serviceLinkEnv } from '../../../src/runtime/pod/service-env.ts';

const svc = (namespace: string, name: string, clusterIP: string, ports: Array<{ name?: string; port: number; protocol?: string }>): V1Service => ({ metadata: { namespace, name }, spec: { clusterIP, ports } });
const services = [
  svc('default', 'kubernetes', '10.96.0.1', [{ name: 'https', port: 443, protocol: 'TCP' }]),
  svc('web', 'my-db', '10.96.0.9', [{ name: 'pg', port: 5432 }, { name: 'metrics', port: 9187, protocol: 'TCP' }]),
  svc('web', 'headless', 'None', [{ port: 80 }]),
  svc('other', 'cache', '10.96.0.7', [{ port: 6379 }]),
];

test('service links: the kubelet\'s variables for each Service of the pod\'s namespace with a cluster IP, and for kubernetes', () => {
  const env = serviceLinkEnv(services, 'web', true);
  assert.deepEqual(env, {
    KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443', KUBERNETES_SERVICE_PORT_HTTPS: '443',
    KUBERNETES_PORT: 'tcp://10.96.0.1:443', KUBERNETES_PORT_443_TCP: 'tcp://10.96.0.1:443', KUBERNETES_PORT_443_TCP_PROTO: 'tcp',
    KUBERNETES_PORT_443_TCP_PORT: '443', KUBERNETES_PORT_443_TCP_ADDR: '10.96.0.1',
    MY_DB_SERVICE_HOST: '10.96.0.9', MY_DB_SERVICE_PORT: '5432', MY_DB_SERVICE_PORT_PG: '5432', MY_DB_SERVICE_PORT_METRICS: '9187',
    MY_DB_PORT: 'tcp://10.96.0.9:5432', MY_DB_PORT_5432_TCP: 'tcp://10.96.0.9:5432', MY_DB_PORT_5432_TCP_PROTO: 'tcp',
    MY_DB_PORT_5432_TCP_PORT: '5432', MY_DB_PORT_5432_TCP_ADDR: '10.96.0.9', MY_DB_PORT_9187_TCP: 'tcp://10.96.0.9:9187',
    MY_DB_PORT_9187_TCP_PROTO: 'tcp', MY_DB_PORT_9187_TCP_PORT: '9187', MY_DB_PORT_9187_TCP_ADDR: '10.96.0.9',
  });
});

test('service links: with enableServiceLinks false only the kubernetes Service remains; IPv6 addresses are bracketed in URLs', () => {
  assert.deepEqual(Object.keys(serviceLinkEnv(services, 'web', false)).filter((k) => !k.startsWith('KUBERNETES_')), []);
  const v6 = serviceLinkEnv([svc('web', 'api', 'fd00::5', [{ port: 80, protocol: 'UDP' }])], 'web', true);
  assert.equal(v6.API_PORT, 'udp://[fd00::5]:80');
  assert.equal(v6.API_PORT_80_UDP_ADDR, 'fd00::5');
});
