import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { ConfigError, loadConfig } from '../../src/config/load.ts';
import { DEFAULT_TAINT } from '../../src/config/schema.ts';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'vmlet-config-'));
function file(name: string, text: string): string {
  const p = path.join(tmp, name);
  writeFileSync(p, text);
  return p;
}
function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    assert.ok(!err.message.includes('\n'), 'error is one line');
    return err.message;
  }
  assert.fail('expected an error');
}

test('defaults give a tainted node with 2 VM slots, a 10 s lease and a 5 min status report', () => {
  const c = loadConfig({ env: {}, flags: { nodeName: 'mac-1' } });
  assert.equal(c.nodeName, 'mac-1');
  assert.deepEqual(c.node.taints, [DEFAULT_TAINT]);
  assert.equal(c.node.vmSlots, 2);
  assert.equal(c.node.leaseRenewInterval, 10_000);
  assert.equal(c.node.leaseDuration, 40_000);
  assert.equal(c.node.statusReportInterval, 300_000);
  assert.equal(c.pressure.memoryAvailable, 100 * 2 ** 20);
});

test('flags override environment, which overrides the file', () => {
  const f = file('a.yaml', 'nodeName: from-file\nlogLevel: warn\nnode:\n  vmSlots: 4\n  labels: {a: "1"}\n');
  const c = loadConfig({
    file: f,
    env: { VMLET_LOG_LEVEL: 'debug', VMLET_VM_SLOTS: '6', VMLET_NODE_LABELS: 'b=2' },
    flags: { vmSlots: '8', nodeLabel: ['c=3'] },
  });
  assert.equal(c.nodeName, 'from-file');
  assert.equal(c.logLevel, 'debug');
  assert.equal(c.node.vmSlots, 8);
  assert.deepEqual(c.node.labels, { a: '1', b: '2', c: '3' });
});

test('durations and quantities accept Kubernetes spellings', () => {
  const f = file('b.yaml', 'node:\n  leaseRenewInterval: 2s\n  statusReportInterval: 1m30s\n  reservedMemory: 1Gi\n  reservedCpu: 500m\n');
  const c = loadConfig({ file: f, env: {} });
  assert.equal(c.node.leaseRenewInterval, 2000);
  assert.equal(c.node.statusReportInterval, 90_000);
  assert.equal(c.node.reservedMemory, 2 ** 30);
  assert.equal(c.node.reservedCpu, 0.5);
});

test('an invalid enum value names the field, the allowed values and where it came from', () => {
  const msg = errorOf(() => loadConfig({ env: { VMLET_LOG_LEVEL: 'loud' } }));
  assert.match(msg, /logLevel: must be one of trace, debug, info, warn, error, fatal, silent \(got "loud" from VMLET_LOG_LEVEL\)/);
});

test('a non-integer or negative slot count is refused with the flag named', () => {
  assert.match(errorOf(() => loadConfig({ env: {}, flags: { vmSlots: 'two' } })), /node\.vmSlots: expected an integer \(got "two" from --vm-slots\)/);
  assert.match(errorOf(() => loadConfig({ env: {}, flags: { vmSlots: '-1' } })), /node\.vmSlots: must be at least 0 \(got -1 from --vm-slots\)/);
});

test('an unknown key in the file is named with the file', () => {
  const f = file('c.yaml', 'node:\n  vmSlot: 3\n');
  assert.match(errorOf(() => loadConfig({ file: f, env: {} })), /unknown setting "node\.vmSlot" in .*c\.yaml/);
});

test('a file that is not YAML, or not a mapping, or missing, is a clear error', () => {
  assert.match(errorOf(() => loadConfig({ file: file('d.yaml', 'a: [1, 2\n'), env: {} })), /is not valid YAML/);
  assert.match(errorOf(() => loadConfig({ file: file('e.yaml', '- 1\n'), env: {} })), /must hold a YAML mapping/);
  assert.match(errorOf(() => loadConfig({ file: path.join(tmp, 'none.yaml'), env: {} })), /cannot read config file .*none\.yaml: ENOENT/);
});

test('taints parse the kubelet --register-with-taints syntax, and "none" registers none', () => {
  const c = loadConfig({ env: {}, flags: { registerWithTaint: ['a=b:NoSchedule', 'c:NoExecute'] } });
  assert.deepEqual(c.node.taints, [
    { key: 'a', value: 'b', effect: 'NoSchedule' },
    { key: 'c', effect: 'NoExecute' },
  ]);
  assert.deepEqual(loadConfig({ env: {}, flags: { registerWithTaint: ['none'] } }).node.taints, []);
  assert.match(errorOf(() => loadConfig({ env: {}, flags: { registerWithTaint: ['a=b:Sometimes'] } })), /key\[=value\]:Effect/);
});

test('bad label keys, node names and addresses are refused before anything reaches the API server', () => {
  assert.match(errorOf(() => loadConfig({ env: {}, flags: { nodeLabel: ['bad key=1'] } })), /label key "bad key"/);
  assert.match(errorOf(() => loadConfig({ env: {}, flags: { nodeName: 'Mac_01' } })), /nodeName: must be a lowercase DNS name/);
  assert.match(errorOf(() => loadConfig({ env: {}, flags: { nodeIp: '300.1.1.1' } })), /node\.ip/);
  assert.match(errorOf(() => loadConfig({ env: {}, flags: { adminAddress: 'localhost' } })), /adminAddress: must be host:port/);
  assert.match(errorOf(() => loadConfig({ env: {}, flags: { startupTimeout: 'soon' } })), /startupTimeout: "soon" is not a duration/);
});

test('every setting is documented in docs/CONFIGURATION.md with its flag and environment variable', async () => {
  const { readFileSync } = await import('node:fs');
  const { SETTINGS } = await import('../../src/config/load.ts');
  const doc = readFileSync(new URL('../../docs/CONFIGURATION.md', import.meta.url), 'utf8');
  const c = loadConfig({ env: {}, flags: { nodeName: 'n' } }) as unknown as Record<string, unknown>;
  const keys = Object.entries(c).flatMap(([k, v]) =>
    typeof v === 'object' && v !== null && !Array.isArray(v) && k !== 'labels' ? Object.keys(v).map((n) => `${k}.${n}`) : [k],
  );
  for (const key of new Set([...keys, ...SETTINGS.map((s) => s.path)])) assert.ok(doc.includes(`\`${key}\``), `${key} is documented`);
  for (const s of SETTINGS) {
    assert.ok(doc.includes(`--${s.flag}`), `--${s.flag} is documented`);
    assert.ok(doc.includes(s.env), `${s.env} is documented`);
  }
});

test('kubelet API settings: defaults as the kubelet, certificate and key together, anonymous from text', () => {
  const c = loadConfig({ env: {}, flags: { nodeName: 'n' } });
  assert.equal(c.kubeletAddress, '0.0.0.0');
  assert.equal(c.kubeletAnonymousAuth, false);
  assert.equal(c.kubeletAuthorizationMode, 'Webhook');
  assert.equal(c.kubeletClientCaFile, undefined);
  assert.equal(c.kubeletTokenCacheTTL, 120_000);
  assert.equal(c.kubeletAuthorizedCacheTTL, 300_000);
  assert.equal(c.kubeletUnauthorizedCacheTTL, 30_000);
  const d = loadConfig({ env: { VMLET_KUBELET_ANONYMOUS_AUTH: 'true' }, flags: { kubeletAddress: '127.0.0.1', kubeletAuthorizationMode: 'AlwaysAllow', kubeletTlsCertFile: '/a.crt', kubeletTlsKeyFile: '/a.key' } });
  assert.equal(d.kubeletAnonymousAuth, true);
  assert.equal(d.kubeletAddress, '127.0.0.1');
  assert.equal(d.kubeletAuthorizationMode, 'AlwaysAllow');
  assert.equal(d.kubeletTlsKeyFile, '/a.key');
  assert.equal(loadConfig({ file: file('k.yaml', 'kubeletAnonymousAuth: true\n'), env: {} }).kubeletAnonymousAuth, true);
  assert.match(errorOf(() => loadConfig({ env: {}, flags: { kubeletTlsCertFile: '/a.crt' } })), /kubeletTlsKeyFile: kubeletTlsCertFile and kubeletTlsKeyFile must be given together/);
  assert.match(errorOf(() => loadConfig({ env: {}, flags: { kubeletAuthorizationMode: 'RBAC' } })), /kubeletAuthorizationMode: must be one of Webhook, AlwaysAllow \(got "RBAC" from --kubelet-authorization-mode\)/);
  assert.match(errorOf(() => loadConfig({ env: {}, flags: { kubeletAnonymousAuth: 'yes' } })), /kubeletAnonymousAuth: must be true or false \(got "yes" from --kubelet-anonymous-auth\)/);
  assert.match(errorOf(() => loadConfig({ env: {}, flags: { kubeletAddress: 'localhost' } })), /kubeletAddress: must be an IP address/);
});

test('hostPathPrefixes: none by default; absolute directories from a repeated or comma-separated flag, the environment or the file', () => {
  assert.deepEqual(loadConfig({ env: {}, flags: { nodeName: 'n' } }).hostPathPrefixes, []);
  assert.deepEqual(loadConfig({ env: {}, flags: { hostPathPrefix: ['/srv/shared/', '/data,/mnt/x'] } }).hostPathPrefixes, ['/srv/shared', '/data', '/mnt/x']);
  assert.deepEqual(loadConfig({ env: { VMLET_HOST_PATH_PREFIXES: '/a, /b/../c' } }).hostPathPrefixes, ['/a', '/c']);
  assert.deepEqual(loadConfig({ file: file('h.yaml', 'hostPathPrefixes: [/srv/vm-shared]\n'), env: {} }).hostPathPrefixes, ['/srv/vm-shared']);
  assert.deepEqual(loadConfig({ env: {}, flags: { hostPathPrefix: '/' } }).hostPathPrefixes, ['/']);
  assert.match(errorOf(() => loadConfig({ env: {}, flags: { hostPathPrefix: ['/ok', 'shared'] } })), /hostPathPrefixes\.1: must be an absolute path, e\.g\. \/srv\/vmlet-shared \(got "shared" from --host-path-prefix\)/);
});
