import assert from 'node:assert/strict';
import { lstat, mkdtemp, readFile, readdir, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { writeVolumeAtomically } from '../../../src/runtime/pod/atomic-writer.ts';

const dirs: string[] = [];
after(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));
const fresh = async () => {
  const d = await mkdtemp(path.join(tmpdir(), 'vmlet-atomic-'));
  dirs.push(d);
  return d;
};

test('a volume is written in the kubelet\'s layout: a version directory, ..data pointing at it, and top-level symlinks', async () => {
  const dir = await fresh();
  assert.equal(await writeVolumeAtomically(dir, [{ path: 'app.yaml', data: 'a: 1\n', mode: 0o644 }, { path: 'certs/ca.crt', data: 'CA', mode: 0o400 }]), true);
  const version = await readlink(path.join(dir, '..data'));
  assert.match(version, /^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d+$/);
  assert.equal(await readlink(path.join(dir, 'app.yaml')), '..data/app.yaml');
  assert.equal(await readlink(path.join(dir, 'certs')), '..data/certs');
  assert.equal(await readFile(path.join(dir, 'certs', 'ca.crt'), 'utf8'), 'CA');
  assert.equal((await lstat(path.join(dir, version, 'certs', 'ca.crt'))).mode & 0o777, 0o400);
});

test('the same content again changes nothing; new content is a new version, and what it dropped goes', async () => {
  const dir = await fresh();
  await writeVolumeAtomically(dir, [{ path: 'a', data: '1', mode: 0o644 }, { path: 'b', data: '2', mode: 0o644 }]);
  const first = await readlink(path.join(dir, '..data'));
  assert.equal(await writeVolumeAtomically(dir, [{ path: 'a', data: '1', mode: 0o644 }, { path: 'b', data: '2', mode: 0o644 }]), false);
  assert.equal(await writeVolumeAtomically(dir, [{ path: 'a', data: '1', mode: 0o600 }, { path: 'b', data: '2', mode: 0o644 }]), true, 'a mode change is a change');
  assert.equal(await writeVolumeAtomically(dir, [{ path: 'a', data: 'one', mode: 0o600 }]), true);
  const now = await readlink(path.join(dir, '..data'));
  assert.notEqual(now, first);
  assert.equal(await readFile(path.join(dir, 'a'), 'utf8'), 'one');
  assert.deepEqual((await readdir(dir)).sort(), ['..data', now, 'a'].sort(), 'old versions and b are gone');
});

test('a path that leaves the volume is refused before anything is written', async () => {
  const dir = await fresh();
  await assert.rejects(writeVolumeAtomically(dir, [{ path: '../escape', data: 'x', mode: 0o644 }]), /leaves the volume/);
  assert.deepEqual(await readdir(dir), []);
});
