// From a VmSpec to the vz helper's start config, pure: the VM dir layout, the VM's MAC address and the
// device list (docs/VZ-HELPER-PROTOCOL.md, "start"). Everything Virtualization.framework cannot do is
// refused here, with a reason, before a helper is started.
import { createHash } from 'node:crypto';
import path from 'node:path';
import { VmError, type VmSpec } from '../hypervisor.ts';
import type { StartConfig } from './protocol.ts';

/** The guest vsock port the agent listens on; the helper exposes it as `agent.sock` in the VM dir. */
export const AGENT_VSOCK_PORT = 1024;
/** VZVirtioFileSystemDeviceConfiguration.macOSGuestAutomountTag (macOS 13+): mounted by the guest itself. */
export const MACOS_AUTOMOUNT_TAG = 'com.apple.virtio-fs.automount';

export interface VzPaths {
  dir: string;
  state: string;
  control: string;
  agentSocket: string;
  consoleLog: string;
  helperLog: string;
  /** Written by the helper as it exits: how the VM stopped, for a vmlet that was not listening. */
  exitFile: string;
  /** The EFI variable store the helper creates for an EFI guest that brought none. */
  efiVars: string;
}

export function vzPaths(dir: string): VzPaths {
  return {
    dir,
    state: path.join(dir, 'vm.json'),
    control: path.join(dir, 'control.sock'),
    agentSocket: path.join(dir, 'agent.sock'),
    consoleLog: path.join(dir, 'console.log'),
    helperLog: path.join(dir, 'vz.log'),
    exitFile: path.join(dir, 'helper-exit.json'),
    efiVars: path.join(dir, 'efi-vars.fd'),
  };
}

/**
 * A MAC address for the VM, stable for its id and unique in practice: six bytes of SHA-256(id) with the
 * locally administered bit set and the multicast bit clear (x2, x6, xA or xE as the first octet's low
 * nibble). Not the image's own MAC: every clone of an image would share it, and macOS's DHCP server
 * (bootpd) hands one lease per MAC, so two VMs of one image would fight over one address.
 */
export function macForId(id: string): string {
  const bytes = createHash('sha256').update(`vmlet-vz:${id}`).digest().subarray(0, 6);
  bytes[0] = (bytes[0]! & 0xfc) | 0x02;
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** Lower-case, two digits per octet ("5a:94:ef:e4:c:ee" → "5a:94:ef:e4:0c:ee"); undefined if not a MAC. */
export function normalizeMac(mac: string): string | undefined {
  const parts = mac.trim().toLowerCase().split(/[:-]/);
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-f]{1,2}$/.test(p))) return undefined;
  return parts.map((p) => p.padStart(2, '0')).join(':');
}

/** The helper's start config for a spec. Throws VmError('Unsupported'|'InvalidSpec') for what vz cannot do. */
export function startConfig(spec: VmSpec, paths: VzPaths, mac: string): StartConfig {
  if (spec.arch !== 'aarch64') throw new VmError('Unsupported', `Virtualization.framework runs arm64 guests on Apple Silicon; this VM is ${spec.arch}`);
  if (spec.disk.format !== 'raw') throw new VmError('Unsupported', `Virtualization.framework reads raw disks only; ${spec.disk.path} is ${spec.disk.format}`);
  if (spec.os === 'darwin' && spec.boot.kind !== 'macos') throw new VmError('InvalidSpec', 'a macOS guest boots with a macos boot source (hardwareModel, ecid, nvram)');
  if (spec.os === 'linux' && spec.boot.kind === 'macos') throw new VmError('InvalidSpec', 'a Linux guest cannot use a macos boot source');

  const boot: StartConfig['boot'] =
    spec.boot.kind === 'macos'
      ? { kind: 'macos', hardwareModel: spec.boot.hardwareModel, machineIdentifier: spec.boot.ecid, auxiliaryStorage: spec.boot.nvram }
      : spec.boot.kind === 'efi'
        ? { kind: 'efi', variableStore: spec.boot.nvram ?? paths.efiVars, create: spec.boot.nvram === undefined }
        : {
            kind: 'linux',
            kernel: spec.boot.kernel,
            ...(spec.boot.initrd ? { initrd: spec.boot.initrd } : {}),
            // The console is a virtio console here (hvc0), not a 16550 UART (ttyS0).
            cmdline: /\bconsole=hvc0\b/.test(spec.boot.cmdline) ? spec.boot.cmdline : `${spec.boot.cmdline} console=hvc0`.trim(),
          };

  let network: StartConfig['network'];
  switch (spec.network.mode) {
    case 'none':
      network = { mode: 'none' };
      break;
    case 'user':
      if (spec.network.forwards.length > 0) {
        throw new VmError('Unsupported', 'port forwards are not offered by the vz driver: its NAT has no inbound forwarding; reach the guest at its IP (on the host) instead');
      }
      network = { mode: 'nat', mac };
      break;
    case 'bridge':
      network = { mode: 'bridged', interface: spec.network.bridge, mac };
      break;
  }

  const tags = new Set<string>();
  for (const share of spec.shares) {
    if (tags.has(share.tag)) throw new VmError('InvalidSpec', `two shares named ${share.tag}`);
    // VZVirtioFileSystemDeviceConfiguration.validateTag: non-empty, under 36 bytes of UTF-8.
    if (spec.os === 'linux' && (share.tag === '' || Buffer.byteLength(share.tag) >= 36)) {
      throw new VmError('InvalidSpec', `virtiofs tag "${share.tag}" must be 1 to 35 bytes`);
    }
    tags.add(share.tag);
  }
  const shareOf = (s: VmSpec['shares'][number]) => ({ name: s.tag, hostPath: s.hostPath, readOnly: s.readOnly });
  const fileSystems: StartConfig['fileSystems'] =
    spec.shares.length === 0
      ? []
      : spec.os === 'darwin'
        ? [{ kind: 'multiple', tag: MACOS_AUTOMOUNT_TAG, shares: spec.shares.map(shareOf) }]
        : spec.shares.map((s) => ({ kind: 'single' as const, tag: s.tag, share: shareOf(s) }));

  return {
    cpus: spec.cpus,
    memoryBytes: spec.memoryMiB * 1024 * 1024,
    boot,
    disks: [{ path: spec.disk.path, readOnly: false }],
    network,
    fileSystems,
    vsock: [{ port: AGENT_VSOCK_PORT, socket: paths.agentSocket }],
    console: paths.consoleLog,
    graphics: false,
  };
}
