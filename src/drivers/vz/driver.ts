// The Virtualization.framework driver: Hypervisor of hypervisor.ts on Apple Silicon Macs, for macOS and
// arm64 Linux guests. Each VM is one process of the vz helper (native/vz, Swift: the only part that
// touches Virtualization.framework), started detached so the VM outlives vmlet, and controlled over the
// JSON-lines protocol of docs/VZ-HELPER-PROTOCOL.md on a control socket in the VM dir; vm.json there
// records the spec, the helper (pid + start time), the MAC and how the VM ended, so attach(dir) finds it
// again after a vmlet restart.
//
// The agent channel is a virtio-socket: the helper listens on <dir>/agent.sock and proxies each
// connection to the guest's vsock port AGENT_VSOCK_PORT (Virtualization.framework has no host-side vsock
// addresses; its socket device hands out file descriptors per connection).
import { VmError, type Hypervisor, type Vm, type VmSpec } from '../hypervisor.ts';
import { silentLogger, type DriverLogger } from '../common/process-vm.ts';
import { attachRecorded, claimVmDir, recordForSpec } from '../common/vm-dir.ts';
import { macForId, startConfig, vzPaths } from './config.ts';
import { findHelper } from './host.ts';
import { readVzRecord, writeVzRecord } from './persist.ts';
import { newVzRecord } from './state.ts';
import { VzVm } from './vm.ts';

export interface VzDriverOptions {
  log?: DriverLogger;
  /** The helper's command (and leading arguments); default: the first vmlet-vz found (host.ts). */
  helper?: string[];
  /** How long start() waits for the helper and the VM (default 60 s). */
  startTimeoutMs?: number;
  /** How often a helper vmlet did not start itself is checked for (default 1 s). */
  pollMs?: number;
  /** Environment of the helper processes (default: vmlet's). */
  env?: NodeJS.ProcessEnv;
  /** How often a stop request the guest has not acted on is repeated (default 10 s). */
  softStopRepeatMs?: number;
}

export class VzDriver implements Hypervisor {
  readonly kind = 'vz' as const;

  private constructor(
    private readonly helperArgv: string[],
    private readonly version: string,
    private readonly opts: Required<Pick<VzDriverOptions, 'startTimeoutMs' | 'pollMs'>> & { log: DriverLogger; env?: NodeJS.ProcessEnv; softStopRepeatMs?: number },
  ) {}

  static async open(opts: VzDriverOptions = {}): Promise<VzDriver> {
    const log = opts.log ?? silentLogger;
    let helper = opts.helper;
    if (!helper) {
      const found = await findHelper();
      if (!found) throw new VmError('VzHelperNotFound', 'the vz helper (vmlet-vz) was not found: build it with scripts/build-vz-helper.sh, or set VMLET_VZ_HELPER');
      helper = [found];
    }
    const driver = new VzDriver(helper, 'protocol 1', {
      log,
      startTimeoutMs: opts.startTimeoutMs ?? 60_000,
      pollMs: opts.pollMs ?? 1000,
      ...(opts.env ? { env: opts.env } : {}),
      ...(opts.softStopRepeatMs ? { softStopRepeatMs: opts.softStopRepeatMs } : {}),
    });
    log.info({ helper: helper.join(' ') }, `vz driver: ${driver.describe()}`);
    return driver;
  }

  describe(): string {
    return `Virtualization.framework through ${this.helperArgv.at(-1)?.split('/').at(-1) ?? 'vmlet-vz'} (${this.version})`;
  }

  async create(spec: VmSpec, dir: string): Promise<Vm> {
    const paths = vzPaths(dir);
    await claimVmDir(dir);
    const mac = macForId(spec.id);
    startConfig(spec, paths, mac); // what vz cannot run is refused now, with its reason
    const record = recordForSpec(spec, () => newVzRecord(spec, mac, paths, new Date()));
    await writeVzRecord(paths.state, record);
    return new VzVm(record, dir, this.context());
  }

  async attach(dir: string): Promise<Vm | undefined> {
    return attachRecorded(() => readVzRecord(vzPaths(dir).state), (record) => new VzVm(record, dir, this.context()));
  }

  private context() {
    return { helperArgv: this.helperArgv, log: this.opts.log, startTimeoutMs: this.opts.startTimeoutMs, pollMs: this.opts.pollMs, softStopRepeatMs: this.opts.softStopRepeatMs, ...(this.opts.env ? { env: this.opts.env } : {}) };
  }
}
