// Builds the Linux test guest from Debian packages, without root, into ~/.cache/vmlet/guest-<key>:
// Debian's cloud kernel, a tiny initramfs (busybox + the virtio modules) and an ext4 root disk (busybox,
// the host's Node with the libraries it links, and the agent). `node --import tsx test/guest/build.ts`
// builds it and prints where it is; tests call ensureTestGuest().
//
// Why an initramfs that switch_roots into ext4 rather than one big initramfs: Node alone is ~100 MB, and
// the kernel would copy (or decompress) all of it into RAM on every boot under TCG before running init;
// from an ext4 disk it pages in only what Node touches. The initramfs stays ~3 MB (uncompressed, so no
// decompression either) because the cloud kernel has ext4 built in and only virtio as modules.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { agentSourceHash } from '../../src/agent/bundle.ts';
import { runChecked, runCommand } from '../harness/exec.ts';
import { cacheRoot } from '../harness/k8s-build.ts';
import { assembleGuest, BUSYBOX_PACKAGE, KERNEL_META_PACKAGE } from './assemble.ts';
import { SSH_PACKAGES } from './ssh-server.ts';

export interface TestGuest {
  /** The cache dir holding everything below. */
  dir: string;
  /** Debian's cloud kernel: its ELF vmlinux, started at the PVH entry point (else the bzImage). */
  kernel: string;
  /** Uncompressed newc initramfs: busybox, the modules, and /init (initramfs-init.sh). */
  initrd: string;
  /** The ext4 root file system as a qcow2 image; boot an overlay on it, never the file itself. */
  rootDisk: string;
  rootDiskFormat: 'qcow2';
  /** Kernel command line the guest is meant to boot with (console on ttyS0). */
  cmdline: string;
  /** What went into the guest, and the sizes of what came out. */
  manifest: GuestManifest;
}

export interface GuestManifest {
  key: string;
  cmdline: string;
  inputs: GuestInputs;
  /** 'pvh': kernel is the unpacked vmlinux; 'bzimage': no unpacker for this kernel's compression. */
  kernelFormat: 'pvh' | 'bzimage';
  modules: string[];
  sizes: { kernel: number; initrd: number; rootDisk: number; rootFsUsed: number };
  buildSeconds: number;
}

export interface GuestInputs {
  kernelPackage: string;
  kernelVersion: string;
  busyboxVersion: string;
  /** dropbear-bin and its libraries, as name=version (ssh-server.ts). */
  sshPackages: string[];
  node: { path: string; version: string; size: number; mtimeMs: number };
  nodeLibs: { path: string; size: number; mtimeMs: number }[];
  /** sha256 of this directory's files that define the guest: editing any of them rebuilds it. */
  sources: string;
}

const HERE = dirname(fileURLToPath(import.meta.url));
const SOURCES = ['build.ts', 'assemble.ts', 'cpio.ts', 'kmod.ts', 'vmlinux.ts', 'initramfs-init.sh', 'rootfs-init.sh', 'ssh-server.ts'];
// quiet: every console byte is a trapped UART write under TCG. panic=-1: a panicking guest reboots at
// once, which -no-reboot turns into a QEMU exit rather than a hang. tsc=reliable / no_timer_check: skip
// clocksource and timer checks that TCG's unsteady timing can only fail slowly. cryptomgr.notests skips
// the crypto self-tests (~0.3 s under TCG) and mitigations=off most of the boot-time code patching for
// CPU bugs that a throwaway test VM does not care about.
export const GUEST_CMDLINE = 'console=ttyS0 quiet panic=-1 tsc=reliable no_timer_check cryptomgr.notests mitigations=off';

/** The cached guest for the current inputs, built first if there is none (10-20 s here when cold). */
export async function ensureTestGuest(log: (msg: string) => void = () => {}): Promise<TestGuest> {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new Error(`the test guest is built for x86_64 Linux hosts only (this is ${process.platform}/${process.arch})`);
  }
  const inputs = await resolveInputs();
  const key = createHash('sha256').update(JSON.stringify(inputs)).digest('hex').slice(0, 16);
  const dir = join(cacheRoot(), `guest-${key}`);
  const cached = await readGuest(dir);
  if (cached) {
    // The manifest's mtime says when the guest was last used; pruneCache() goes by it.
    const now = new Date();
    await utimes(join(dir, 'manifest.json'), now, now).catch(() => {});
    log(`test guest ${key} already built in ${dir}`);
    return cached;
  }
  await ensureHostTools(log);
  await mkdir(cacheRoot(), { recursive: true });
  // Built next to its final place and renamed in one step: a killed build leaves no half guest, and of
  // two concurrent builds the second rename fails harmlessly onto the first one's result.
  const tmp = await mkdtemp(join(cacheRoot(), `guest-${key}.tmp-`));
  try {
    const started = Date.now();
    const made = await assembleGuest(tmp, inputs, log);
    const manifest: GuestManifest = { key, cmdline: GUEST_CMDLINE, inputs, ...made, buildSeconds: (Date.now() - started) / 1000 };
    await writeFile(join(tmp, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    await rename(tmp, dir).catch(async (err: unknown) => {
      if (!(await readGuest(dir))) throw err;
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  const built = await readGuest(dir);
  if (!built) throw new Error(`built the test guest, but ${dir} has no manifest`);
  await pruneCache(dir);
  log(`test guest ${key} built in ${built.manifest.buildSeconds.toFixed(1)} s: ${dir}`);
  return built;
}

/** The guest already built in dir (a TestGuest.dir); throws if there is none. */
export async function loadTestGuest(dir: string): Promise<TestGuest> {
  const guest = await readGuest(dir);
  if (!guest) throw new Error(`${dir} holds no test guest (no manifest.json); see test/guest/build.ts`);
  return guest;
}

async function readGuest(dir: string): Promise<TestGuest | undefined> {
  let manifest: GuestManifest;
  try {
    manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as GuestManifest;
  } catch {
    return undefined;
  }
  return {
    dir,
    kernel: join(dir, manifest.kernelFormat === 'pvh' ? 'vmlinux' : 'vmlinuz'),
    initrd: join(dir, 'initrd.cpio'),
    rootDisk: join(dir, 'root.qcow2'),
    rootDiskFormat: 'qcow2',
    cmdline: manifest.cmdline,
    manifest,
  };
}

/**
 * Every edit of this directory makes a new ~160 MB guest, so after a build the others go once unused
 * for an hour (a test that boots one of them has QEMU holding its files open anyway), and so do tmp
 * dirs of builds that were killed (no build takes an hour).
 */
async function pruneCache(keep: string): Promise<void> {
  for (const name of await readdir(cacheRoot())) {
    const path = join(cacheRoot(), name);
    if (!name.startsWith('guest-') || path === keep) continue;
    const used = await stat(join(path, 'manifest.json')).catch(() => stat(path)).catch(() => undefined);
    if (used && Date.now() - used.mtimeMs > 60 * 60_000) await rm(path, { recursive: true, force: true });
  }
}

/** Everything the guest is made of, cheaply: versions apt would download, and the host's Node. */
async function resolveInputs(): Promise<GuestInputs> {
  // One apt-cache call (each one re-reads every package list where apt keeps no binary cache, as in
  // Docker images: ~1.5 s). The meta package's Depends names the current ABI's image package and its
  // exact version, e.g. "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)".
  const show = await runChecked('apt-cache', ['show', '--no-all-versions', KERNEL_META_PACKAGE, BUSYBOX_PACKAGE, ...SSH_PACKAGES]).catch((err: Error) => {
    throw new Error(`${err.message}\n(the test guest is made of Debian 12 packages; run apt-get update)`);
  });
  const fields = (pkg: string): string => show.stdout.split(/\n\s*\n/).find((b) => b.startsWith(`Package: ${pkg}\n`)) ?? '';
  const image = /^Depends:.*?\b(linux-image-\S+) \(= (\S+)\)/m.exec(fields(KERNEL_META_PACKAGE));
  const busyboxVersion = /^Version: (\S+)/m.exec(fields(BUSYBOX_PACKAGE))?.[1];
  const sshPackages = SSH_PACKAGES.map((p) => `${p}=${/^Version: (\S+)/m.exec(fields(p))?.[1] ?? ''}`);
  if (!image?.[1] || !image[2] || !busyboxVersion || sshPackages.some((p) => p.endsWith('='))) {
    throw new Error(`apt-cache show ${KERNEL_META_PACKAGE} ${BUSYBOX_PACKAGE} did not name an image package and versions`);
  }
  const node = process.execPath;
  const nodeStat = await stat(node);
  const sources = createHash('sha256');
  for (const file of SOURCES) sources.update(`${file}\0`).update(await readFile(join(HERE, file)));
  // The agent in the guest is the real one (src/agent/), by the hash of its sources.
  sources.update(`agent\0${await agentSourceHash()}`);
  return {
    kernelPackage: image[1],
    kernelVersion: image[2],
    busyboxVersion,
    sshPackages,
    node: { path: node, version: process.version, size: nodeStat.size, mtimeMs: nodeStat.mtimeMs },
    nodeLibs: await Promise.all(
      (await sharedLibraries(node)).map(async (path) => {
        const s = await stat(path);
        return { path, size: s.size, mtimeMs: s.mtimeMs };
      }),
    ),
    sources: sources.digest('hex'),
  };
}

/** Absolute paths of the shared objects `ldd` says a binary loads, the dynamic loader included. */
async function sharedLibraries(binary: string): Promise<string[]> {
  const { stdout, code } = await runCommand('ldd', [binary]);
  if (code !== 0) return []; // "not a dynamic executable": a static Node needs nothing.
  return [...stdout.matchAll(/^\s*(?:\S+\s+=>\s+)?(\/\S+)\s+\(0x/gm)].map((m) => m[1]!);
}

async function ensureHostTools(log: (msg: string) => void): Promise<void> {
  const tools = { '/usr/sbin/mke2fs': 'e2fsprogs', '/usr/bin/qemu-img': 'qemu-utils', '/usr/bin/dpkg-deb': 'dpkg' };
  const missing = Object.entries(tools).filter(([path]) => !existsSync(path)).map(([, pkg]) => pkg);
  if (missing.length === 0) return;
  log(`apt-get install ${missing.join(' ')}`);
  const sudo = process.getuid?.() === 0 ? [] : ['sudo'];
  const [cmd, ...args] = [...sudo, 'apt-get', 'install', '-y', '--no-install-recommends', ...missing] as [string, ...string[]];
  await runChecked(cmd, args, { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
}

// Run as a script: build (or find) the guest and say where it is and what it holds.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const started = Date.now();
  try {
    const guest = await ensureTestGuest((msg) => console.log(`guest: ${msg}`));
    const mib = (n: number): string => `${(n / 1024 / 1024).toFixed(1)} MiB`;
    const { sizes } = guest.manifest;
    console.log(`guest: kernel ${mib(sizes.kernel)}, initrd ${mib(sizes.initrd)}, root disk ${mib(sizes.rootDisk)} ` +
      `(${mib(sizes.rootFsUsed)} of files), ready in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    console.log(JSON.stringify({ dir: guest.dir, kernel: guest.kernel, initrd: guest.initrd, rootDisk: guest.rootDisk, cmdline: guest.cmdline }, null, 2));
  } catch (err) {
    console.error(`guest: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  }
}
