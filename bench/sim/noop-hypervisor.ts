// A Hypervisor that boots nothing, for the fleet simulation in bench/pods.ts: many node agents in one
// process, each with a PodController and a PodRuntime, none of which may start a VM. It finds no VM in any
// directory (so PodRuntime.adopt() keeps nothing), and a VM it is asked to create refuses to start with a
// BootFailed saying why. Not a driver for real use; it lives under bench/ on purpose.
import type { Duplex } from 'node:stream';
import { VmError, type Hypervisor, type Vm, type VmExit, type VmSpec, type VmState } from '../../src/drivers/hypervisor.ts';

const REFUSED = 'simulated node: the no-op hypervisor boots nothing';

class NoopVm implements Vm {
  readonly consoleLog: string;
  readonly exited: Promise<VmExit>;
  private current: VmState = 'created';

  constructor(readonly spec: VmSpec, readonly dir: string) {
    this.consoleLog = `${dir}/console.log`;
    this.exited = Promise.resolve({ reason: 'BootFailed', message: REFUSED, at: new Date() });
  }

  state(): VmState {
    return this.current;
  }

  pid(): number | undefined {
    return undefined;
  }

  async start(): Promise<void> {
    this.current = 'exited';
    throw new VmError('BootFailed', REFUSED);
  }

  async connectAgent(): Promise<Duplex> {
    throw new VmError('BootFailed', REFUSED);
  }

  async stop(): Promise<VmExit> {
    this.current = 'exited';
    return this.exited;
  }

  async kill(): Promise<VmExit> {
    return this.stop();
  }

  async pause(): Promise<void> {}

  async resume(): Promise<void> {}

  async save(): Promise<void> {
    throw new VmError('NotSupported', REFUSED);
  }

  async usage(): Promise<{ cpuSeconds: number; rssBytes: number; diskBytes: number }> {
    return { cpuSeconds: 0, rssBytes: 0, diskBytes: 0 };
  }

  async detach(): Promise<void> {}

  async destroy(): Promise<void> {}
}

export class NoopHypervisor implements Hypervisor {
  readonly kind = 'qemu' as const;

  describe(): string {
    return 'no-op hypervisor (simulation: boots nothing)';
  }

  async create(spec: VmSpec, dir: string): Promise<Vm> {
    return new NoopVm(spec, dir);
  }

  async attach(): Promise<Vm | undefined> {
    return undefined;
  }
}
