// Builds Kubernetes' own kube-apiserver, kubectl and kube-controller-manager from the k8s.io/kubernetes
// version pinned in tools/k8s/go.mod, into a per-version cache (~/.cache/vmlet/k8s-<version>/bin) shared
// by every checkout. A cache that lacks one of them (made before it was added) builds just the missing ones.
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { logTail, spawnTracked, stopProcess } from './processes.ts';
import { tryDirLock } from '../../src/host/dir-lock.ts';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const K8S_TOOLS_DIR = join(REPO_ROOT, 'tools', 'k8s');

/** The k8s.io/kubernetes version (e.g. "v1.36.3") that tools/k8s/go.mod pins. */
export async function kubernetesVersion(goModPath = join(K8S_TOOLS_DIR, 'go.mod')): Promise<string> {
  const goMod = await readFile(goModPath, 'utf8');
  const match = /^\s*k8s\.io\/kubernetes\s+(v\d+\.\d+\.\d+\S*)/m.exec(goMod);
  if (!match?.[1]) throw new Error(`${goModPath} does not require k8s.io/kubernetes`);
  return match[1];
}

/** Root of vmlet's build cache; VMLET_CACHE_DIR overrides it. */
export function cacheRoot(): string {
  return process.env.VMLET_CACHE_DIR ?? join(homedir(), '.cache', 'vmlet');
}

export interface KubernetesBinaries {
  kubeApiserver: string;
  kubectl: string;
  /** Runs the certificates controllers (CSR approving, signing, cleaning) for TLS bootstrap tests. */
  kubeControllerManager: string;
  kubernetesVersion: string;
}

/** Binary name -> its package in k8s.io/kubernetes. */
const COMMANDS = {
  'kube-apiserver': 'k8s.io/kubernetes/cmd/kube-apiserver',
  kubectl: 'k8s.io/kubernetes/cmd/kubectl',
  'kube-controller-manager': 'k8s.io/kubernetes/cmd/kube-controller-manager',
} as const;
type Command = keyof typeof COMMANDS;

/** Where the binaries for a version live; keyed by version so a go.mod bump builds afresh. */
export function kubernetesBinaries(version: string): KubernetesBinaries {
  const bin = join(cacheRoot(), `k8s-${version}`, 'bin');
  return {
    kubeApiserver: join(bin, 'kube-apiserver'),
    kubectl: join(bin, 'kubectl'),
    kubeControllerManager: join(bin, 'kube-controller-manager'),
    kubernetesVersion: version,
  };
}

const PROGRESS_EVERY_MS = 30_000;

/**
 * Returns the cached binaries, building them first when missing (~10+ minutes on 2 cores). The build
 * writes into a scratch dir that is renamed into place, so a killed build never leaves a half binary,
 * and a lock dir keeps two test processes from compiling Kubernetes at the same time.
 */
export async function ensureKubernetesBinaries(log: (msg: string) => void): Promise<KubernetesBinaries> {
  const version = await kubernetesVersion();
  const bins = kubernetesBinaries(version);
  const binDir = join(cacheRoot(), `k8s-${version}`, 'bin');
  const missing = (): Command[] => (Object.keys(COMMANDS) as Command[]).filter((name) => !existsSync(join(binDir, name)));
  const built = (): boolean => missing().length === 0;
  if (built()) {
    log(`${Object.keys(COMMANDS).join(', ')} ${version} already built`);
    return bins;
  }
  const versionDir = join(cacheRoot(), `k8s-${version}`);
  await mkdir(versionDir, { recursive: true });
  const lock = join(versionDir, 'build.lock');
  while (!(await tryDirLock(lock))) {
    log(`waiting for another process building Kubernetes ${version} (${lock})`);
    await sleep(10_000);
    if (built()) return bins;
  }
  try {
    if (!built()) await build(version, versionDir, missing(), log);
  } finally {
    await rm(lock, { recursive: true, force: true });
  }
  return bins;
}

async function build(version: string, versionDir: string, commands: readonly Command[], log: (msg: string) => void): Promise<void> {
  const scratch = join(versionDir, `bin.partial-${process.pid}`);
  const bin = join(versionDir, 'bin');
  // Scratch dirs of killed builds; we hold the lock, so none of them is still being written.
  for (const entry of await readdir(versionDir)) {
    if (entry.startsWith('bin.partial-')) await rm(join(versionDir, entry), { recursive: true, force: true });
  }
  await mkdir(scratch, { recursive: true });
  await mkdir(bin, { recursive: true });
  const logFile = join(versionDir, 'build.log');
  await writeFile(logFile, '');
  const ldflags = [
    '-s -w',
    // Without these the binaries report v0.0.0-master, and kubectl/kubelets judge skew by this version.
    `-X k8s.io/component-base/version.gitVersion=${version}`,
    `-X k8s.io/client-go/pkg/version.gitVersion=${version}`,
  ].join(' ');
  const args = ['build', '-v', '-trimpath', '-ldflags', ldflags, '-o', `${scratch}/`];
  args.push(...commands.map((name) => COMMANDS[name]));
  const names = commands.join(', ');
  log(`building ${names} ${version} with ${goBinary()} (log: ${logFile}); this takes minutes`);
  const started = Date.now();
  const proc = spawnTracked('go build', goBinary(), args, { logFile, cwd: K8S_TOOLS_DIR });
  // `go build -v` names each package as it compiles it: counting them is a cheap progress meter.
  const progress = setInterval(() => {
    void readFile(logFile, 'utf8').then((text) => {
      const packages = text.split('\n').filter((l) => /^[\w.-]+(\/[\w.-]+)*$/.test(l)).length;
      log(`  ... ${packages} packages compiled, ${Math.round((Date.now() - started) / 1000)} s`);
    });
  }, PROGRESS_EVERY_MS);
  try {
    const { code, signal } = await proc.exited;
    if (code !== 0) throw new Error(`go build exited (code ${code}, signal ${signal})\n${await logTail(logFile)}`);
  } finally {
    clearInterval(progress);
    await stopProcess(proc);
  }
  for (const name of commands) await rename(join(scratch, name), join(bin, name));
  await rm(scratch, { recursive: true, force: true });
  log(`built ${names} ${version} in ${Math.round((Date.now() - started) / 1000)} s`);
}

/** The Go toolchain: from PATH, else the usual /usr/local/go install. */
function goBinary(): string {
  for (const dir of (process.env.PATH ?? '').split(':').filter(Boolean)) {
    if (existsSync(join(dir, 'go'))) return join(dir, 'go');
  }
  if (existsSync('/usr/local/go/bin/go')) return '/usr/local/go/bin/go';
  throw new Error('Go is needed to build kube-apiserver, kubectl and kube-controller-manager, and none is on PATH or in /usr/local/go');
}

