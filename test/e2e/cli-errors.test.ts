// The real `vmlet` command given bad input: each mistake ends in one line on stderr that says what is
// wrong, and a non-zero exit — never a stack trace, never a hang.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { freePort } from '../harness/processes.ts';
import { runVmlet } from '../harness/vmlet.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'vmlet-cli-'));
const write = (name: string, text: string) => {
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return file;
};
const kubeconfigFor = (server: string) =>
  [
    'apiVersion: v1',
    'kind: Config',
    `clusters: [{name: c, cluster: {server: "${server}", insecure-skip-tls-verify: true}}]`,
    'users: [{name: u, user: {token: "abc"}}]',
    'contexts: [{name: c, context: {cluster: c, user: u}}]',
    'current-context: c',
  ].join('\n');
const base = ['run', '--node-name=cli-test', `--image-cache-dir=${path.join(dir, 'cache')}`, '--admin-address='];

function oneLine(stderr: string): string {
  const lines = stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${stderr}`);
  return lines[0]!;
}

test('an unreachable API server ends in one line naming the server and the cause', async () => {
  const port = await freePort();
  const kc = write('unreachable.kubeconfig', kubeconfigFor(`https://127.0.0.1:${port}`));
  const r = await runVmlet([...base, `--kubeconfig=${kc}`, '--startup-timeout=2s', '--log-level=error']);
  assert.equal(r.code, 1);
  assert.match(oneLine(r.stderr), new RegExp(`^vmlet: cannot reach the API server at https://127\\.0\\.0\\.1:${port}: .*ECONNREFUSED.* \\(gave up after 2s\\)$`));
});

test('a kubeconfig that is missing, not YAML, or without a current context is named with its problem', async () => {
  const missing = await runVmlet([...base, `--kubeconfig=${path.join(dir, 'nope')}`]);
  assert.equal(missing.code, 1);
  assert.match(oneLine(missing.stderr), /^vmlet: kubeconfig .*nope does not exist$/);

  const garbage = await runVmlet([...base, `--kubeconfig=${write('garbage.kubeconfig', 'clusters: [unterminated\n')}`]);
  assert.equal(garbage.code, 1);
  assert.match(oneLine(garbage.stderr), /^vmlet: kubeconfig .*garbage\.kubeconfig is not a valid kubeconfig: /);

  const noContext = await runVmlet([...base, `--kubeconfig=${write('nocontext.kubeconfig', 'apiVersion: v1\nkind: Config\nclusters: []\n')}`]);
  assert.equal(noContext.code, 1);
  assert.match(oneLine(noContext.stderr), /^vmlet: kubeconfig .*nocontext\.kubeconfig has no current context$/);

  const noServer = await runVmlet([], { KUBECONFIG: '' });
  assert.notEqual(noServer.code, 0, 'no subcommand is a usage error');
});

test('an invalid configuration value names the field, the allowed values and its source, and exits 2', async () => {
  const flag = await runVmlet([...base, '--vm-slots=-3']);
  assert.equal(flag.code, 2);
  assert.equal(oneLine(flag.stderr), 'vmlet: invalid configuration: node.vmSlots: must be at least 0 (got -3 from --vm-slots)');

  const env = await runVmlet(base, { VMLET_HYPERVISOR: 'virtualbox' });
  assert.equal(env.code, 2);
  assert.equal(oneLine(env.stderr), 'vmlet: invalid configuration: hypervisor: must be one of auto, qemu, vz (got "virtualbox" from VMLET_HYPERVISOR)');

  const file = write('bad.yaml', 'node:\n  leaseRenewInterval: often\n');
  const fromFile = await runVmlet([...base, `--config=${file}`]);
  assert.equal(fromFile.code, 2);
  assert.match(oneLine(fromFile.stderr), /^vmlet: invalid configuration: node\.leaseRenewInterval: "often" is not a duration .* \(got "often" in .*bad\.yaml\)$/);
});

test('vmlet image names a bad flag, reference or unreachable registry in one line', async () => {
  const store = `--store=${path.join(dir, 'store')}`;
  const platform = await runVmlet(['image', 'pull', 'example.com/vm:1', '--platform=linux', store]);
  assert.equal(platform.code, 2);
  assert.match(oneLine(platform.stderr), /^vmlet: --platform "linux" must be os\/arch/);
  const chunk = await runVmlet(['image', 'import', 'a:1', '--disk=/etc/hostname', '--config=/nope', '--chunk-size=lots', store]);
  assert.equal(chunk.code, 2);
  assert.match(oneLine(chunk.stderr), /^vmlet: --chunk-size: "lots" is not a Kubernetes quantity/);
  const ca = await runVmlet(['image', 'pull', 'example.com/vm:1', '--ca-file=/nonexistent.pem', store]);
  assert.equal(ca.code, 2);
  assert.match(oneLine(ca.stderr), /^vmlet: --ca-file \/nonexistent\.pem cannot be read: ENOENT$/);
  const ref = await runVmlet(['image', 'pull', 'Bad Ref', store]);
  assert.equal(ref.code, 1);
  assert.match(oneLine(ref.stderr), /^vmlet: invalid image reference "Bad Ref"/);
  const port = await freePort();
  const down = await runVmlet(['image', 'pull', `127.0.0.1:${port}/vm:1`, store]);
  assert.equal(down.code, 1);
  assert.match(oneLine(down.stderr), new RegExp(`^vmlet: pull 127\\.0\\.0\\.1:${port}/vm:1: .*ECONNREFUSED`));
});
