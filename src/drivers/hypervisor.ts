// The hypervisor interface: what every driver (QEMU here, Virtualization.framework in the macOS issue)
// offers the runtime. A driver turns a VmSpec and a VM directory into a running machine, and can find that
// machine again from the directory alone after vmlet restarts (the VM process outlives vmlet on purpose:
// restarting the agent must never kill a pod's VM).
//
// Everything a driver persists lives in the VM directory (`vm.json` and the sockets/logs it names), so the
// runtime needs to remember only directories. The agent protocol is not the driver's business: a driver
// hands out a byte stream to the guest agent's channel (`connectAgent`) and, for a graceful stop, takes a
// callback that asks the guest to shut down through that agent.
import type { Duplex } from 'node:stream';

export type GuestOS = 'linux' | 'darwin';
export type GuestArch = 'x86_64' | 'aarch64';

/** How the guest starts. */
export type BootSource =
  /** Direct kernel boot (QEMU): fast, no firmware on the disk needed. */
  | { kind: 'kernel'; kernel: string; initrd?: string; cmdline: string }
  /** UEFI from the disk, with this VM's own copy of the EFI variable store (QEMU with OVMF/AAVMF). */
  | { kind: 'efi'; nvram?: string }
  /** macOS (Virtualization.framework): the VM's NVRAM copy and Tart's platform identity. */
  | { kind: 'macos'; nvram: string; hardwareModel: string; ecid: string };

export interface PortForward {
  protocol: 'tcp' | 'udp';
  /** Default 127.0.0.1. */
  hostAddress?: string;
  hostPort: number;
  guestPort: number;
}

export type NetworkSpec =
  /** No NIC at all. */
  | { mode: 'none' }
  /** User-mode networking (QEMU slirp / vz NAT): no privileges; inbound only through forwards. */
  | { mode: 'user'; forwards: PortForward[] }
  /** A tap device on an existing bridge: the guest gets a routable address (the pod IP). */
  | { mode: 'bridge'; bridge: string; tap?: string };

/** A host directory exported to the guest; the guest agent mounts it by tag. */
export interface ShareSpec {
  tag: string;
  hostPath: string;
  readOnly: boolean;
}

export interface VmSpec {
  /** Unique per host, stable across vmlet restarts (e.g. the pod UID, or a random id for `vm run`). */
  id: string;
  /** Human name for logs and process titles (e.g. namespace/pod). */
  name: string;
  os: GuestOS;
  arch: GuestArch;
  cpus: number;
  memoryMiB: number;
  /** 52:54:00:xx:xx:xx style; drivers pick a stable one from the id when absent. */
  macAddress?: string;
  disk: { path: string; format: 'raw' | 'qcow2' };
  boot: BootSource;
  network: NetworkSpec;
  shares: ShareSpec[];
}

export type VmState = 'created' | 'starting' | 'running' | 'paused' | 'stopping' | 'exited';

/** Why a VM is no longer running, in Kubernetes' words (a CamelCase reason and a sentence). */
export interface VmExit {
  reason:
    | 'GuestShutdown' // the guest powered itself off
    | 'Stopped' // vmlet stopped it gracefully (agent or ACPI)
    | 'Killed' // vmlet killed it after the grace period, or on request
    | 'Crashed' // the VM process died on its own (signal, or an error exit)
    | 'BootFailed' // it exited before the guest was up, or could not be started at all
    | 'Lost'; // after a vmlet restart: the process is gone and nothing says how it ended
  message: string;
  exitCode?: number | null;
  signal?: string | null;
  at: Date;
}

/** Host-side resource use of one VM process. */
export interface VmUsage {
  /** CPU time of the VM process (user + system). */
  cpuSeconds: number;
  /** Resident memory of the VM process. */
  rssBytes: number;
  /** Bytes the VM's writable disk takes on the host (allocated blocks). */
  diskBytes: number;
}

export interface StopOptions {
  /** The whole budget: asking the guest, then ACPI power-down, then kill. */
  timeoutMs: number;
  /**
   * Asks the guest to shut down cleanly (the runtime passes the agent's shutdown request). A rejection
   * or no power-off within half the budget moves on to ACPI power-down.
   */
  askGuest?: () => Promise<void>;
}

export interface StartOptions {
  /** Boot from a state saved by save(), not from power-on. The file must match the spec. */
  restoreFrom?: string;
}

/** One VM, created or found again by a driver. */
export interface Vm {
  readonly spec: VmSpec;
  /** The VM directory: vm.json, sockets, console log, driver files. */
  readonly dir: string;
  /** The guest's serial console, captured to a file (appended across boots). */
  readonly consoleLog: string;
  state(): VmState;
  /** Host process id of the VM (QEMU, or the vz helper), while there is one. */
  pid(): number | undefined;
  /**
   * Boots it (or restores a saved state), from 'created' or 'exited' (a restart keeps the dir and appends
   * to the console log). Rejects with VmError reason BootFailed, and the hypervisor's own message, when
   * the VM process cannot start or exits while starting; nothing is left running then.
   */
  start(opts?: StartOptions): Promise<void>;
  /** A new connection to the guest agent's channel. The driver is done with it once returned. */
  connectAgent(timeoutMs?: number): Promise<Duplex>;
  /** Graceful stop: askGuest, then ACPI power-down, then kill, within timeoutMs. Resolves with the exit. */
  stop(opts: StopOptions): Promise<VmExit>;
  /** Kills the VM process now. */
  kill(): Promise<VmExit>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /**
   * Saves the running VM's memory and device state to `file`; the VM stays paused afterwards. The disk
   * is not in the file: a restore must use the same disk, unchanged since the save.
   */
  save(file: string): Promise<void>;
  usage(): Promise<VmUsage>;
  /**
   * Resolves once when the current boot has exited, for whatever reason; never rejects. Each start()
   * begins a new boot with a new promise (read the property again after a restart); after an exit and
   * before the next start() it holds the last exit.
   */
  readonly exited: Promise<VmExit>;
  /**
   * Lets go of the VM without stopping it (vmlet is shutting down): closes control connections and
   * watchers. A later driver.attach(dir) finds it again.
   */
  detach(): Promise<void>;
  /** Removes the VM directory (its disk included). Only after it exited. */
  destroy(): Promise<void>;
}

export interface Hypervisor {
  readonly kind: 'qemu' | 'vz';
  /** E.g. "qemu-system-x86_64 7.2.22 with TCG" — for logs and the Node's HypervisorReady message. */
  describe(): string;
  /** Creates a VM in `dir` (which must exist and be empty of driver files); does not start it. */
  create(spec: VmSpec, dir: string): Promise<Vm>;
  /**
   * Finds the VM a previous vmlet created in `dir`. A VM whose process still runs is re-attached (control
   * connection and exit watch restored); one whose process is gone comes back in state 'exited' with the
   * exit recorded, or 'Lost'. Returns undefined when `dir` holds no VM of this driver.
   */
  attach(dir: string): Promise<Vm | undefined>;
}

export class VmError extends Error {
  override name = 'VmError';
  constructor(
    /** CamelCase, as a container status reason. */
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}
