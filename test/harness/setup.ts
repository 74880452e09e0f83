// Installs what the tests run on: Debian's etcd, docker-registry, htpasswd, QEMU, and podman + runc +
// busybox-static for sidecar containers (apt), and Kubernetes'
// kube-apiserver, kubectl and kube-controller-manager built from the pinned module. Idempotent, and instant when all is there.
// As a script (`npm run setup:test`) it runs ensureTestDependencies() and prints what it did.
import { accessSync, constants, readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { runChecked } from './exec.ts';
import { ensureKubernetesBinaries } from './k8s-build.ts';

export { kubernetesVersion } from './k8s-build.ts';

/** Absolute paths of every binary the harness runs. */
export interface TestBinaries {
  kubeApiserver: string;
  kubectl: string;
  /** Runs the CSR controllers in TLS bootstrap tests (test/harness/controller-manager.ts). */
  kubeControllerManager: string;
  etcd: string;
  registry: string;
  htpasswd: string;
  /** QEMU for the host's architecture: what the node's hypervisor probe looks for. */
  qemu: string;
  /** podman (its Docker-compatible API is the sidecar engine of the tests) and the OCI runtime it runs. */
  podman: string;
  runc: string;
  /** A statically linked busybox: the one binary of the test image for sidecar containers. */
  busybox: string;
  /** The Kubernetes version kube-apiserver and kubectl were built at, e.g. "v1.36.3". */
  kubernetesVersion: string;
}

// Binary -> the Debian package that ships it.
const DEBIAN = {
  etcd: { path: '/usr/bin/etcd', pkg: 'etcd-server' },
  registry: { path: '/usr/bin/docker-registry', pkg: 'docker-registry' },
  htpasswd: { path: '/usr/bin/htpasswd', pkg: 'apache2-utils' },
  qemu:
    process.arch === 'arm64'
      ? { path: '/usr/bin/qemu-system-aarch64', pkg: 'qemu-system-arm' }
      : { path: '/usr/bin/qemu-system-x86_64', pkg: 'qemu-system-x86' },
  podman: { path: '/usr/bin/podman', pkg: 'podman' },
  runc: { path: '/usr/sbin/runc', pkg: 'runc' },
  // Debian's `busybox` package also ships /bin/busybox, linked dynamically; busybox-static replaces it.
  busybox: { path: '/bin/busybox', pkg: 'busybox-static', isStatic: true },
} as const;

export async function ensureTestDependencies(log: (msg: string) => void = () => {}): Promise<TestBinaries> {
  const missing = Object.values(DEBIAN).filter((b) => !isExecutable(b.path) || ('isStatic' in b && !isStaticElf(b.path)));
  if (missing.length > 0) await aptInstall(missing.map((b) => b.pkg), log);
  else log(`Debian packages present: ${Object.values(DEBIAN).map((b) => b.pkg).join(', ')}`);
  for (const b of Object.values(DEBIAN)) {
    if (!isExecutable(b.path)) throw new Error(`${b.pkg} is installed but ${b.path} is still missing`);
  }
  const k8s = await ensureKubernetesBinaries(log);
  return {
    ...k8s,
    etcd: DEBIAN.etcd.path,
    registry: DEBIAN.registry.path,
    htpasswd: DEBIAN.htpasswd.path,
    qemu: DEBIAN.qemu.path,
    podman: DEBIAN.podman.path,
    runc: DEBIAN.runc.path,
    busybox: DEBIAN.busybox.path,
  };
}

async function aptInstall(packages: string[], log: (msg: string) => void): Promise<void> {
  // Not root (a developer's machine): go through sudo, which may prompt on the terminal.
  const sudo = process.getuid?.() === 0 ? [] : ['sudo'];
  const run = (args: string[]): Promise<unknown> => {
    const [cmd, ...rest] = [...sudo, ...args] as [string, ...string[]];
    return runChecked(cmd, rest, { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  };
  log(`apt-get update`);
  await run(['apt-get', 'update']);
  log(`apt-get install ${packages.join(' ')}`);
  await run(['apt-get', 'install', '-y', '--no-install-recommends', ...packages]);
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** An ELF executable without a PT_INTERP program header (no dynamic loader): it runs in an empty rootfs. */
function isStaticElf(path: string): boolean {
  try {
    const elf = readFileSync(path);
    if (elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) return false; // 64-bit little-endian only
    const phoff = Number(elf.readBigUInt64LE(0x20));
    const phentsize = elf.readUInt16LE(0x36);
    const phnum = elf.readUInt16LE(0x38);
    for (let i = 0; i < phnum; i++) if (elf.readUInt32LE(phoff + i * phentsize) === 3) return false; // PT_INTERP
    return true;
  } catch {
    return false;
  }
}

// Run as a script: install, then say where everything is.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const started = Date.now();
  const log = (msg: string): void => console.log(`setup:test: ${msg}`);
  try {
    const bins = await ensureTestDependencies(log);
    for (const [name, value] of Object.entries(bins)) log(`${name.padEnd(17)} ${value}`);
    log(`ready in ${Date.now() - started} ms`);
  } catch (err) {
    console.error(`setup:test failed: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  }
}
