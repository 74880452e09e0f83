// A VM made from a stored image and brought up to a working agent: the path every VM takes, whether
// `vmlet vm run` asks for it or a pod does (issue 5). It marks the image in use (so garbage collection
// leaves it alone), clones its disk into the VM's own directory, boots it through a driver, and connects
// to the guest agent. A VM that dies before its agent answers, or an agent that does not answer in time,
// is a VmError with the reason and the console's last lines; nothing is left behind in either case.
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentClient, AgentError } from '../agent/host/client.ts';
import { VmError, type Hypervisor, type NetworkSpec, type ShareSpec, type Vm, type VmExit } from '../drivers/hypervisor.ts';
import { cloneDisk } from '../images/store/clone.ts';
import { CONFIG_FILE, DISK_FILE, NVRAM_FILE, type ImageStore, type StoredImage } from '../images/store/image-store.ts';
import { vmSpecFromImage, type ImageVmConfig } from './vm-spec.ts';

export interface LaunchOptions {
  store: ImageStore;
  driver: Hypervisor;
  /** Parent of VM directories (config `vmDir`); the VM gets `<vmDir>/<id>`. */
  vmDir: string;
  image: StoredImage;
  /** Default: a random id. */
  id?: string;
  name: string;
  cpus?: number;
  memoryMiB?: number;
  network?: NetworkSpec;
  shares?: ShareSpec[];
  extraCmdline?: string;
  /** From power-on to an answering agent (default 120 s: TCG guests are slow). */
  bootTimeoutMs?: number;
  /** Called as the boot goes: "cloned disk", "started", "agent ready". */
  onPhase?: (phase: 'cloned' | 'started' | 'ready', elapsedMs: number) => void;
}

export class VmInstance {
  private disposed = false;

  private constructor(
    readonly vm: Vm,
    readonly agent: AgentClient,
    private readonly store: ImageStore,
    readonly image: StoredImage,
    readonly id: string,
  ) {}

  get dir(): string {
    return this.vm.dir;
  }

  static async launch(opts: LaunchOptions): Promise<VmInstance> {
    const started = Date.now();
    const id = opts.id ?? `vm-${randomBytes(6).toString('hex')}`;
    const dir = path.join(opts.vmDir, id);
    const { store, image } = opts;
    await mkdir(dir, { recursive: true });
    let vm: Vm | undefined;
    let acquired = false;
    try {
      await store.acquire(image.digest, id);
      acquired = true;
      const clone = await cloneDisk(path.join(image.dir, DISK_FILE), path.join(dir, 'disk'), { allowOverlay: opts.driver.kind === 'qemu' });
      let nvram: string | undefined;
      if (image.layout.nvram) {
        nvram = path.join(dir, NVRAM_FILE);
        await copyFile(path.join(image.dir, NVRAM_FILE), nvram);
      }
      opts.onPhase?.('cloned', Date.now() - started);
      const config = JSON.parse(await readFile(path.join(image.dir, CONFIG_FILE), 'utf8')) as ImageVmConfig;
      const spec = vmSpecFromImage(image.dir, image.layout, config, {
        id,
        name: opts.name,
        ...(opts.cpus !== undefined ? { cpus: opts.cpus } : {}),
        ...(opts.memoryMiB !== undefined ? { memoryMiB: opts.memoryMiB } : {}),
        disk: { path: clone.path, format: clone.format },
        ...(nvram ? { nvram } : {}),
        network: opts.network ?? { mode: 'user', forwards: [] },
        shares: opts.shares ?? [],
        ...(opts.extraCmdline ? { extraCmdline: opts.extraCmdline } : {}),
      }, { cpus: os.availableParallelism(), maxMemoryMiB: Math.floor(os.totalmem() / 1024 / 1024 / 2) });
      vm = await opts.driver.create(spec, dir);
      await vm.start();
      opts.onPhase?.('started', Date.now() - started);
      const agent = await waitForAgent(vm, (opts.bootTimeoutMs ?? 120_000) - (Date.now() - started));
      opts.onPhase?.('ready', Date.now() - started);
      return new VmInstance(vm, agent, store, image, id);
    } catch (err) {
      if (vm && vm.state() !== 'exited') await vm.kill().catch(() => undefined);
      if (vm) await vm.destroy().catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
      if (acquired) await store.release(image.digest, id).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Stops the VM: the agent is asked to shut the guest down, then ACPI, then kill, all within timeoutMs;
   * then the VM's directory goes and the image is released.
   */
  async stop(timeoutMs = 30_000): Promise<VmExit> {
    const exit = this.vm.state() === 'exited'
      ? await this.vm.exited
      : await this.vm.stop({ timeoutMs, askGuest: () => this.agent.shutdown({ graceMs: Math.floor(timeoutMs / 4) }) });
    await this.dispose();
    return exit;
  }

  /** Removes what the VM left (after it exited) and releases the image. Safe to call twice. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.agent.close();
    if (this.vm.state() !== 'exited') await this.vm.kill().catch(() => undefined);
    await this.vm.destroy().catch(() => undefined);
    await rm(this.vm.dir, { recursive: true, force: true });
    await this.store.release(this.image.digest, this.id).catch(() => undefined);
  }
}

/** Connects to the agent channel and greets the agent, until it answers, the VM exits, or time runs out. */
async function waitForAgent(vm: Vm, timeoutMs: number): Promise<AgentClient> {
  const deadline = Date.now() + Math.max(timeoutMs, 0);
  let exit: VmExit | undefined;
  void vm.exited.then((e) => (exit = e));
  let last: Error | undefined;
  while (Date.now() < deadline && !exit) {
    const left = deadline - Date.now();
    try {
      const link = await vm.connectAgent(Math.min(left, 10_000));
      // The agent writes its HELLO only once it runs; until then the greeting is simply not answered.
      const connecting = AgentClient.connect(link, { timeoutMs: left, clientName: `vmlet ${vm.spec.name}` });
      const client = await Promise.race([connecting, vm.exited.then(() => undefined)]);
      if (client) return client;
      connecting.then((c) => c.close(), () => undefined);
      link.destroy();
    } catch (err) {
      last = err as Error;
      if (err instanceof AgentError && err.reason !== 'Disconnected' && err.reason !== 'Timeout') break;
      await sleep(200);
    }
  }
  const tail = await consoleTail(vm.consoleLog, 15);
  if (exit) {
    throw new VmError('BootFailed', `the VM exited before its agent answered (${exit.reason}: ${exit.message})${tail}`);
  }
  await vm.kill().catch(() => undefined);
  const why = last ? `: ${last.message}` : '';
  throw new VmError('BootTimeout', `the VM's agent did not answer within ${Math.round(timeoutMs / 1000)} s${why}${tail}`);
}

async function consoleTail(file: string, lines: number): Promise<string> {
  const text = await readFile(file, 'utf8').catch(() => '');
  const tail = text.trimEnd().split('\n').slice(-lines).join('\n  ');
  return tail ? `; console:\n  ${tail}` : '; the console is empty';
}
