// A VM's own copy of an image's disk, made in O(1) where the filesystem can: a copy-on-write clone
// (FICLONE on btrfs/xfs, clonefile on APFS, through copyFile's COPYFILE_FICLONE_FORCE), else — for QEMU —
// a qcow2 overlay whose backing file is the image's disk, which must then stay untouched while the VM
// lives (the image store's in-use mark sees to that).
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { copyFile, rm, stat, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface DiskClone {
  path: string;
  /** 'reflink': a full, independent file sharing blocks; 'qcow2-overlay': reads fall through to `backing`. */
  kind: 'reflink' | 'qcow2-overlay';
  format: 'raw' | 'qcow2';
  backing?: string;
}

export class CloneError extends Error {
  override name = 'CloneError';
}

/**
 * Clones `base` (a raw disk) to `target`. `allowOverlay` (default true) permits the qcow2 fallback; a
 * driver that cannot read qcow2 (Virtualization.framework) passes false and gets a clear error instead.
 */
export async function cloneDisk(base: string, target: string, opts: { allowOverlay?: boolean; qemuImg?: string } = {}): Promise<DiskClone> {
  try {
    await copyFile(base, target, constants.COPYFILE_FICLONE_FORCE);
    return { path: target, kind: 'reflink', format: 'raw' };
  } catch (err) {
    await rm(target, { force: true });
    const code = (err as NodeJS.ErrnoException).code;
    // Not supported by this filesystem (or across filesystems): fall back. Anything else is a real error.
    if (!['ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EINVAL', 'ENOSYS'].includes(code ?? '')) {
      throw new CloneError(`cannot clone disk ${base}: ${(err as Error).message}`);
    }
  }
  if (opts.allowOverlay === false) {
    throw new CloneError(`the filesystem of ${base} cannot clone files (no FICLONE/clonefile): put the image store on APFS, btrfs or xfs`);
  }
  try {
    // Written here, as qemu-img would write it: spawning qemu-img took 25-120 ms of every pod start.
    const { size } = await stat(base);
    if (size <= MAX_INLINE_OVERLAY_BYTES && !opts.qemuImg) await writeFile(target, qcow2Overlay(base, size), { flag: 'wx' });
    else await run(opts.qemuImg ?? 'qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, target], { timeout: 30_000 });
  } catch (err) {
    await rm(target, { force: true });
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    const why = e.code === 'ENOENT' ? 'qemu-img is not installed (apt-get install qemu-utils)' : String(e.stderr || e.message).trim().split('\n')[0];
    throw new CloneError(`cannot create a qcow2 overlay on ${base}: ${why}`);
  }
  return { path: target, kind: 'qcow2-overlay', format: 'qcow2', backing: base };
}

const CLUSTER_BITS = 16;
const CLUSTER = 1 << CLUSTER_BITS;
/** One L1 cluster maps 8192 × 512 MiB: larger disks are left to qemu-img. */
const MAX_INLINE_OVERLAY_BYTES = 4 * 2 ** 40;
/** The feature name table qemu-img (7.x) writes: [type, bit, name]. */
const FEATURE_NAMES: Array<[number, number, string]> = [
  [0, 0, 'dirty bit'], [0, 1, 'corrupt bit'], [0, 2, 'external data file'], [0, 3, 'compression type'],
  [0, 4, 'extended L2 entries'], [1, 0, 'lazy refcounts'], [2, 0, 'bitmaps'], [2, 1, 'raw external data'],
];

/**
 * An empty qcow2 (version 3) image of `size` bytes whose backing file is the raw disk `base`, byte for byte
 * what `qemu-img create -f qcow2 -F raw -b BASE` writes: header and extensions in cluster 0, the refcount
 * table in cluster 1, its one refcount block in cluster 2 (clusters 0-3 in use), the L1 table, all zeros,
 * in cluster 3. test/unit/images/clone.test.ts compares it with qemu-img's own.
 */
export function qcow2Overlay(base: string, baseSize: number): Buffer {
  const size = Math.ceil(baseSize / 512) * 512; // qemu's virtual size is whole sectors
  const backing = Buffer.from(base);
  const l1Entries = Math.ceil(size / (CLUSTER * (CLUSTER / 8)));
  const out = Buffer.alloc(3 * CLUSTER + l1Entries * 8);
  // Header extensions after the 112-byte header: backing format, feature names, end.
  const ext: Buffer[] = [];
  const extension = (type: number, data: Buffer) => {
    const e = Buffer.alloc(8 + Math.ceil(data.length / 8) * 8);
    e.writeUInt32BE(type, 0);
    e.writeUInt32BE(data.length, 4);
    data.copy(e, 8);
    ext.push(e);
  };
  extension(0xe2792aca, Buffer.from('raw'));
  const names = Buffer.alloc(FEATURE_NAMES.length * 48);
  FEATURE_NAMES.forEach(([type, bit, name], i) => {
    names[i * 48] = type;
    names[i * 48 + 1] = bit;
    names.write(name, i * 48 + 2, 'latin1');
  });
  extension(0x6803f857, names);
  ext.push(Buffer.alloc(8));
  const backingOffset = 112 + ext.reduce((n, e) => n + e.length, 0);
  if (backingOffset + backing.length > CLUSTER || backing.length > 1023) throw new CloneError(`backing file path too long for a qcow2 header: ${base}`);
  out.write('QFI\xfb', 0, 'latin1');
  out.writeUInt32BE(3, 4); // version
  out.writeBigUInt64BE(BigInt(backingOffset), 8);
  out.writeUInt32BE(backing.length, 16);
  out.writeUInt32BE(CLUSTER_BITS, 20);
  out.writeBigUInt64BE(BigInt(size), 24);
  out.writeUInt32BE(0, 32); // no encryption
  out.writeUInt32BE(l1Entries, 36);
  out.writeBigUInt64BE(BigInt(3 * CLUSTER), 40); // L1 table
  out.writeBigUInt64BE(BigInt(CLUSTER), 48); // refcount table
  out.writeUInt32BE(1, 56); // refcount table clusters
  // 60: no snapshots; 72-96: no incompatible, compatible or autoclear features.
  out.writeUInt32BE(4, 96); // refcount_order: 16-bit refcounts
  out.writeUInt32BE(112, 100); // header length; 104: compression type zlib
  let at = 112;
  for (const e of ext) at += e.copy(out, at);
  backing.copy(out, backingOffset);
  out.writeBigUInt64BE(BigInt(2 * CLUSTER), CLUSTER); // the refcount table's one block
  for (let c = 0; c < 4; c++) out.writeUInt16BE(1, 2 * CLUSTER + c * 2); // header, refcount table and block, L1
  return out;
}
