// The QEMU driver: Hypervisor of hypervisor.ts for Linux guests, on Linux (KVM or TCG) and macOS (HVF).
//
// Construction: `const driver = await QemuDriver.open({ log })` finds QEMU, the firmware and the
// accelerator once (host.ts), then `driver.create(spec, dir)` / `driver.attach(dir)` hand out Vms (vm.ts).
//
// Each VM is a QEMU process started detached in its own session, so it outlives vmlet; vm.json in the VM
// dir records the spec, the process (pid + start time + boot id + argv: a reused pid is never adopted),
// the sockets, the state and how it exited; attach(dir) picks it up from there.
//
// Control is QMP on a unix socket in the VM dir. The guest agent's channel is a virtio-serial port named
// org.vmlet.agent.0 on a unix-socket chardev in the VM dir (QEMU is the server; connectAgent() connects).
// Why virtio-serial and not vsock or TCP: it needs no guest network and no host vsock module (vhost_vsock
// is often missing or unloadable in containers and nested VMs, and needs a host-wide unique CID); it is a
// plain file on the host, so only vmlet (by file permissions) can reach the agent; and it is carried in
// QEMU's migration stream, so a restored guest's channel works again once the host reconnects. Its costs:
// one host connection at a time (the runtime multiplexes over it) and a port name, not an address, in the
// guest. See src/drivers/README.md.
import type { Hypervisor, Vm, VmSpec } from '../hypervisor.ts';
import { silentLogger, type DriverLogger } from '../common/process-vm.ts';
import { attachRecorded, claimVmDir, recordForSpec } from '../common/vm-dir.ts';
import { vmPaths } from './args.ts';
import { detectHost, type DetectedHost, type HostOptions } from './host.ts';
import { readRecord, writeRecord } from './persist.ts';
import { newRecord } from './state.ts';
import { QemuVm } from './vm.ts';

export interface QemuDriverOptions extends HostOptions {
  /** pino or anything with info/warn/debug(obj, msg). */
  log?: DriverLogger;
  /** How long start() waits for QEMU's QMP to answer (default 30 s). */
  startTimeoutMs?: number;
}

export class QemuDriver implements Hypervisor {
  readonly kind = 'qemu' as const;

  private constructor(
    readonly host: DetectedHost,
    private readonly log: DriverLogger,
    private readonly startTimeoutMs: number,
  ) {}

  /** Looks at the host once (QEMU version, firmware, accelerator, which it logs) and returns the driver. */
  static async open(opts: QemuDriverOptions = {}): Promise<QemuDriver> {
    const log = opts.log ?? silentLogger;
    const host = await detectHost(opts);
    const driver = new QemuDriver(host, log, opts.startTimeoutMs ?? 30_000);
    log.info({ accelerator: host.accelerator, qemu: host.version, firmware: host.firmware }, `QEMU driver: ${driver.describe()}`);
    return driver;
  }

  describe(): string {
    const binary = this.host.binaries[this.host.arch] ?? 'qemu';
    return `${binary.split('/').at(-1)} ${this.host.version} with ${this.host.acceleratorNote}`;
  }

  async create(spec: VmSpec, dir: string): Promise<Vm> {
    const paths = vmPaths(dir);
    await claimVmDir(dir);
    const record = recordForSpec(spec, () => newRecord(spec, paths, new Date()));
    await writeRecord(paths.state, record);
    return new QemuVm(record, dir, this.context());
  }

  async attach(dir: string): Promise<Vm | undefined> {
    return attachRecorded(() => readRecord(vmPaths(dir).state), (record) => new QemuVm(record, dir, this.context()));
  }

  private context(): { host: DetectedHost; log: DriverLogger; startTimeoutMs: number } {
    return { host: this.host, log: this.log, startTimeoutMs: this.startTimeoutMs };
  }
}
