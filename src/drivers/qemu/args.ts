// QEMU's command line from a VmSpec and the host's facts: pure, so every flag is unit-tested without
// starting anything. The I/O shells (vm.ts, process.ts) only run what this returns.
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { GuestArch, NetworkSpec, ShareSpec, VmSpec } from '../hypervisor.ts';

export type Accelerator = 'kvm' | 'hvf' | 'tcg';

/** What the driver found on this host, once (accel.ts, firmware lookup). */
export interface QemuHost {
  /** The host's CPU in guest terms: a guest of another arch runs under TCG only. */
  arch: GuestArch;
  accelerator: Accelerator;
  /** qemu-system-<arch> per guest arch, absolute or on PATH. */
  binaries: Partial<Record<GuestArch, string>>;
  /** Firmware files that exist on this host (paths), by role. */
  firmware: {
    /** x86 kernel boot: qboot, a firmware that just jumps to the kernel (Debian's qemu-system-data). */
    qboot?: string;
    /** x86 EFI: OVMF code (read-only) and the variable-store template copied per VM. */
    ovmfCode?: string;
    ovmfVars?: string;
    /** aarch64 EFI (AAVMF, Debian's qemu-efi-aarch64). */
    aavmfCode?: string;
    aavmfVars?: string;
  };
  /** qemu-bridge-helper, for network mode bridge without a pre-made tap. */
  bridgeHelper?: string;
}

/** Where a VM's files live, all inside its directory. */
export interface VmPaths {
  dir: string;
  state: string;
  qmpSocket: string;
  agentSocket: string;
  consoleLog: string;
  /** QEMU's own stdout/stderr. */
  qemuLog: string;
  /** This VM's EFI variable store, when boot.kind is efi and the spec names none. */
  nvram: string;
  shareSocket(tag: string): string;
  shareLog(tag: string): string;
}

export function vmPaths(dir: string): VmPaths {
  // Socket paths must fit sun_path (108 bytes): keep the names short; the dir is the runtime's choice.
  return {
    dir,
    state: join(dir, 'vm.json'),
    qmpSocket: join(dir, 'qmp.sock'),
    agentSocket: join(dir, 'agent.sock'),
    consoleLog: join(dir, 'console.log'),
    qemuLog: join(dir, 'qemu.log'),
    nvram: join(dir, 'efi-vars.fd'),
    shareSocket: (tag) => join(dir, `fs-${safeName(tag)}.sock`),
    shareLog: (tag) => join(dir, `fs-${safeName(tag)}.log`),
  };
}

/** The virtio-serial port name the guest agent opens (/sys/class/virtio-ports/.../name). */
export const AGENT_PORT_NAME = 'org.vmlet.agent.0';

export const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

export class ArgsError extends Error {
  override name = 'ArgsError';
}

export interface ArgsOptions {
  /** Start waiting for migrate-incoming (a restore) instead of running the guest. */
  incoming?: boolean;
}

/** QEMU's argv (without the binary) for spec on host, with files under paths. Throws ArgsError for a spec the host cannot run. */
export function qemuArgs(spec: VmSpec, host: QemuHost, paths: VmPaths, opts: ArgsOptions = {}): string[] {
  if (spec.os !== 'linux') throw new ArgsError(`QEMU runs Linux guests only; ${spec.id} is a ${spec.os} guest`);
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1) throw new ArgsError(`cpus must be a positive integer (got ${spec.cpus})`);
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 64) throw new ArgsError(`memoryMiB must be an integer of at least 64 (got ${spec.memoryMiB})`);
  const accel = acceleratorFor(spec.arch, host);
  const args: string[] = [
    // The guest name shows in QMP and logs; the process title (comm) tells VMs apart in `ps`/`top`.
    '-name', `${escapeOpt(spec.name)},process=vmlet-vm`,
    ...machineArgs(spec, host, accel),
    '-smp', String(spec.cpus),
    ...memoryArgs(spec),
    // No default devices (VGA, NIC, floppy, CD...): each costs probe time, and the runtime wants exactly
    // the devices the spec names. No user config: the host's /etc/qemu must not change a pod's VM.
    '-nodefaults', '-no-user-config', '-display', 'none',
    // A guest that reboots ends QEMU: the runtime sees an exit and applies the pod's restart policy,
    // rather than a VM that loops through a panic (the test guest boots with panic=-1).
    '-no-reboot',
    // Both sockets are servers in the VM dir; wait=off so QEMU runs without a client attached.
    '-qmp', `unix:${paths.qmpSocket},server=on,wait=off`,
    // Appended across boots (append=on: a plain `-serial file:` truncates it at every start).
    '-chardev', `file,id=console,path=${paths.consoleLog},append=on`,
    '-serial', 'chardev:console',
    ...bootArgs(spec, host, paths),
    '-drive', `if=none,id=disk0,file=${escapeOpt(spec.disk.path)},format=${spec.disk.format},discard=unmap`,
    // bootindex for firmware that picks a boot disk (EFI); -kernel takes bootindex 0 itself.
    '-device', `virtio-blk-pci,drive=disk0${spec.boot.kind === 'efi' ? ',bootindex=0' : ''}`,
    ...networkArgs(spec.network, spec.macAddress ?? macFromId(spec.id), host),
    ...agentArgs(paths),
    ...shareArgs(spec.shares, paths),
    // The guest's entropy from the host: without it a guest may block at boot waiting for randomness.
    '-device', 'virtio-rng-pci',
  ];
  if (opts.incoming) args.push('-incoming', 'defer');
  return args;
}

/** The accelerator this guest gets: the host's own only for a guest of the host's architecture. */
export function acceleratorFor(arch: GuestArch, host: QemuHost): Accelerator {
  return arch === host.arch ? host.accelerator : 'tcg';
}

function machineArgs(spec: VmSpec, host: QemuHost, accel: Accelerator): string[] {
  // Hardware acceleration runs the host's CPU model; TCG emulates every feature it can (`max`).
  const cpu = accel === 'tcg' ? 'max' : 'host';
  if (spec.arch === 'x86_64') {
    // q35 minus the built-in devices nothing uses (each is probed by the guest kernel); SMM is only for
    // Secure Boot firmware. With EFI, OVMF needs SMM off too unless it is the secure-boot build.
    return ['-machine', `q35,accel=${accel},smm=off,i8042=off,sata=off,smbus=off,vmport=off`, '-cpu', cpu];
  }
  // aarch64: the `virt` board; gic-version=max picks GICv3 where the host (or TCG) has it.
  return ['-machine', `virt,accel=${accel},gic-version=max`, '-cpu', cpu];
}

function memoryArgs(spec: VmSpec): string[] {
  const size = `${spec.memoryMiB}M`;
  if (spec.shares.length === 0) return ['-m', size];
  // vhost-user (virtiofsd) maps guest memory into another process: it must be shared memory.
  return [
    '-m', size,
    '-object', `memory-backend-memfd,id=mem,size=${size},share=on`,
    '-numa', 'node,memdev=mem',
  ];
}

function bootArgs(spec: VmSpec, host: QemuHost, paths: VmPaths): string[] {
  const boot = spec.boot;
  switch (boot.kind) {
    case 'kernel': {
      // qboot starts a kernel ~0.5 s sooner than SeaBIOS under TCG; it is x86 only. aarch64's virt
      // board loads the kernel itself, without firmware.
      const firmware = spec.arch === 'x86_64' && host.firmware.qboot ? ['-bios', host.firmware.qboot] : [];
      return [
        ...firmware,
        '-kernel', boot.kernel,
        ...(boot.initrd ? ['-initrd', boot.initrd] : []),
        '-append', boot.cmdline,
      ];
    }
    case 'efi': {
      const code = spec.arch === 'x86_64' ? host.firmware.ovmfCode : host.firmware.aavmfCode;
      const pkg = spec.arch === 'x86_64' ? 'ovmf' : 'qemu-efi-aarch64';
      if (!code) throw new ArgsError(`EFI boot of an ${spec.arch} guest needs UEFI firmware: apt-get install ${pkg}`);
      const vars = boot.nvram ?? paths.nvram;
      return [
        '-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${escapeOpt(code)}`,
        '-drive', `if=pflash,format=raw,unit=1,file=${escapeOpt(vars)}`,
      ];
    }
    case 'macos':
      throw new ArgsError('macOS guests need the Virtualization.framework driver, not QEMU');
  }
}

function networkArgs(net: NetworkSpec, mac: string, host: QemuHost): string[] {
  switch (net.mode) {
    case 'none':
      return [];
    case 'user': {
      const forwards = net.forwards.map((f) => {
        if (!validPort(f.hostPort) || !validPort(f.guestPort)) {
          throw new ArgsError(`port forward ${f.hostPort}->${f.guestPort}: ports must be 1-65535`);
        }
        return `,hostfwd=${f.protocol}:${f.hostAddress ?? '127.0.0.1'}:${f.hostPort}-:${f.guestPort}`;
      });
      return ['-nic', `user,model=virtio-net-pci,mac=${mac}${forwards.join('')}`];
    }
    case 'bridge': {
      if (!/^[A-Za-z0-9_.-]{1,15}$/.test(net.bridge)) throw new ArgsError(`bridge name "${net.bridge}" is not a valid interface name`);
      // A tap the runtime made (and attached) beforehand needs no privileges here; otherwise
      // qemu-bridge-helper (setuid, allowed bridges in /etc/qemu/bridge.conf) makes one on the bridge.
      let netdev: string;
      if (net.tap) {
        if (!/^[A-Za-z0-9_.-]{1,15}$/.test(net.tap)) throw new ArgsError(`tap name "${net.tap}" is not a valid interface name`);
        netdev = `tap,id=net0,ifname=${net.tap},script=no,downscript=no`;
      } else {
        netdev = `bridge,id=net0,br=${net.bridge}${host.bridgeHelper ? `,helper=${host.bridgeHelper}` : ''}`;
      }
      return ['-netdev', netdev, '-device', `virtio-net-pci,netdev=net0,mac=${mac}`];
    }
  }
}

function agentArgs(paths: VmPaths): string[] {
  return [
    '-device', 'virtio-serial-pci,id=vser0',
    '-chardev', `socket,id=agent,path=${paths.agentSocket},server=on,wait=off`,
    '-device', `virtserialport,bus=vser0.0,chardev=agent,name=${AGENT_PORT_NAME}`,
  ];
}

function shareArgs(shares: ShareSpec[], paths: VmPaths): string[] {
  const seen = new Set<string>();
  return shares.flatMap((share, i) => {
    if (!/^[A-Za-z0-9_.-]{1,36}$/.test(share.tag)) throw new ArgsError(`share tag "${share.tag}" must be 1-36 of A-Z a-z 0-9 _ . -`);
    if (seen.has(share.tag)) throw new ArgsError(`share tag "${share.tag}" is used twice`);
    seen.add(share.tag);
    return [
      '-chardev', `socket,id=fs${i},path=${paths.shareSocket(share.tag)}`,
      '-device', `vhost-user-fs-pci,id=fs${i}dev,chardev=fs${i},tag=${share.tag}`,
    ];
  });
}

/**
 * virtiofsd's argv for one share. Debian's C virtiofsd (QEMU 7.2) has no read-only mode: a read-only
 * share is mounted read-only by the guest agent. sandbox=chroot works in containers, where the default
 * namespace sandbox cannot unshare.
 */
export function virtiofsdArgs(share: ShareSpec, socket: string): string[] {
  return [
    `--socket-path=${socket}`,
    '-o', `source=${share.hostPath}`,
    '-o', 'cache=auto',
    '-o', 'sandbox=chroot',
    '-o', 'log_level=warn',
    '-f',
  ];
}

/** A stable locally administered MAC in QEMU's 52:54:00 range, from the VM's id. */
export function macFromId(id: string): string {
  const h = createHash('sha256').update(id).digest();
  return ['52', '54', '00', ...[h[0]!, h[1]!, h[2]!].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

function validPort(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= 65535;
}

/** QEMU option values end at a comma; a literal comma is written twice. */
function escapeOpt(value: string): string {
  return value.replace(/,/g, ',,');
}

function safeName(tag: string): string {
  return tag.replace(/[^A-Za-z0-9_.-]/g, '_');
}
