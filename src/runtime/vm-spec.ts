// From a stored image and a request (CPU, memory, network, shares) to the VmSpec a driver boots. Pure:
// the image's VM config (Tart's VMConfig JSON, or Agoda's config) says what the guest is and what it needs
// at least; the request may ask for more, never for less. Out-of-bounds requests are a VmError with a
// reason a pod status can carry, never a crash in the driver.
import path from 'node:path';
import { VmError, type BootSource, type GuestArch, type GuestOS, type NetworkSpec, type ShareSpec, type VmSpec } from '../drivers/hypervisor.ts';
import { INITRD_FILE, KERNEL_FILE } from '../images/store/image-store.ts';
import type { VmImageLayout } from '../images/formats/layout.ts';

/** The fields of Tart's VMConfig (and vmlet's additions) that decide how a VM boots. */
export interface ImageVmConfig {
  os?: string;
  arch?: string;
  cpuCount?: number;
  cpuCountMin?: number;
  memorySize?: number;
  memorySizeMin?: number;
  macAddress?: string;
  hardwareModel?: string;
  ecid?: string;
  /** vmlet's Linux flavour: the kernel command line for direct kernel boot. */
  kernelCommandLine?: string;
}

export interface VmRequest {
  id: string;
  name: string;
  /** Whole vCPUs; default: the image's cpuCount. */
  cpus?: number;
  memoryMiB?: number;
  disk: { path: string; format: 'raw' | 'qcow2' };
  /** The VM's own copy of the image's NVRAM, when it has one. */
  nvram?: string;
  network: NetworkSpec;
  shares?: ShareSpec[];
  /** Appended to the image's kernel command line (direct kernel boot only). */
  extraCmdline?: string;
}

export interface HostLimits {
  /** Host CPUs: a VM never gets more vCPUs than that. */
  cpus: number;
  /** Largest memory one VM may have. */
  maxMemoryMiB: number;
}

const MiB = 1024 * 1024;
const ARCH: Record<string, GuestArch> = { amd64: 'x86_64', x86_64: 'x86_64', arm64: 'aarch64', aarch64: 'aarch64' };
const OS: Record<string, GuestOS> = { linux: 'linux', darwin: 'darwin', macos: 'darwin' };

export function vmSpecFromImage(imageDir: string, layout: VmImageLayout, config: ImageVmConfig, req: VmRequest, host: HostLimits): VmSpec {
  const os = OS[config.os ?? (layout.format === 'agoda' ? 'darwin' : '')];
  if (!os) throw new VmError('UnsupportedImage', `the image's VM config names os "${String(config.os)}"; vmlet boots linux and darwin guests`);
  const arch = ARCH[config.arch ?? (os === 'darwin' ? 'arm64' : '')];
  if (!arch) throw new VmError('UnsupportedImage', `the image's VM config names arch "${String(config.arch)}"; expected amd64 or arm64`);

  const minCpus = positive(config.cpuCountMin) ?? 1;
  const cpus = req.cpus ?? Math.max(positive(config.cpuCount) ?? 1, minCpus);
  if (!Number.isInteger(cpus) || cpus < 1) throw new VmError('InvalidVmSize', `a VM needs a whole number of CPUs, at least 1 (got ${cpus})`);
  if (cpus < minCpus) throw new VmError('InvalidVmSize', `the image needs at least ${minCpus} CPUs (cpuCountMin); ${cpus} requested`);
  if (cpus > host.cpus) throw new VmError('InvalidVmSize', `${cpus} CPUs requested; this host has ${host.cpus}`);

  const minMemoryMiB = Math.ceil((positive(config.memorySizeMin) ?? 0) / MiB);
  const memoryMiB = req.memoryMiB ?? Math.max(Math.ceil((positive(config.memorySize) ?? 0) / MiB) || 1024, minMemoryMiB);
  if (!Number.isInteger(memoryMiB) || memoryMiB < 64) throw new VmError('InvalidVmSize', `a VM needs at least 64 MiB of memory (got ${memoryMiB} MiB)`);
  if (memoryMiB < minMemoryMiB) throw new VmError('InvalidVmSize', `the image needs at least ${minMemoryMiB} MiB of memory (memorySizeMin); ${memoryMiB} MiB requested`);
  if (memoryMiB > host.maxMemoryMiB) throw new VmError('InvalidVmSize', `${memoryMiB} MiB of memory requested; at most ${host.maxMemoryMiB} MiB is allowed here`);

  return {
    id: req.id,
    name: req.name,
    os,
    arch,
    cpus,
    memoryMiB,
    ...(config.macAddress ? { macAddress: config.macAddress } : {}),
    disk: req.disk,
    boot: bootSource(imageDir, layout, config, os, req),
    network: req.network,
    shares: req.shares ?? [],
  };
}

function bootSource(imageDir: string, layout: VmImageLayout, config: ImageVmConfig, os: GuestOS, req: VmRequest): BootSource {
  if (os === 'darwin') {
    if (!req.nvram) throw new VmError('UnsupportedImage', 'a macOS image needs an NVRAM layer, and this one has none');
    if (!config.hardwareModel || !config.ecid) throw new VmError('UnsupportedImage', "a macOS image's VM config needs hardwareModel and ecid (Tart writes both)");
    return { kind: 'macos', nvram: req.nvram, hardwareModel: config.hardwareModel, ecid: config.ecid };
  }
  if (layout.kernel) {
    const cmdline = [config.kernelCommandLine ?? 'console=ttyS0', req.extraCmdline].filter(Boolean).join(' ');
    return {
      kind: 'kernel',
      kernel: path.join(imageDir, KERNEL_FILE),
      ...(layout.initrd ? { initrd: path.join(imageDir, INITRD_FILE) } : {}),
      cmdline,
    };
  }
  return { kind: 'efi', ...(req.nvram ? { nvram: req.nvram } : {}) };
}

function positive(n: unknown): number | undefined {
  return typeof n === 'number' && Number.isFinite(n) && n > 0 ? n : undefined;
}
