// `vmlet doctor`: can this host run vmlet's VMs, and if not, what to do. The findings are decided by a pure
// function over facts (evaluateHost, unit-tested); gathering the facts is the thin shell below it.
// Exit code 0 when nothing failed (warnings allowed), else 1.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Command } from 'commander';
import { probeHypervisor, type HypervisorProbe, type VzHelperFinding } from '../drivers/probe.ts';
import { checkSignature, findHelper, macOSVersion, majorVersion } from '../drivers/vz/host.ts';
import { defaultCacheDir } from '../config/schema.ts';

const run = promisify(execFile);

export interface HostFacts {
  platform: NodeJS.Platform;
  arch: string;
  macOSVersion?: string;
  vzHelper?: VzHelperFinding;
  /** What the Node's hypervisor probe says (QEMU on Linux). */
  probe?: HypervisorProbe;
  virtiofsd?: string;
  cacheDir: string;
  freeBytes?: number;
  /** Commands of running processes that hold VMs of other tools (Tart, Anka, Virtualization.framework). */
  otherVms: string[];
  /** A Docker Engine API socket, for sidecars. */
  dockerSocket?: string;
}

export interface Finding {
  check: string;
  level: 'ok' | 'warn' | 'fail';
  detail: string;
  fix?: string;
}

const GiB = 1024 ** 3;

export function evaluateHost(f: HostFacts): Finding[] {
  const out: Finding[] = [];
  const ok = (check: string, detail: string): void => void out.push({ check, level: 'ok', detail });
  const bad = (level: 'warn' | 'fail', check: string, detail: string, fix: string): void => void out.push({ check, level, detail, fix });
  if (f.platform === 'darwin') {
    const major = majorVersion(f.macOSVersion);
    if (major >= 14) ok('macOS', `macOS ${f.macOSVersion}`);
    else if (major === 13) bad('warn', 'macOS', `macOS ${f.macOSVersion}: VMs run, but save/restore needs macOS 14`, 'update to macOS 14 or later');
    else bad('fail', 'macOS', `macOS ${f.macOSVersion ?? 'unknown'}: vmlet's VMs need macOS 13 or later`, 'update macOS (Software Update) to 13 or later; 14 or later for save/restore');
    if (f.arch === 'arm64') ok('CPU', 'Apple Silicon (arm64)');
    else bad('fail', 'CPU', `${f.arch}: Virtualization.framework macOS guests need Apple Silicon`, 'use an Apple Silicon Mac');
    const h = f.vzHelper;
    const build = 'in the vmlet checkout, run scripts/build-vz-helper.sh (it needs the Xcode command line tools: xcode-select --install)';
    if (!h?.path) bad('fail', 'vz helper', 'vmlet-vz, the helper that runs each VM through Virtualization.framework, was not found: vmlet cannot start VMs', `${build}, or set VMLET_VZ_HELPER to a built vmlet-vz`);
    else if (!h.signature?.signed) bad('fail', 'vz helper', `${h.path} is not code-signed (${h.signature?.why ?? 'unknown'}): macOS will not let it start VMs`, `${build}; it builds and signs the helper`);
    else if (!h.signature.entitled) bad('fail', 'vz helper', `${h.path} is signed without the com.apple.security.virtualization entitlement: macOS will not let it start VMs`, `${build}; it signs with native/vz/vmlet-vz.entitlements`);
    else ok('vz helper', `${h.path}, signed with the virtualization entitlement`);
    if (f.otherVms.length > 0) {
      const names = f.otherVms.map((v) => (v === 'com.apple.Virtualization.VirtualMachine' ? `${v} (a Virtualization.framework VM of any app, vmlet's own included)` : v));
      bad('warn', 'other VMs', `VMs are already running: ${names.join(', ')}. macOS runs at most two macOS VMs at a time, all apps together`, "stop the VMs you do not need, or set node.vmSlots in vmlet's config to the slots left; otherwise pods fail with VirtualMachineLimitExceeded");
    } else ok('other VMs', 'no Tart, Anka or other Virtualization.framework VMs running');
  } else {
    const p = f.probe;
    if (p?.usable) {
      if (p.accelerator === 'tcg') bad('warn', 'hypervisor', p.message, 'enable KVM (load kvm_intel/kvm_amd, give vmlet access to /dev/kvm) for full speed');
      else ok('hypervisor', p.message);
    } else bad('fail', 'hypervisor', p?.message ?? 'not probed', 'apt-get install qemu-system (and ovmf / qemu-efi-aarch64 for EFI images)');
    if (f.virtiofsd) ok('virtiofsd', f.virtiofsd);
    else bad('warn', 'virtiofsd', 'virtiofsd was not found: pods with volumes cannot start', 'apt-get install virtiofsd');
  }
  if (f.freeBytes === undefined) bad('warn', 'disk', `cannot read the free space of the image cache ${f.cacheDir}`, `create it (mkdir -p ${f.cacheDir}), or pass --cache-dir with the directory vmlet is configured to use`);
  else if (f.freeBytes < 20 * GiB) bad(f.freeBytes < 5 * GiB ? 'fail' : 'warn', 'disk', `${(f.freeBytes / GiB).toFixed(1)} GiB free for the image cache at ${f.cacheDir}`, 'free disk space there: each macOS image takes 30-60 GiB in the cache, a Linux image a few GiB');
  else ok('disk', `${(f.freeBytes / GiB).toFixed(0)} GiB free at ${f.cacheDir}`);
  if (f.dockerSocket) ok('sidecars', `Docker Engine API at ${f.dockerSocket}`);
  else bad('warn', 'sidecars', 'no Docker Engine API socket: pods with sidecar containers cannot run', f.platform === 'darwin' ? 'install Docker Desktop, Colima or OrbStack (or set DOCKER_HOST)' : 'install docker.io (or set DOCKER_HOST)');
  return out;
}

export function formatFindings(findings: Finding[]): string {
  const mark = { ok: 'ok  ', warn: 'warn', fail: 'FAIL' } as const;
  return findings.map((f) => `${mark[f.level]}  ${f.check}: ${f.detail}${f.fix ? `\n      → ${f.fix}` : ''}`).join('\n');
}

/** Running processes of other VM tools, from `ps -axo comm=` output. Pure. */
export function otherVmProcesses(psOutput: string): string[] {
  const names = psOutput.split('\n').map((l) => path.basename(l.trim())).filter(Boolean);
  const hits = names.filter((n) => /^(tart|anka|ankahv|com\.apple\.Virtualization\.VirtualMachine|UTM|prl_vm_app)$/i.test(n));
  return [...new Set(hits)];
}

async function gatherFacts(cacheDir: string): Promise<HostFacts> {
  const platform = process.platform;
  const arch = process.arch;
  const freeBytes = await statfs(existsSync(cacheDir) ? cacheDir : os.homedir()).then((s) => s.bavail * s.bsize, () => undefined);
  const dockerCandidates = [process.env.DOCKER_HOST?.replace(/^unix:\/\//, ''), '/var/run/docker.sock', path.join(os.homedir(), '.docker/run/docker.sock'), path.join(os.homedir(), '.colima/default/docker.sock'), path.join(os.homedir(), '.orbstack/run/docker.sock')];
  const dockerSocket = dockerCandidates.find((c): c is string => !!c && existsSync(c));
  const base = { platform, arch, cacheDir, ...(freeBytes !== undefined ? { freeBytes } : {}), ...(dockerSocket ? { dockerSocket } : {}) };
  if (platform === 'darwin') {
    const helper = await findHelper();
    const ps = await run('ps', ['-axo', 'comm='], { timeout: 5000 }).then((r) => r.stdout, () => '');
    const version = await macOSVersion();
    return { ...base, ...(version ? { macOSVersion: version } : {}), vzHelper: helper ? { path: helper, signature: await checkSignature(helper) } : {}, otherVms: otherVmProcesses(ps) };
  }
  const probe = await probeHypervisor({ want: 'qemu', platform, arch: arch === 'arm64' ? 'arm64' : 'amd64' });
  const virtiofsd = ['/usr/libexec/virtiofsd', '/usr/lib/qemu/virtiofsd', ...(process.env.PATH ?? '').split(path.delimiter).map((d) => path.join(d, 'virtiofsd'))].find((p) => existsSync(p));
  return { ...base, probe, ...(virtiofsd ? { virtiofsd } : {}), otherVms: [] };
}

export function addDoctorCommand(program: Command): void {
  program
    .command('doctor')
    .description('Check that this host can run vmlet VMs, and say what to do when it cannot')
    .option('--cache-dir <dir>', 'the image cache directory to check', process.env.VMLET_IMAGE_CACHE_DIR ?? defaultCacheDir())
    .action(async (opts: { cacheDir: string }) => {
      const findings = evaluateHost(await gatherFacts(opts.cacheDir));
      console.log(formatFindings(findings));
      process.exitCode = findings.some((f) => f.level === 'fail') ? 1 : 0;
    });
}
