// A VM made from a stored image and brought up to a working agent: the path every VM takes, whether
// `vmlet vm run` asks for it or a pod does (issue 5). It marks the image in use (so garbage collection
// leaves it alone), clones its disk into the VM's own directory, boots it through a driver, and connects
// to the guest agent. A VM that dies before its agent answers, or an agent that does not answer in time,
// is a VmError with the reason and the console's last lines; nothing is left behind in either case.
//
// Images without the agent but with SSH (stock macOS images with Remote Login): given SSH credentials,
// the guest's port 22 is forwarded, and if the agent has not answered shortly after SSH does, the agent
// is installed over SSH (src/agent/ssh/install.ts) and started; from then on the VM is like any other.
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { ensureAgentBundle } from '../agent/bundle.ts';
import { ensureAgentBinary } from '../agent/sea.ts';
import { AgentClient, AgentError } from '../agent/host/client.ts';
import { waitForSsh } from '../agent/ssh/client.ts';
import type { SshCredentials } from '../agent/ssh/credentials.ts';
import { installAgentOverSsh } from '../agent/ssh/install.ts';
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
  /** Called as the boot goes: disk cloned, VM started, agent installed over SSH, agent ready. */
  onPhase?: (phase: 'cloned' | 'started' | 'installed' | 'ready', elapsedMs: number) => void;
  /** For images that may lack the agent: install it over SSH when it does not answer by itself. */
  ssh?: SshFallback;
}

export interface SshFallback {
  credentials: SshCredentials;
  /** The guest's SSH port (default 22); forwarded from a free loopback port (user-mode network only). */
  guestPort?: number;
  /** How long after SSH answers a built-in agent gets before one is installed (default 10 s). */
  agentGraceMs?: number;
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
      let network = opts.network ?? { mode: 'user', forwards: [] };
      let sshPort: number | undefined;
      if (opts.ssh) {
        if (network.mode !== 'user') throw new VmError('InvalidVmConfig', 'the SSH fallback needs user-mode networking (a forwarded port)');
        sshPort = await freeLoopbackPort();
        network = { ...network, forwards: [...network.forwards, { protocol: 'tcp', hostAddress: '127.0.0.1', hostPort: sshPort, guestPort: opts.ssh.guestPort ?? 22 }] };
      }
      const spec = vmSpecFromImage(image.dir, image.layout, config, {
        id,
        name: opts.name,
        ...(opts.cpus !== undefined ? { cpus: opts.cpus } : {}),
        ...(opts.memoryMiB !== undefined ? { memoryMiB: opts.memoryMiB } : {}),
        disk: { path: clone.path, format: clone.format },
        ...(nvram ? { nvram } : {}),
        network,
        shares: opts.shares ?? [],
        ...(opts.extraCmdline ? { extraCmdline: opts.extraCmdline } : {}),
      }, { cpus: os.availableParallelism(), maxMemoryMiB: Math.floor(os.totalmem() / 1024 / 1024 / 2) });
      vm = await opts.driver.create(spec, dir);
      await vm.start();
      opts.onPhase?.('started', Date.now() - started);
      const timeoutMs = (opts.bootTimeoutMs ?? 120_000) - (Date.now() - started);
      const state: AgentWait = { ready: false };
      if (opts.ssh && sshPort !== undefined) {
        const booted = vm;
        void installWhenMissing(booted, opts.ssh, sshPort, Date.now() + timeoutMs, state).then(
          () => opts.onPhase?.('installed', Date.now() - started),
          (err: unknown) => {
            state.sshProblem = (err as Error).message;
            state.giveUpAt = Date.now() + (opts.ssh?.agentGraceMs ?? 10_000);
          },
        ).catch(() => undefined);
      }
      const agent = await waitForAgent(vm, timeoutMs, state);
      state.ready = true;
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
   * Takes over a VM a previous vmlet launched in `<vmDir>/<id>` (after a restart): re-attaches the driver
   * to the running process and greets its agent again. The image stays marked in use under `id`.
   * Returns undefined when the directory holds no running VM (it is then cleaned up).
   */
  static async adopt(opts: { store: ImageStore; driver: Hypervisor; vmDir: string; id: string; imageDigest: string; timeoutMs?: number }): Promise<VmInstance | undefined> {
    const dir = path.join(opts.vmDir, opts.id);
    const vm = await opts.driver.attach(dir).catch(() => undefined);
    const image = await opts.store.get(opts.imageDigest);
    if (!vm || vm.state() === 'exited' || !image) {
      if (vm && vm.state() !== 'exited') await vm.kill().catch(() => undefined);
      await vm?.destroy().catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
      await opts.store.release(opts.imageDigest, opts.id).catch(() => undefined);
      return undefined;
    }
    const agent = await AgentClient.connect(await vm.connectAgent(opts.timeoutMs ?? 10_000), { timeoutMs: opts.timeoutMs ?? 10_000, clientName: `vmlet ${vm.spec.name}` });
    return new VmInstance(vm, agent, opts.store, image, opts.id);
  }

  /** Lets go of the VM without stopping it (vmlet is shutting down); adopt() takes it over again. */
  async detach(): Promise<void> {
    this.disposed = true;
    this.agent.close();
    await this.vm.detach();
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

interface AgentWait {
  ready: boolean;
  /** Why the SSH fallback could not install the agent, when it tried and failed. */
  sshProblem?: string;
  /** After the SSH fallback failed, the wait ends here rather than at the boot timeout. */
  giveUpAt?: number;
}

/**
 * The SSH fallback: waits for SSH, gives a built-in agent `agentGraceMs` to answer, and otherwise installs
 * and starts the agent over SSH. Resolves quietly when there was nothing to do; rejects with why not.
 */
async function installWhenMissing(vm: Vm, ssh: SshFallback, port: number, deadline: number, state: AgentWait): Promise<void> {
  const conn = await waitForSsh({
    host: '127.0.0.1', port, credentials: ssh.credentials, hostKeyFile: path.join(vm.dir, 'ssh-host-key'),
    totalTimeoutMs: Math.max(deadline - Date.now(), 1000),
  });
  try {
    const graceEnds = Date.now() + (ssh.agentGraceMs ?? 10_000);
    while (!state.ready && Date.now() < graceEnds && vm.state() !== 'exited') await sleep(200);
    if (state.ready || vm.state() === 'exited') return;
    // The bundle where the guest has Node 20+, else the self-contained binary for its platform.
    await installAgentOverSsh(conn, { bundlePath: await ensureAgentBundle(), agentBinary: (target) => ensureAgentBinary(target) });
  } finally {
    conn.close();
  }
}

async function freeLoopbackPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Connects to the agent channel and greets the agent, until it answers, the VM exits, or time runs out. */
async function waitForAgent(vm: Vm, timeoutMs: number, state: AgentWait = { ready: false }): Promise<AgentClient> {
  const deadline = Date.now() + Math.max(timeoutMs, 0);
  let exit: VmExit | undefined;
  void vm.exited.then((e) => (exit = e));
  let last: Error | undefined;
  const over = () => Date.now() >= deadline || (state.giveUpAt !== undefined && Date.now() >= state.giveUpAt);
  while (!over() && !exit) {
    // Short greetings, so that a failed SSH fallback (giveUpAt) ends the wait soon.
    const left = Math.min(deadline - Date.now(), 5000);
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
  if (state.sshProblem) throw new VmError('AgentUnavailable', `the VM's agent did not answer, and it could not be installed over SSH: ${state.sshProblem}${tail}`);
  const why = last ? `: ${last.message}` : '';
  throw new VmError('BootTimeout', `the VM's agent did not answer within ${Math.round(timeoutMs / 1000)} s${why}${tail}`);
}

async function consoleTail(file: string, lines: number): Promise<string> {
  const text = await readFile(file, 'utf8').catch(() => '');
  const tail = text.trimEnd().split('\n').slice(-lines).join('\n  ');
  return tail ? `; console:\n  ${tail}` : '; the console is empty';
}
