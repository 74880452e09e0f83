import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { KubeconfigError, loadKubeconfig } from '../../src/kube/kubeconfig.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'vmlet-kubeconfig-'));
const write = (name: string, text: string, mode = 0o644) => {
  const file = path.join(dir, name);
  writeFileSync(file, text);
  chmodSync(file, mode);
  return file;
};
const kubeconfig = (cluster: string, user: string) =>
  `apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\nclusters: [{name: k, cluster: {${cluster}}}]\nusers: [{name: u, user: {${user}}}]\n`;
function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof KubeconfigError, String(err));
    return err.message;
  }
  assert.fail('expected a KubeconfigError');
}

test('certificate files are read relative to the kubeconfig, and inline data is decoded', async () => {
  write('ca.crt', 'CA');
  write('client.crt', 'CERT');
  write('client.key', 'KEY');
  const files = loadKubeconfig(write('files.yaml', kubeconfig('server: "https://10.0.0.1:6443/", certificate-authority: ca.crt', 'client-certificate: client.crt, client-key: client.key')), {});
  assert.equal(files.server, 'https://10.0.0.1:6443');
  assert.deepEqual([files.ca?.toString(), files.cert?.toString(), files.key?.toString()], ['CA', 'CERT', 'KEY']);
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const data = loadKubeconfig(write('data.yaml', kubeconfig(`server: "https://h", certificate-authority-data: ${b64('CA2')}, tls-server-name: api`, `token: abc`)), {});
  assert.equal(data.ca?.toString(), 'CA2');
  assert.equal(data.tlsServerName, 'api');
  assert.equal(await data.token?.(), 'abc');
});

test('$KUBECONFIG is used when no path is given, and its first entry wins', () => {
  const a = write('a.yaml', kubeconfig('server: "https://a"', 'token: t'));
  assert.equal(loadKubeconfig(undefined, { KUBECONFIG: `${a}${path.delimiter}/nonexistent` }).server, 'https://a');
});

test('an exec plugin supplies the token, cached until it expires', async () => {
  const counter = path.join(dir, 'count');
  write(
    'plugin.sh',
    `#!/bin/sh\necho x >> ${counter}\necho '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"from-plugin-'$MODE'"}}'\n`,
    0o755,
  );
  const access = loadKubeconfig(
    write('exec.yaml', kubeconfig('server: "https://h"', `exec: {apiVersion: client.authentication.k8s.io/v1, command: ./plugin.sh, env: [{name: MODE, value: ok}]}`)),
    {},
  );
  assert.equal(await access.token?.(), 'from-plugin-ok');
  assert.equal(await access.token?.(), 'from-plugin-ok');
  const { readFileSync } = await import('node:fs');
  assert.equal(readFileSync(counter, 'utf8').trim().split('\n').length, 1, 'ran once, then cached');
});

test('a failing exec plugin is a kubeconfig error that names the plugin and its message', async () => {
  write('bad-plugin.sh', '#!/bin/sh\necho "not logged in" >&2\nexit 1\n', 0o755);
  const access = loadKubeconfig(write('bad-exec.yaml', kubeconfig('server: "https://h"', 'exec: {command: ./bad-plugin.sh}')), {});
  await assert.rejects(access.token!(), (err: Error) => err instanceof KubeconfigError && /exec plugin \.\/bad-plugin\.sh failed: not logged in/.test(err.message));
});

test('broken kubeconfigs are named with what is wrong', () => {
  assert.match(errorOf(() => loadKubeconfig(path.join(dir, 'missing.yaml'), {})), /missing\.yaml does not exist/);
  assert.match(errorOf(() => loadKubeconfig(write('list.yaml', '- a\n'), {})), /is not a valid kubeconfig: not a YAML mapping/);
  assert.match(errorOf(() => loadKubeconfig(write('noctx.yaml', 'apiVersion: v1\n'), {})), /has no current context/);
  assert.match(errorOf(() => loadKubeconfig(write('noserver.yaml', kubeconfig('insecure-skip-tls-verify: true', 'token: t')), {})), /has no server/);
  assert.match(errorOf(() => loadKubeconfig(write('badurl.yaml', kubeconfig('server: "ftp://x"', 'token: t')), {})), /is not an http\(s\) URL/);
  assert.match(errorOf(() => loadKubeconfig(write('nocert.yaml', kubeconfig('server: "https://x"', 'client-certificate: nope.crt, client-key: nope.key')), {})), /client-certificate file .*nope\.crt cannot be read/);
  assert.match(errorOf(() => loadKubeconfig(write('halfcert.yaml', kubeconfig('server: "https://x"', `client-certificate-data: ${Buffer.from('c').toString('base64')}`)), {})), /certificate without a key/);
  assert.match(errorOf(() => loadKubeconfig(write('authprov.yaml', kubeconfig('server: "https://x"', 'auth-provider: {name: gcp}')), {})), /auth-provider, which vmlet does not support/);
});
