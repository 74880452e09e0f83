// Static pods (src/static/): a manifest file's pods with the kubelet's defaults and UIDs, the references
// a static pod may not make, malformed files refused with a one-line reason naming the file, and the
// directory rescan: added, edited (replaced: a new UID), removed, broken (nothing else disturbed).
import assert from 'node:assert/strict';
import { mkdtemp, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { V1Pod } from '@kubernetes/client-node';
import { pino } from 'pino';
import { forbiddenReferences, isManifestFile, isMirrorPod, ManifestError, parseManifest, staticPodUid } from '../../../src/static/manifests.ts';
import { StaticPodSource } from '../../../src/static/source.ts';

const POD = `apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: vm
    image: guest:1
    command: [sh, -c, "echo hi"]
`;

test('a pod from a file gets the kubelet\'s defaults: name-<node>, namespace default, nodeName, config annotations, the NoExecute toleration', () => {
  const [pod, ...rest] = parseManifest('/etc/vmlet/pods/web.yaml', POD, 'Node-1');
  assert.equal(rest.length, 0);
  assert.equal(pod!.metadata!.name, 'web-node-1');
  assert.equal(pod!.metadata!.namespace, 'default');
  assert.equal(pod!.spec!.nodeName, 'Node-1');
  assert.match(pod!.metadata!.uid!, /^[0-9a-f]{32}$/);
  assert.equal(pod!.metadata!.annotations!['kubernetes.io/config.hash'], pod!.metadata!.uid);
  assert.equal(pod!.metadata!.annotations!['kubernetes.io/config.source'], 'file');
  assert.deepEqual(pod!.metadata!.labels, { app: 'web' });
  assert.deepEqual(pod!.spec!.tolerations, [{ operator: 'Exists', effect: 'NoExecute' }]);
  assert.equal(pod!.status?.phase, 'Pending');
  assert.equal(isMirrorPod(pod!), false);
});

test('the UID is stable for the same content, node and file, and changes with any of them; key order and formatting do not count', () => {
  const uid = (text: string, node = 'n1', file = '/d/web.yaml') => parseManifest(file, text, node)[0]!.metadata!.uid;
  assert.equal(uid(POD), uid(POD));
  assert.notEqual(uid(POD), uid(POD.replace('echo hi', 'echo bye')));
  assert.notEqual(uid(POD), uid(POD, 'n2'));
  assert.notEqual(uid(POD), uid(POD, 'n1', '/d/other.yaml'));
  const reordered = JSON.stringify({ spec: { containers: [{ command: ['sh', '-c', 'echo hi'], image: 'guest:1', name: 'vm' }] }, metadata: { labels: { app: 'web' }, name: 'web' }, kind: 'Pod', apiVersion: 'v1' });
  assert.equal(uid(reordered), uid(POD), 'the same pod as JSON, keys in another order');
  // A UID written in the manifest is kept, as the kubelet keeps it.
  assert.equal(uid(POD.replace('  name: web\n', '  name: web\n  uid: my-uid\n')), 'my-uid');
  assert.equal(staticPodUid({ apiVersion: 'v1', kind: 'Pod' }, '/f', 'n'), staticPodUid({ kind: 'Pod', apiVersion: 'v1' }, '/f', 'n'));
});

test('several YAML documents, a PodList, a namespace and an empty trailing document', () => {
  const text = `${POD}---\n${POD.replace('name: web', 'name: db').replace('labels: {app: web}', 'namespace: infra')}---\n`;
  const pods = parseManifest('/d/two.yaml', text, 'n1');
  assert.deepEqual(pods.map((p) => `${p.metadata!.namespace}/${p.metadata!.name}`), ['default/web-n1', 'infra/db-n1']);
  assert.notEqual(pods[0]!.metadata!.uid, pods[1]!.metadata!.uid);
  const list = JSON.stringify({ apiVersion: 'v1', kind: 'PodList', items: [{ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'a' }, spec: { containers: [{ name: 'vm', image: 'i' }] } }] });
  assert.deepEqual(parseManifest('/d/list.json', list, 'n1').map((p) => p.metadata!.name), ['a-n1']);
  assert.deepEqual(parseManifest('/d/empty.yaml', '', 'n1'), []);
});

test('a malformed manifest is refused with one line naming the file, the document and what is wrong', () => {
  const refused = (text: string, file = '/d/bad.yaml') => {
    try {
      parseManifest(file, text, 'n1');
    } catch (err) {
      assert.ok(err instanceof ManifestError);
      assert.ok(!err.message.includes('\n'), err.message);
      return err.message;
    }
    assert.fail('not refused');
  };
  assert.match(refused('apiVersion: v1\nkind: Pod\nmetadata: {name: [broken\n'), /^\/d\/bad\.yaml: not valid YAML at line \d+, column \d+: /);
  assert.equal(refused('- a\n- b\n'), '/d/bad.yaml: expected a Pod object (a mapping with kind: Pod), got a list');
  assert.equal(refused(POD.replace('kind: Pod', 'kind: Deployment')), '/d/bad.yaml: kind must be Pod (got "Deployment")');
  assert.equal(refused(POD.replace('apiVersion: v1', 'apiVersion: apps/v1')), '/d/bad.yaml: apiVersion must be v1 (got "apps/v1")');
  assert.equal(refused(POD.replace('  name: web\n', '')), '/d/bad.yaml: metadata.name is required');
  assert.match(refused(POD.replace('name: web', 'name: Web_1')), /metadata\.name "Web_1" must be a lowercase DNS name/);
  assert.equal(refused(POD.replace('    image: guest:1\n', '')), '/d/bad.yaml: spec.containers[0] (vm): image is required');
  assert.equal(refused('apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n'), '/d/bad.yaml: spec.containers must list at least one container');
  assert.equal(refused(`${POD}---\n${POD}`), '/d/bad.yaml: pod default/web-n1 is declared twice');
  assert.match(refused(`${POD}---\nkind: Pod\n`), /^\/d\/bad\.yaml \(document 2\): apiVersion must be v1/);
});

test('static pods may not reference ConfigMaps, Secrets or ServiceAccounts: each reference is named with its field', () => {
  const pod = parseManifest('/d/web.yaml', POD, 'n1')[0]!;
  assert.deepEqual(forbiddenReferences(pod), []);
  const spec = pod.spec!;
  spec.serviceAccountName = 'builder';
  spec.imagePullSecrets = [{ name: 'regcred' }];
  spec.volumes = [
    { name: 'cfg', configMap: { name: 'app-config' } },
    { name: 'sec', secret: { secretName: 'app-secret' } },
    { name: 'tok', projected: { sources: [{ serviceAccountToken: { path: 'token' } }] } },
    { name: 'scratch', emptyDir: {} },
  ];
  spec.containers[0]!.env = [{ name: 'A', valueFrom: { secretKeyRef: { name: 's', key: 'k' } } }, { name: 'B', value: 'plain' }];
  spec.containers[0]!.envFrom = [{ configMapRef: { name: 'env-config' } }];
  assert.deepEqual(forbiddenReferences(pod), [
    'spec.serviceAccountName "builder" (a ServiceAccount)',
    'spec.imagePullSecrets[0] "regcred" (a Secret)',
    'spec.volumes[0] (cfg).configMap "app-config" (a ConfigMap)',
    'spec.volumes[1] (sec).secret "app-secret" (a Secret)',
    'spec.volumes[2] (tok).projected.sources[0].serviceAccountToken (a ServiceAccount)',
    'spec.containers[0] (vm).env[0] (A) secretKeyRef "s" (a Secret)',
    'spec.containers[0] (vm).envFrom[0].configMapRef "env-config" (a ConfigMap)',
  ]);
});

test('which files are manifests', () => {
  for (const name of ['web.yaml', 'web.yml', 'web.json']) assert.ok(isManifestFile(name), name);
  for (const name of ['.web.yaml', 'web.yaml.swp', 'web.yaml~', 'README', '.#web.yaml']) assert.ok(!isManifestFile(name), name);
  assert.equal(isMirrorPod({ metadata: { annotations: { 'kubernetes.io/config.mirror': 'abc' } } }), true);
});

// ----- the directory source -----

let dir: string;
const log = pino({ level: 'silent' });
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'vmlet-static-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});
const names = (pods: V1Pod[]) => pods.map((p) => p.metadata!.name).sort();

test('a rescan reports added, edited (old removed, new added with another UID), broken and removed files', async () => {
  const lines: Array<{ msg: string; file?: string }> = [];
  const recording = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as { msg: string; file?: string }) });
  const source = new StaticPodSource({ dir, nodeName: 'n1', log: recording });
  await writeFile(path.join(dir, 'web.yaml'), POD);
  await writeFile(path.join(dir, 'db.json'), JSON.stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'db' }, spec: { containers: [{ name: 'vm', image: 'i' }] } }));
  await writeFile(path.join(dir, 'notes.txt'), 'not a manifest');
  let c = await source.scan();
  assert.deepEqual(names(c.added), ['db-n1', 'web-n1']);
  assert.deepEqual(c.removed, []);
  const webUid = c.added.find((p) => p.metadata!.name === 'web-n1')!.metadata!.uid!;
  assert.equal(source.file(webUid), path.join(dir, 'web.yaml'));
  assert.ok(c.added[0]!.metadata!.annotations!['kubernetes.io/config.seen']);

  c = await source.scan();
  assert.deepEqual([c.added, c.removed], [[], []], 'nothing changed, nothing reported');

  await writeFile(path.join(dir, 'web.yaml'), POD.replace('echo hi', 'echo changed'));
  c = await source.scan();
  assert.deepEqual(names(c.removed), ['web-n1']);
  assert.deepEqual(names(c.added), ['web-n1']);
  assert.equal(c.removed[0]!.metadata!.uid, webUid);
  assert.notEqual(c.added[0]!.metadata!.uid, webUid);
  const editedUid = c.added[0]!.metadata!.uid!;

  // A broken edit: logged once with the file, the pods it had stay, the other file is not disturbed.
  await writeFile(path.join(dir, 'web.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata: {name: [oops\n');
  c = await source.scan();
  assert.deepEqual([c.added, c.removed], [[], []]);
  c = await source.scan();
  const errors = lines.filter((l) => l.msg.startsWith('static pod manifest ignored'));
  assert.equal(errors.length, 1, 'logged once, not on every rescan');
  assert.equal(errors[0]!.file, path.join(dir, 'web.yaml'));
  assert.match(errors[0]!.msg, /web\.yaml: not valid YAML at line \d+/);
  assert.ok(source.pods().has(editedUid));

  // A second file declaring the same pod is refused; the first keeps it.
  await writeFile(path.join(dir, 'web-copy.yaml'), POD.replace('echo hi', 'echo changed'));
  c = await source.scan();
  assert.deepEqual([c.added, c.removed], [[], []]);
  assert.ok(lines.some((l) => /pod default\/web-n1 is already declared in/.test(l.msg)));
  await unlink(path.join(dir, 'web-copy.yaml'));

  await unlink(path.join(dir, 'web.yaml'));
  c = await source.scan();
  assert.deepEqual(names(c.removed), ['web-n1']);
  assert.deepEqual(names([...source.pods().values()]), ['db-n1']);
});

test('a directory that does not exist yet: no pods and one warning; pods once it appears', async () => {
  const later = path.join(dir, 'later');
  const source = new StaticPodSource({ dir: later, nodeName: 'n1', log });
  assert.deepEqual(await source.scan(), { added: [], removed: [] });
  await (await import('node:fs/promises')).mkdir(later);
  await writeFile(path.join(later, 'web.yml'), POD);
  assert.deepEqual(names((await source.scan()).added), ['web-n1']);
});

test('start(): a file written into the directory reaches the handler through fs.watch', async () => {
  const watched = path.join(dir, 'watched');
  await (await import('node:fs/promises')).mkdir(watched);
  const source = new StaticPodSource({ dir: watched, nodeName: 'n1', log, rescanIntervalMs: 60_000, debounceMs: 20 });
  await source.scan();
  const seen = new Promise<Array<string | undefined>>((resolve) => source.start((c) => resolve(names(c.added))));
  await writeFile(path.join(watched, 'web.yaml'), POD);
  try {
    assert.deepEqual(await seen, ['web-n1']);
  } finally {
    await source.stop();
  }
});
