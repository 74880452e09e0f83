// What the host is (static facts, read once) and how it is doing (a sample of memory, disk and PIDs).
// The Node's nodeInfo, capacity, addresses and pressure conditions are computed from these.
import { execFile } from 'node:child_process';
import { readFile, readdir, statfs, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface HostFacts {
  hostname: string;
  /** GOOS-style: linux, darwin. */
  os: string;
  /** GOARCH-style: amd64, arm64. */
  arch: string;
  cpus: number;
  memoryBytes: number;
  kernelVersion: string;
  osImage: string;
  machineID: string;
  systemUUID: string;
  bootID: string;
  /** Non-loopback addresses of the host, IPv4 first. */
  ips: string[];
}

export interface HostSample {
  memoryAvailableBytes: number;
  /** The volume holding the image cache. */
  diskTotalBytes: number;
  diskAvailableBytes: number;
  /** Processes running and the most the kernel allows; undefined where not measurable. */
  pids?: { running: number; max: number };
}

const GOARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };

export function goArch(nodeArch: string = process.arch): string {
  return GOARCH[nodeArch] ?? nodeArch;
}

export async function readHostFacts(): Promise<HostFacts> {
  const platform = process.platform;
  const [osImage, machineID, systemUUID, bootID] = await Promise.all([
    readOsImage(platform),
    firstLine(['/etc/machine-id', '/var/lib/dbus/machine-id']),
    platform === 'darwin' ? darwinHardwareUUID() : firstLine(['/sys/class/dmi/id/product_uuid']),
    firstLine(['/proc/sys/kernel/random/boot_id']),
  ]);
  return {
    hostname: os.hostname(),
    os: platform,
    arch: goArch(),
    cpus: os.availableParallelism(),
    memoryBytes: os.totalmem(),
    kernelVersion: os.release(),
    osImage,
    machineID,
    systemUUID: systemUUID.toLowerCase(),
    bootID,
    ips: hostIPs(),
  };
}

/** Non-internal interface addresses, IPv4 before IPv6, link-local IPv6 left out. */
export function hostIPs(): string[] {
  const all = Object.values(os.networkInterfaces()).flatMap((list) => list ?? []);
  const usable = all.filter((a) => !a.internal && !(a.family === 'IPv6' && a.address.startsWith('fe80')));
  return [...usable.filter((a) => a.family === 'IPv4'), ...usable.filter((a) => a.family === 'IPv6')].map((a) => a.address);
}

/** Identifies this boot of the host: data only in the page cache when a file recorded it may be gone after a change. */
export async function bootId(): Promise<string> {
  if (process.platform === 'darwin') {
    const { stdout } = await run('sysctl', ['-n', 'kern.boottime']).catch(() => ({ stdout: '' }));
    return stdout.trim();
  }
  return firstLine(['/proc/sys/kernel/random/boot_id']);
}

export async function sampleHost(cacheDir: string): Promise<HostSample> {
  const [memoryAvailableBytes, disk, pids] = await Promise.all([memoryAvailable(), diskOf(cacheDir), pidUsage()]);
  return { memoryAvailableBytes, diskTotalBytes: disk.total, diskAvailableBytes: disk.available, ...(pids ? { pids } : {}) };
}

async function memoryAvailable(): Promise<number> {
  if (process.platform === 'linux') {
    // MemAvailable counts reclaimable cache, as the kubelet's memory.available signal does; freemem() does not.
    const meminfo = await readFile('/proc/meminfo', 'utf8').catch(() => '');
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(meminfo);
    if (m) return Number(m[1]) * 1024;
  }
  return os.freemem();
}

/** Size and free space of the volume that holds `dir` (created if missing, as the cache lives there). */
async function diskOf(dir: string): Promise<{ total: number; available: number }> {
  await mkdir(dir, { recursive: true }).catch(() => undefined);
  let probe = path.resolve(dir);
  for (;;) {
    try {
      const s = await statfs(probe);
      return { total: s.blocks * s.bsize, available: s.bavail * s.bsize };
    } catch (err) {
      const parent = path.dirname(probe);
      if (parent === probe) throw err;
      probe = parent;
    }
  }
}

async function pidUsage(): Promise<{ running: number; max: number } | undefined> {
  try {
    if (process.platform === 'linux') {
      const [entries, max] = await Promise.all([readdir('/proc'), readFile('/proc/sys/kernel/pid_max', 'utf8')]);
      return { running: entries.filter((e) => /^\d+$/.test(e)).length, max: Number(max.trim()) };
    }
    if (process.platform === 'darwin') {
      const [{ stdout: max }, { stdout: list }] = await Promise.all([run('sysctl', ['-n', 'kern.maxproc']), run('ps', ['-A', '-o', 'pid='])]);
      return { running: list.trim().split('\n').length, max: Number(max.trim()) };
    }
  } catch {
    // Not measurable here: the condition says so instead of guessing.
  }
  return undefined;
}

async function readOsImage(platform: string): Promise<string> {
  if (platform === 'darwin') {
    try {
      const { stdout } = await run('sw_vers', []);
      const name = /ProductName:\s*(.+)/.exec(stdout)?.[1]?.trim() ?? 'macOS';
      const version = /ProductVersion:\s*(.+)/.exec(stdout)?.[1]?.trim() ?? '';
      return `${name} ${version}`.trim();
    } catch {
      return 'macOS';
    }
  }
  const text = await readFile('/etc/os-release', 'utf8').catch(() => '');
  const pretty = /^PRETTY_NAME="?([^"\n]*)"?/m.exec(text)?.[1];
  return pretty ?? `${os.type()} ${os.release()}`;
}

async function darwinHardwareUUID(): Promise<string> {
  try {
    const { stdout } = await run('ioreg', ['-rd1', '-c', 'IOPlatformExpertDevice']);
    return /"IOPlatformUUID" = "([^"]+)"/.exec(stdout)?.[1] ?? '';
  } catch {
    return '';
  }
}

async function firstLine(files: string[]): Promise<string> {
  for (const file of files) {
    const text = await readFile(file, 'utf8').catch(() => undefined);
    if (text?.trim()) return text.trim().split('\n')[0]!;
  }
  return '';
}
