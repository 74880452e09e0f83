// What this host offers QEMU, found once when the driver opens: the binaries, the firmware files, and
// the accelerator. "KVM works" is decided by running a guest, not by opening /dev/kvm: inside some VMs
// /dev/kvm opens and even answers KVM_GET_API_VERSION, yet QEMU aborts as soon as a vCPU with the host's
// CPU model starts ("failed to set MSR ..."), or the guest never runs. So the check starts QEMU with the
// driver's own machine and CPU model on a 64 KiB firmware of four instructions that writes to an
// isa-debug-exit port (x86) or calls PSCI SYSTEM_OFF (aarch64); QEMU then exits with a known status
// within milliseconds. Anything else, or no exit within a few seconds, means TCG.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { GuestArch } from '../hypervisor.ts';
import type { Accelerator, QemuHost } from './args.ts';

const run = promisify(execFile);

export const FIRMWARE_PATHS = {
  qboot: ['/usr/share/qemu/qboot.rom'],
  ovmfCode: ['/usr/share/OVMF/OVMF_CODE_4M.fd', '/usr/share/OVMF/OVMF_CODE.fd'],
  ovmfVars: ['/usr/share/OVMF/OVMF_VARS_4M.fd', '/usr/share/OVMF/OVMF_VARS.fd'],
  aavmfCode: ['/usr/share/AAVMF/AAVMF_CODE.fd'],
  aavmfVars: ['/usr/share/AAVMF/AAVMF_VARS.fd'],
} as const;

/** The x86 probe firmware: at the reset vector, `mov al, 0x2a; out 0xf4, al; hlt`; QEMU exits with (0x2a << 1) | 1. */
export function x86ProbeRom(): Buffer {
  const rom = Buffer.alloc(64 * 1024, 0xf4); // hlt everywhere else
  rom.set([0xb0, 0x2a, 0xe6, 0xf4, 0xf4], 0xfff0);
  return rom;
}
export const X86_PROBE_EXIT = (0x2a << 1) | 1;

/** The aarch64 probe firmware, at address 0 of `virt`: PSCI SYSTEM_OFF (0x84000008) through hvc; QEMU exits 0. */
export function aarch64ProbeRom(): Buffer {
  const words = [0x52800100 /* movz w0, #0x8 */, 0x72b08000 /* movk w0, #0x8400, lsl #16 */, 0xd4000002 /* hvc #0 */, 0x14000000 /* b . */];
  const rom = Buffer.alloc(64 * 1024);
  words.forEach((w, i) => rom.writeUInt32LE(w, i * 4));
  return rom;
}

/** QEMU's argv for the accelerator check (the same machine and CPU model the driver's VMs get). */
export function probeArgs(arch: GuestArch, accel: Accelerator, rom: string): string[] {
  const common = ['-nodefaults', '-no-user-config', '-display', 'none', '-m', '16', '-bios', rom];
  if (arch === 'x86_64') {
    return ['-machine', `q35,accel=${accel},smm=off`, '-cpu', 'host', ...common, '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04'];
  }
  return ['-machine', `virt,accel=${accel}`, '-cpu', 'host', ...common];
}

export interface HostOptions {
  /** Default: what the host can do ('auto'). Forcing one that does not work fails at first start. */
  accelerator?: 'auto' | Accelerator;
  /** qemu-system-* per guest arch; default: the names, found on PATH. */
  binaries?: Partial<Record<GuestArch, string>>;
  /** Override firmware lookup (tests). */
  firmware?: QemuHost['firmware'];
  platform?: NodeJS.Platform;
  hostArch?: string;
}

export interface DetectedHost extends QemuHost {
  /** QEMU's version, e.g. "7.2.22". */
  version: string;
  /** Why this accelerator, for logs and describe(). */
  acceleratorNote: string;
}

export async function detectHost(opts: HostOptions = {}): Promise<DetectedHost> {
  const platform = opts.platform ?? process.platform;
  const hostArch: GuestArch = (opts.hostArch ?? process.arch) === 'arm64' ? 'aarch64' : 'x86_64';
  const binaries: Partial<Record<GuestArch, string>> = {
    x86_64: 'qemu-system-x86_64',
    aarch64: 'qemu-system-aarch64',
    ...opts.binaries,
  };
  const native = binaries[hostArch]!;
  let version: string;
  try {
    const { stdout } = await run(native, ['--version'], { timeout: 10_000 });
    version = /version\s+(\S+)/.exec(stdout)?.[1] ?? 'unknown';
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const hint = platform === 'darwin' ? 'brew install qemu' : 'apt-get install qemu-system';
    throw new Error(e.code === 'ENOENT' ? `${native} is not installed (${hint})` : `${native} --version failed: ${e.message.split('\n')[0]}`);
  }
  const firmware = opts.firmware ?? findFirmware();
  const bridgeHelper = ['/usr/lib/qemu/qemu-bridge-helper', '/usr/libexec/qemu-bridge-helper'].find((p) => existsSync(p));
  let accelerator: Accelerator;
  let acceleratorNote: string;
  if (opts.accelerator && opts.accelerator !== 'auto') {
    accelerator = opts.accelerator;
    acceleratorNote = `${accelerator.toUpperCase()} (configured)`;
  } else if (platform === 'darwin') {
    accelerator = 'hvf';
    acceleratorNote = 'HVF';
  } else {
    const why = await kvmProblem(native, hostArch);
    accelerator = why ? 'tcg' : 'kvm';
    acceleratorNote = why ? `TCG (software emulation: ${why})` : 'KVM';
  }
  return { arch: hostArch, accelerator, acceleratorNote, binaries, firmware, bridgeHelper, version };
}

function findFirmware(): QemuHost['firmware'] {
  const found: QemuHost['firmware'] = {};
  for (const [role, paths] of Object.entries(FIRMWARE_PATHS) as [keyof QemuHost['firmware'], readonly string[]][]) {
    const path = paths.find((p) => existsSync(p));
    if (path) found[role] = path;
  }
  return found;
}

/** Why KVM cannot run this driver's guests here, or undefined when it can. */
export async function kvmProblem(binary: string, arch: GuestArch): Promise<string | undefined> {
  try {
    const handle = await open('/dev/kvm', 'r+');
    await handle.close();
  } catch (err) {
    return `/dev/kvm is not usable: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  }
  // The test guest costs a QEMU start; its verdict is kept for a while, since start-up asks more than
  // once (the Node's probe, the driver) and the Node's probe asks again every minute.
  const key = `${binary}\0${arch}`;
  const cached = testGuestVerdicts.get(key);
  if (cached && Date.now() - cached.at < VERDICT_TTL_MS) return cached.verdict;
  const verdict = runKvmTestGuest(binary, arch);
  testGuestVerdicts.set(key, { at: Date.now(), verdict });
  return verdict;
}

const VERDICT_TTL_MS = 10 * 60_000;
const testGuestVerdicts = new Map<string, { at: number; verdict: Promise<string | undefined> }>();

/** Runs the four-instruction guest under KVM: undefined when it ran, else why not. */
async function runKvmTestGuest(binary: string, arch: GuestArch): Promise<string | undefined> {
  const dir = await mkdtemp(join(tmpdir(), 'vmlet-kvm-probe-'));
  try {
    const rom = join(dir, 'probe.rom');
    await writeFile(rom, arch === 'x86_64' ? x86ProbeRom() : aarch64ProbeRom());
    const expected = arch === 'x86_64' ? X86_PROBE_EXIT : 0;
    const result = await run(binary, probeArgs(arch, 'kvm', rom), { timeout: 5000 }).then(
      () => ({ code: 0, stderr: '', signal: null as string | null }),
      (err: { code?: number | string; stderr?: string; signal?: string | null; killed?: boolean }) => ({
        code: typeof err.code === 'number' ? err.code : -1,
        stderr: err.stderr ?? '',
        signal: err.killed ? 'timeout' : (err.signal ?? null),
      }),
    );
    if (result.code === expected && !result.signal) return undefined;
    if (result.signal === 'timeout') return 'a KVM test guest did not run within 5 s';
    const line = result.stderr.split('\n').find((l) => /error|failed|assert/i.test(l))?.trim();
    return `a KVM test guest failed (${line ?? `exit ${result.code}${result.signal ? `, ${result.signal}` : ''}`})`;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
