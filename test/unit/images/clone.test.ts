// cloneDisk with the real qemu-img on this machine's filesystem (ext4 here, so no reflinks: the overlay
// path is what runs; on btrfs/xfs/APFS the reflink path would).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { CloneError, cloneDisk, qcow2Overlay } from '../../../src/images/store/clone.ts';

const run = promisify(execFile);

test('a disk clone is a reflink where the filesystem can, else a qcow2 overlay backed by the image disk', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlet-clone-'));
  const base = path.join(dir, 'disk.img');
  const data = randomBytes(1024 * 1024);
  await writeFile(base, data);
  const clone = await cloneDisk(base, path.join(dir, 'vm.disk'));
  if (clone.kind === 'reflink') {
    assert.deepEqual(await readFile(clone.path), data);
  } else {
    const { stdout } = await run('qemu-img', ['info', '--output=json', clone.path]);
    const info = JSON.parse(stdout) as { format: string; 'backing-filename': string; 'virtual-size': number };
    assert.equal(info.format, 'qcow2');
    assert.equal(info['backing-filename'], base);
    assert.equal(info['virtual-size'], data.length);
    // What the VM would read through the overlay is the image's disk.
    const raw = path.join(dir, 'readback.img');
    await run('qemu-img', ['convert', '-O', 'raw', clone.path, raw]);
    assert.deepEqual(await readFile(raw), data);
  }
  if (clone.kind === 'qcow2-overlay') {
    await assert.rejects(cloneDisk(base, path.join(dir, 'vz.disk'), { allowOverlay: false }), (e: Error) => e instanceof CloneError && /cannot clone files/.test(e.message));
  }
  await assert.rejects(cloneDisk(path.join(dir, 'missing.img'), path.join(dir, 'x.disk')), CloneError);
});

test('the qcow2 overlay vmlet writes is byte for byte the one qemu-img creates', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlet-qcow2-'));
  for (const size of [1024 * 1024, 3 * 2 ** 30 + 12_345, 10 * 2 ** 30, 4 * 2 ** 40]) {
    const base = path.join(dir, `base-${size}.img`);
    await writeFile(base, '');
    await run('truncate', ['-s', String(size), base]);
    const theirs = path.join(dir, `qemu-img-${size}.qcow2`);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, theirs]);
    assert.ok((await readFile(theirs)).equals(qcow2Overlay(base, size)), `overlay of a ${size}-byte disk`);
  }
  const clone = await cloneDisk(path.join(dir, `base-${2 ** 20}.img`), path.join(dir, 'vm.disk'));
  if (clone.kind === 'qcow2-overlay') await run('qemu-img', ['check', clone.path]);
});
