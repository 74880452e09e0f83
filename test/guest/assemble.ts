// Assembles the test guest's files from Debian packages, all without root: apt-get download, dpkg-deb -x,
// an initramfs written as a cpio archive by cpio.ts, and an ext4 root file system made by mke2fs -d from
// a staged directory, converted to qcow2. build.ts decides when to run this and caches the result.
//
// Node in the guest is the host's own binary plus the libraries ldd lists (libc, libstdc++, libm,
// libgcc_s: ~4 MB): one file copy, the same Node version as the host, no package to resolve. Debian's
// nodejs package would be Node 18 spread over a dozen packages (libnode108, libicu72, libuv1, libssl3...)
// of about the same size (~100 MB), so it would buy nothing.
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureAgentBundle } from '../../src/agent/bundle.ts';
import { runChecked } from '../harness/exec.ts';
import type { GuestInputs, GuestManifest } from './build.ts';
import { newcArchive, type CpioEntry } from './cpio.ts';
import { findModules, moduleLoadOrder } from './kmod.ts';
import { extractVmlinux } from './vmlinux.ts';
import { stageSshServer } from './ssh-server.ts';

export type AssembledGuest = Pick<GuestManifest, 'kernelFormat' | 'modules' | 'sizes'>;

const HERE = dirname(fileURLToPath(import.meta.url));
/** The meta package whose dependency names the current cloud kernel image package. */
export const KERNEL_META_PACKAGE = 'linux-image-cloud-amd64';
export const BUSYBOX_PACKAGE = 'busybox-static';
// What the guest needs as modules: the PCI transport, the root disk, the agent channel, a NIC (eth0 when
// QEMU has one) and virtiofs for shared volumes later. Their dependencies are added by moduleLoadOrder.
// button + evdev turn the ACPI power button (QEMU's system_powerdown) into an input event for acpid.
const MODULES = ['virtio_pci', 'virtio_blk', 'virtio_console', 'virtio_net', 'virtiofs', 'button', 'evdev'];
const ROOT_DISK_BYTES = 1024 * 1024 * 1024;

/** Downloads, unpacks and lays out the guest's files in `out` (vmlinux or vmlinuz, initrd.cpio, root.qcow2). */
export async function assembleGuest(out: string, inputs: GuestInputs, log: (msg: string) => void): Promise<AssembledGuest> {
  const work = join(out, 'work');
  const debs = join(work, 'debs');
  await mkdir(debs, { recursive: true });
  log(`apt-get download ${inputs.kernelPackage}=${inputs.kernelVersion} ${BUSYBOX_PACKAGE}=${inputs.busyboxVersion}`);
  // As root, apt would try to drop to its _apt user, which cannot write here, and warn about it.
  const sandbox = process.getuid?.() === 0 ? ['-o', 'APT::Sandbox::User=root'] : [];
  const wanted = [`${inputs.kernelPackage}=${inputs.kernelVersion}`, `${BUSYBOX_PACKAGE}=${inputs.busyboxVersion}`];
  await runChecked('apt-get', [...sandbox, 'download', ...wanted], { cwd: debs, timeoutMs: 10 * 60_000 }).catch((err: Error) => {
    // The usual cause: package lists older than the mirror, which has dropped the version they name.
    throw new Error(`${err.message}\n(if the mirror no longer has these versions, run apt-get update)`);
  });
  const kernelPkg = join(work, 'kernel');
  const busyboxPkg = join(work, 'busybox');
  for (const deb of await readdir(debs)) {
    const into = deb.startsWith('linux-image-') ? kernelPkg : busyboxPkg;
    await runChecked('dpkg-deb', ['-x', join(debs, deb), into]);
  }
  const [vmlinuz] = (await readdir(join(kernelPkg, 'boot'))).filter((f) => f.startsWith('vmlinuz-'));
  const [kernelRelease] = await readdir(join(kernelPkg, 'lib', 'modules'));
  if (!vmlinuz || !kernelRelease) throw new Error(`${inputs.kernelPackage} has no /boot/vmlinuz-* or /lib/modules/*`);
  const vmlinux = extractVmlinux(await readFile(join(kernelPkg, 'boot', vmlinuz)));
  if (vmlinux) await writeFile(join(out, 'vmlinux'), vmlinux);
  else await copyFile(join(kernelPkg, 'boot', vmlinuz), join(out, 'vmlinuz'));

  log(`initramfs: busybox and modules ${MODULES.join(', ')} (with dependencies)`);
  const busybox = join(busyboxPkg, 'bin', 'busybox');
  const modules = await writeInitramfs(join(out, 'initrd.cpio'), busybox, join(kernelPkg, 'lib', 'modules', kernelRelease, 'kernel'));

  log('root file system: busybox, Node and its libraries, the agent');
  const root = join(work, 'root');
  let rootFsUsed = await stageRootFs(root, busybox, inputs);
  log(`root file system: dropbear (${inputs.sshPackages.join(' ')}), users admin and root`);
  rootFsUsed += await stageSshServer(root, join(work, 'ssh'), inputs.sshPackages, busybox);
  const raw = join(work, 'root.ext4');
  // lazy_*_init=0: have mke2fs zero the inode tables and journal now (qemu-img drops the zeros), rather
  // than the guest kernel's ext4lazyinit doing it in the background of every boot.
  await runChecked('mke2fs', [
    '-q', '-F', '-t', 'ext4', '-L', 'vmlet-root', '-d', root,
    '-E', 'root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0', raw, `${ROOT_DISK_BYTES / 1024}k`,
  ]);
  await runChecked('qemu-img', ['convert', '-O', 'qcow2', raw, join(out, 'root.qcow2')]);

  const kernelFile = join(out, vmlinux ? 'vmlinux' : 'vmlinuz');
  const sizes = {
    kernel: (await stat(kernelFile)).size,
    initrd: (await stat(join(out, 'initrd.cpio'))).size,
    rootDisk: (await stat(join(out, 'root.qcow2'))).size,
    rootFsUsed,
  };
  await rm(work, { recursive: true, force: true });
  return { kernelFormat: vmlinux ? 'pvh' : 'bzimage', modules, sizes };
}

/** Writes the initramfs: busybox, /init, the modules and the order to load them in. Returns that order. */
async function writeInitramfs(file: string, busybox: string, modulesDir: string): Promise<string[]> {
  const available = await findModules(modulesDir);
  const modules = await moduleLoadOrder(MODULES, available);
  const entries: CpioEntry[] = ['bin', 'dev', 'etc', 'lib', 'lib/modules', 'newroot', 'proc', 'sys'].map((path) => ({ type: 'dir', path }));
  // The kernel opens /dev/console for init's stdin/stdout/stderr before anything can mount devtmpfs.
  entries.push({ type: 'chardev', path: 'dev/console', major: 5, minor: 1 });
  entries.push({ type: 'file', path: 'bin/busybox', data: await readFile(busybox), mode: 0o755 });
  entries.push({ type: 'file', path: 'init', data: await readFile(join(HERE, 'initramfs-init.sh')), mode: 0o755 });
  entries.push({ type: 'file', path: 'etc/modules.order', data: Buffer.from(`${modules.join('\n')}\n`) });
  for (const m of modules) entries.push({ type: 'file', path: `lib/modules/${m}.ko`, data: await readFile(available.get(m)!) });
  await writeFile(file, newcArchive(entries));
  return modules;
}

/** Lays out the root file system in `root` for mke2fs -d; returns the bytes of file content. */
async function stageRootFs(root: string, busybox: string, inputs: GuestInputs): Promise<number> {
  let bytes = 0;
  const put = async (path: string, data: Buffer | string, mode = 0o644): Promise<void> => {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), data, { mode });
    await chmod(join(root, path), mode); // writeFile's mode is filtered by the umask
    bytes += Buffer.byteLength(data);
  };
  for (const d of ['dev', 'proc', 'sys', 'run', 'tmp', 'root', 'etc', 'usr/lib/vmlet']) await mkdir(join(root, d), { recursive: true });
  await put('bin/busybox', await readFile(busybox), 0o755);
  await put('sbin/init', await readFile(join(HERE, 'rootfs-init.sh')), 0o755);
  // Every applet as a symlink, where a Debian system would have the command (sh, mount, ip, poweroff...).
  const applets = (await runChecked(busybox, ['--list-full'])).stdout.split('\n').filter(Boolean);
  for (const applet of applets) {
    if (existsSync(join(root, applet))) continue; // bin/busybox itself, and our sbin/init
    await mkdir(dirname(join(root, applet)), { recursive: true });
    await symlink('/bin/busybox', join(root, applet));
  }
  await put('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n');
  await put('etc/group', 'root:x:0:\n');
  await put('etc/hosts', '127.0.0.1 localhost\n::1 localhost\n');
  await put('etc/resolv.conf', 'nameserver 10.0.2.3\n'); // QEMU user networking's DNS
  // The host's Node, with each library at the path ldd found it, so the dynamic loader needs no cache.
  await put('usr/bin/node', await readFile(inputs.node.path), 0o755);
  for (const lib of inputs.nodeLibs) await put(lib.path.slice(1), await readFile(lib.path), 0o755);
  await put('usr/lib/vmlet/agent.cjs', await compileAgent());
  return bytes;
}

/**
 * The real vmlet-agent: src/agent/bundle.ts bundles it into one CommonJS file (a .cjs entry starts
 * ~0.4 s sooner than an ES module under TCG: Node skips its ESM loader).
 */
async function compileAgent(): Promise<Buffer> {
  return readFile(await ensureAgentBundle());
}
