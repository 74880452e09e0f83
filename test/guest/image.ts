// The test guest as a vmlet image: the Linux flavour of Tart's format (docs/IMAGE-FORMAT.md) with the
// guest's kernel and initrd as vmlet layers and its command line in the VM config. Tests and the demo
// import it into a store (`vmlet image import`) and push it to the local registry, so a VM that boots in a
// test came through the same pull → clone → boot path as a user's image.
import { existsSync } from 'node:fs';
import { rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runChecked } from '../harness/exec.ts';
import type { TestGuest } from './build.ts';

export interface GuestImageSource {
  /** Raw (sparse) root disk, converted once from the guest's qcow2 and kept next to it. */
  disk: string;
  /** Tart VMConfig with os linux and the kernel command line. */
  config: string;
  kernel: string;
  initrd: string;
}

export const GUEST_MEMORY_MIB = 512;

/** The files `vmlet image import NAME --disk --config --kernel --initrd` takes, made once per guest. */
export async function guestImageSource(guest: TestGuest): Promise<GuestImageSource> {
  const disk = join(guest.dir, 'root.img');
  if (!existsSync(disk)) {
    // qemu-img writes a sparse raw file: the 1 GiB file system takes ~100 MiB of blocks.
    const tmp = `${disk}.tmp-${process.pid}`;
    try {
      await runChecked('qemu-img', ['convert', '-q', '-f', 'qcow2', '-O', 'raw', guest.rootDisk, tmp]);
      await rename(tmp, disk);
    } finally {
      await rm(tmp, { force: true });
    }
  }
  const config = join(guest.dir, 'vm-config.json');
  const vmConfig = {
    version: 1,
    os: 'linux',
    arch: 'amd64',
    cpuCountMin: 1,
    cpuCount: 1,
    memorySizeMin: 256 * 1024 * 1024,
    memorySize: GUEST_MEMORY_MIB * 1024 * 1024,
    macAddress: '52:54:00:76:6d:6c',
    display: { width: 1024, height: 768 },
    kernelCommandLine: guest.cmdline,
  };
  await writeFile(config, `${JSON.stringify(vmConfig, null, 2)}\n`);
  return { disk, config, kernel: guest.kernel, initrd: guest.initrd };
}

/** `vmlet image import` arguments for the test guest. */
export function importArgs(name: string, src: GuestImageSource): string[] {
  return ['image', 'import', name, `--disk=${src.disk}`, `--config=${src.config}`, `--kernel=${src.kernel}`, `--initrd=${src.initrd}`];
}
