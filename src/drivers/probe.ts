// Finds out whether this host can run VMs, and with what: the answer becomes the Node's HypervisorReady
// condition, its guest-OS labels and its VM slots. The drivers themselves (QEMU, Virtualization.framework)
// arrive with their issues; this probe only looks, it starts nothing.
import { execFile } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { kvmProblem } from './qemu/host.ts';
import { checkSignature, findHelper, type SignatureCheck } from './vz/host.ts';

const run = promisify(execFile);

export type HypervisorKind = 'qemu' | 'vz';
export type Accelerator = 'kvm' | 'hvf' | 'tcg';

export interface HypervisorProbe {
  usable: boolean;
  /** The driver that would run VMs, or null when none can. */
  driver: HypervisorKind | null;
  accelerator: Accelerator | null;
  /** Guest operating systems this driver can boot. */
  guestOSes: ReadonlyArray<'linux' | 'macos'>;
  /** CamelCase reason and a sentence, as in a Node condition. */
  reason: string;
  message: string;
}

export interface ProbeOptions {
  want: 'auto' | HypervisorKind;
  platform?: NodeJS.Platform;
  /** GOARCH of the host. */
  arch: string;
  /** Directories searched for QEMU; default: $PATH. */
  searchPath?: string[];
  /** Finds the vz helper and reads its signature (default: src/drivers/vz/host.ts); tests pass a stand-in. */
  vzHelper?: () => Promise<VzHelperFinding>;
}

/** Where the vz helper is and how it is signed; no path when it was not found. */
export interface VzHelperFinding {
  path?: string;
  signature?: SignatureCheck;
}

async function findVzHelper(): Promise<VzHelperFinding> {
  const path = await findHelper();
  return path ? { path, signature: await checkSignature(path) } : {};
}

const QEMU_BINARY: Record<string, string> = { amd64: 'qemu-system-x86_64', arm64: 'qemu-system-aarch64' };

export async function probeHypervisor(options: ProbeOptions): Promise<HypervisorProbe> {
  const platform = options.platform ?? process.platform;
  const vzHelper = options.vzHelper ?? findVzHelper;
  if (options.want === 'vz') return probeVz(platform, options.arch, vzHelper);
  // `auto` prefers Virtualization.framework on Apple Silicon when its helper is there and signed; else
  // QEMU (with HVF on a Mac). Linux hosts look for QEMU only.
  if (options.want === 'auto' && platform === 'darwin' && options.arch === 'arm64') {
    const vz = await probeVz(platform, options.arch, vzHelper);
    if (vz.usable) return vz;
  }
  return probeQemu(platform, options.arch, options.searchPath ?? (process.env.PATH ?? '').split(path.delimiter));
}

// Virtualization.framework needs Apple Silicon and the vz helper (native/vz), signed with the
// virtualization entitlement.
async function probeVz(platform: string, arch: string, vzHelper: () => Promise<VzHelperFinding>): Promise<HypervisorProbe> {
  const base = { usable: false, driver: null, accelerator: null, guestOSes: [] } as const;
  if (platform !== 'darwin' || arch !== 'arm64') {
    return { ...base, reason: 'VirtualizationFrameworkUnavailable', message: `Virtualization.framework needs macOS on Apple Silicon; this host is ${platform}/${arch}` };
  }
  const helper = await vzHelper();
  if (!helper.path) {
    return { ...base, reason: 'VzHelperNotFound', message: 'the vz helper (vmlet-vz) was not found: build it with scripts/build-vz-helper.sh, or set VMLET_VZ_HELPER' };
  }
  if (!helper.signature?.signed) {
    return { ...base, reason: 'VzHelperNotSigned', message: `${helper.path} is not signed (${helper.signature?.why ?? 'unknown'}): run scripts/build-vz-helper.sh` };
  }
  if (!helper.signature.entitled) {
    return { ...base, reason: 'VzHelperNotEntitled', message: `${helper.path} lacks the com.apple.security.virtualization entitlement: run scripts/build-vz-helper.sh` };
  }
  return { usable: true, driver: 'vz', accelerator: 'hvf', guestOSes: ['macos', 'linux'], reason: 'VzReady', message: `Virtualization.framework through ${helper.path}` };
}

async function probeQemu(platform: string, arch: string, searchPath: string[]): Promise<HypervisorProbe> {
  const name = QEMU_BINARY[arch];
  const none = { usable: false, driver: null, accelerator: null, guestOSes: [] } as const;
  if (!name) return { ...none, reason: 'UnsupportedArchitecture', message: `QEMU guests are not offered on ${arch} hosts` };
  const binary = await findExecutable(name, searchPath);
  if (!binary) {
    const hint = platform === 'darwin' ? 'brew install qemu' : 'apt-get install qemu-system';
    return { ...none, reason: 'QEMUNotInstalled', message: `${name} was not found on PATH (${hint})` };
  }
  let version: string;
  try {
    const { stdout } = await run(binary, ['--version'], { timeout: 10_000 });
    version = /version\s+(\S+)/.exec(stdout)?.[1] ?? 'unknown';
  } catch (err) {
    return { ...none, reason: 'QEMUBroken', message: `${binary} --version failed: ${(err as Error).message.split('\n')[0]}` };
  }
  // The same check the QEMU driver makes: /dev/kvm may open and still fail to run a vCPU (nested
  // virtualization without the MSRs QEMU sets), so a tiny guest is run under KVM.
  const kvmWhyNot = platform === 'darwin' ? undefined : await kvmProblem(binary, arch === 'arm64' ? 'aarch64' : 'x86_64');
  const accelerator: Accelerator = platform === 'darwin' ? 'hvf' : kvmWhyNot ? 'tcg' : 'kvm';
  const how = accelerator === 'tcg' ? `TCG (software emulation: ${kvmWhyNot})` : accelerator.toUpperCase();
  return { usable: true, driver: 'qemu', accelerator, guestOSes: ['linux'], reason: 'QEMUReady', message: `${name} ${version} with ${how}` };
}

async function findExecutable(name: string, dirs: string[]): Promise<string | undefined> {
  for (const dir of dirs.filter(Boolean)) {
    const candidate = path.join(dir, name);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return undefined;
}
