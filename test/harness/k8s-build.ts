// Builds Kubernetes' own kube-apiserver and kubectl from the k8s.io/kubernetes version pinned in
// tools/k8s/go.mod, into a per-version cache (~/.cache/vmlet/k8s-<version>/bin) shared by every checkout.
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
  kubernetesVersion: string;
}

/** Where the binaries for a version live; keyed by version so a go.mod bump builds afresh. */
export function kubernetesBinaries(version: string): KubernetesBinaries {
  const bin = join(cacheRoot(), `k8s-${version}`, 'bin');
  return { kubeApiserver: join(bin, 'kube-apiserver'), kubectl: join(bin, 'kubectl'), kubernetesVersion: version };
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
  const built = (): boolean => existsSync(bins.kubeApiserver) && existsSync(bins.kubectl);
  if (built()) {
    log(`kube-apiserver and kubectl ${version} already built`);
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
    if (!built()) await build(version, versionDir, log);
  } finally {
    await rm(lock, { recursive: true, force: true });
  }
  return bins;
}

async function build(version: string, versionDir: string, log: (msg: string) => void): Promise<void> {
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
  args.push('k8s.io/kubernetes/cmd/kube-apiserver', 'k8s.io/kubernetes/cmd/kubectl');
  log(`building kube-apiserver and kubectl ${version} with ${goBinary()} (log: ${logFile}); this takes minutes`);
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
  for (const name of ['kube-apiserver', 'kubectl']) await rename(join(scratch, name), join(bin, name));
  await rm(scratch, { recursive: true, force: true });
  log(`built kube-apiserver and kubectl ${version} in ${Math.round((Date.now() - started) / 1000)} s`);
}

/** The Go toolchain: from PATH, else the usual /usr/local/go install. */
function goBinary(): string {
  for (const dir of (process.env.PATH ?? '').split(':').filter(Boolean)) {
    if (existsSync(join(dir, 'go'))) return join(dir, 'go');
  }
  if (existsSync('/usr/local/go/bin/go')) return '/usr/local/go/bin/go';
  throw new Error('Go is needed to build kube-apiserver and kubectl, and none is on PATH or in /usr/local/go');
}

