// Facts and settings of the guest system: info (hostname, kernel, addresses, uptime), stats (/proc/stat,
// /proc/meminfo, statfs), hostname, and virtiofs mounts.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, readFile, realpath, stat, statfs, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { arch, hostname, networkInterfaces, release } from 'node:os';
import { AgentError } from '../protocol/errors.ts';
import type { AgentInfo, AgentStats, MountRequest } from '../protocol/messages.ts';

/** USER_HZ: the unit of /proc/stat on every Linux architecture vmlet runs on. */
const CLOCK_TICKS = 100;

export async function uptimeSeconds(): Promise<number> {
  return Number((await readFile('/proc/uptime', 'utf8').catch(() => '0')).split(' ')[0]);
}

export function uptimeSecondsSync(): number {
  try {
    return Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
  } catch {
    return 0;
  }
}

export function bootIdSync(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

export async function bootId(): Promise<string> {
  return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => '')).trim();
}

export function addresses(): AgentInfo['addresses'] {
  return Object.entries(networkInterfaces()).flatMap(([name, list]) =>
    (list ?? []).filter((a) => !a.internal).map((a) => ({
      interface: name, family: a.family, address: a.address, cidr: a.cidr,
    })));
}

export function systemFacts(): Pick<AgentInfo, 'hostname' | 'kernel' | 'arch' | 'node'> {
  return { hostname: hostname(), kernel: release(), arch: arch(), node: process.version };
}

export async function stats(paths: string[]): Promise<AgentStats> {
  const procStat = await readFile('/proc/stat', 'utf8');
  const cpuLine = procStat.split('\n').find((l) => l.startsWith('cpu ')) ?? 'cpu';
  // user nice system idle iowait irq softirq steal
  const t = cpuLine.trim().split(/\s+/).slice(1).map(Number);
  const at = (i: number): number => t[i] ?? 0;
  const cpus = procStat.split('\n').filter((l) => /^cpu\d+ /.test(l)).length;
  const meminfo = await readFile('/proc/meminfo', 'utf8');
  const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(meminfo)?.[1] ?? 0) * 1024;
  const total = kb('MemTotal');
  const available = kb('MemAvailable');
  const filesystems: AgentStats['filesystems'] = [];
  for (const path of ['/', ...paths]) {
    const s = await statfs(path).catch(() => undefined);
    if (!s) continue;
    filesystems.push({
      path,
      capacityBytes: s.blocks * s.bsize,
      availableBytes: s.bavail * s.bsize,
      usedBytes: (s.blocks - s.bfree) * s.bsize,
      inodes: s.files,
      inodesFree: s.ffree,
    });
  }
  return {
    cpu: {
      usageSeconds: (at(0) + at(1) + at(2) + at(5) + at(6) + at(7)) / CLOCK_TICKS,
      idleSeconds: (at(3) + at(4)) / CLOCK_TICKS,
      cpus,
    },
    memory: { totalBytes: total, availableBytes: available, freeBytes: kb('MemFree'), workingSetBytes: total - available },
    filesystems,
    timestamp: new Date().toISOString(),
  };
}

export async function setHostname(name: string, file = '/proc/sys/kernel/hostname'): Promise<void> {
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/.test(name) || name.length > 64) {
    throw new AgentError('InvalidArgument', `invalid hostname "${name}": lower-case letters, digits, '-' and '.', at most 64 characters`);
  }
  await writeFile(file, name).catch((err: NodeJS.ErrnoException) => {
    throw new AgentError('Internal', `cannot set the hostname: ${err.code ?? err.message}`);
  });
}

/** Mounts a virtiofs share by tag at mountPath (made if missing). Mounting the same tag there again is a no-op. */
export async function mount(req: Omit<MountRequest, 'op'>): Promise<void> {
  const fsType = req.fsType ?? 'virtiofs';
  if (fsType !== 'virtiofs') throw new AgentError('InvalidArgument', `unsupported file system type "${String(fsType)}": only virtiofs`);
  if (typeof req.tag !== 'string' || !/^[A-Za-z0-9_.-]{1,36}$/.test(req.tag)) throw new AgentError('InvalidArgument', `invalid virtiofs tag "${req.tag}"`);
  if (typeof req.mountPath !== 'string' || !req.mountPath.startsWith('/')) throw new AgentError('InvalidArgument', `mountPath must be absolute (got "${req.mountPath}")`);
  if (!(await hasFilesystem(fsType))) {
    await run('modprobe', [fsType]).catch(() => undefined);
    if (!(await hasFilesystem(fsType))) {
      throw new AgentError('NotSupported', `the guest kernel has no ${fsType} file system (not in /proc/filesystems, and modprobe ${fsType} did not add it)`);
    }
  }
  if (req.subPath !== undefined) return mountSubPath(req, fsType);
  const mounts = await readFile('/proc/mounts', 'utf8').catch(() => '');
  const existing = mounts.split('\n').map((l) => l.split(' ')).find((f) => f[1] === req.mountPath);
  if (existing) {
    if (existing[0] === req.tag && existing[2] === fsType) return;
    throw new AgentError('MountFailed', `${req.mountPath} is already a mount point (of ${existing[0]}, ${existing[2]})`);
  }
  await mkdir(req.mountPath, { recursive: true }).catch((err: NodeJS.ErrnoException) => {
    throw new AgentError('MountFailed', `cannot create ${req.mountPath}: ${err.code ?? err.message}`);
  });
  await run('mount', ['-t', fsType, ...(req.readOnly ? ['-o', 'ro'] : []), req.tag, req.mountPath]).catch((err: Error) => {
    throw new AgentError('MountFailed', `mount ${fsType} ${req.tag} at ${req.mountPath}: ${err.message}`);
  });
}

/** Where a share is mounted whole when only a path inside it is mounted at a mountPath. */
const SUBPATH_BASE = '/run/vmlet/volumes';

/**
 * volumeMounts[].subPath: the share mounted once at /run/vmlet/volumes/<tag>, then the path inside it
 * bind-mounted at mountPath (a directory made if missing, as the kubelet does; a file bound onto a file).
 * A path that leaves the share, through `..` or a symlink, is refused.
 */
async function mountSubPath(req: Omit<MountRequest, 'op'>, fsType: string): Promise<void> {
  const sub = req.subPath!;
  if (typeof sub !== 'string' || sub === '' || sub.startsWith('/') || sub.split('/').includes('..')) {
    throw new AgentError('InvalidArgument', `subPath must be a relative path without ".." (got "${sub}")`);
  }
  const base = `${SUBPATH_BASE}/${req.tag}`;
  const mounts = await readFile('/proc/mounts', 'utf8').catch(() => '');
  const lines = mounts.split('\n').map((l) => l.split(' '));
  if (!lines.some((f) => f[1] === base)) await mount({ tag: req.tag, mountPath: base, fsType: 'virtiofs' });
  if (lines.some((f) => f[1] === req.mountPath)) return;
  const source = `${base}/${sub}`;
  let real: string;
  let isDir: boolean;
  try {
    real = await realpath(source);
    isDir = (await stat(real)).isDirectory();
  } catch {
    await mkdir(source, { recursive: true }).catch((err: NodeJS.ErrnoException) => {
      throw new AgentError('MountFailed', `subPath ${sub} does not exist in the volume and cannot be made: ${err.code ?? err.message}`);
    });
    real = await realpath(source);
    isDir = true;
  }
  if (real !== base && !real.startsWith(`${base}/`)) throw new AgentError('MountFailed', `subPath ${sub} leaves the volume (it resolves to ${real})`);
  if (isDir) {
    await mkdir(req.mountPath, { recursive: true });
  } else {
    await mkdir(dirname(req.mountPath), { recursive: true });
    if (!(await stat(req.mountPath).catch(() => undefined))) await writeFile(req.mountPath, '');
  }
  await run('mount', ['-o', 'bind', real, req.mountPath]).catch((err: Error) => {
    throw new AgentError('MountFailed', `bind ${sub} of ${fsType} ${req.tag} at ${req.mountPath}: ${err.message}`);
  });
  if (req.readOnly) {
    await run('mount', ['-o', 'remount,bind,ro', req.mountPath]).catch((err: Error) => {
      throw new AgentError('MountFailed', `making ${req.mountPath} read-only: ${err.message}`);
    });
  }
}

async function hasFilesystem(type: string): Promise<boolean> {
  const list = await readFile('/proc/filesystems', 'utf8').catch(() => '');
  return list.split('\n').some((l) => l.trim().split(/\s+/).pop() === type);
}

/** Runs a command to completion; rejects with its last line of stderr. */
export function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => reject(new Error(`${cmd}: ${e.message}`)));
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(err.trim().split('\n').pop() || `${cmd} exited with ${code ?? signal}`));
    });
  });
}
