// A VM's own copy of an image's disk, made in O(1) where the filesystem can: a copy-on-write clone
// (FICLONE on btrfs/xfs, clonefile on APFS, through copyFile's COPYFILE_FICLONE_FORCE), else — for QEMU —
// a qcow2 overlay whose backing file is the image's disk, which must then stay untouched while the VM
// lives (the image store's in-use mark sees to that).
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { copyFile, rm } from 'node:fs/promises';
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
    await run(opts.qemuImg ?? 'qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, target], { timeout: 30_000 });
  } catch (err) {
    await rm(target, { force: true });
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    const why = e.code === 'ENOENT' ? 'qemu-img is not installed (apt-get install qemu-utils)' : String(e.stderr || e.message).trim().split('\n')[0];
    throw new CloneError(`cannot create a qcow2 overlay on ${base}: ${why}`);
  }
  return { path: target, kind: 'qcow2-overlay', format: 'qcow2', backing: base };
}
