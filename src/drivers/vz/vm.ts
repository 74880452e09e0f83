// One vz VM: the Vm of hypervisor.ts over a detached vz helper process (native/vz, one VM per process),
// its control socket and vm.json. This is the I/O shell; the start config, the protocol, the record and
// the exit classification are the pure modules next to it.
//
// The helper is started detached in its own session, so the VM outlives vmlet. Control always goes
// through the helper's control socket (<dir>/control.sock), whether vmlet started the helper or found it
// again after a restart: the same JSON-lines protocol either way (docs/VZ-HELPER-PROTOCOL.md). Exits are
// seen from the child's 'exit' while vmlet is the parent, else from the socket closing plus the pid
// (checked with its start time) being gone; the helper's `stopped` event, or its exit file when no vmlet
// listened, says how the VM ended.
import type { ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import { readFile, rename, rm, stat } from 'node:fs/promises';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { VmError, type StartOptions, type StopOptions, type Vm, type VmExit, type VmSpec, type VmState, type VmUsage } from '../hypervisor.ts';
import { startConfig, vzPaths, type VzPaths } from './config.ts';
import { HelperRequestError, VzControl } from './control.ts';
import { discoverIp, type FoundIp } from './ip.ts';
import { helperAlive, helperUsage, signalHelper, spawnHelper } from './process.ts';
import { describeHelperError, type HelperError, type HelperEvent, type HelperState } from './protocol.ts';
import { writeVzRecord } from './persist.ts';
import { classifyVzExit, parseExitFile, type VzIntent, type VzRecord } from './state.ts';
import { connectUnix } from '../../host/unix-socket.ts';

const run = promisify(execFile);

export interface DriverLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
}

export const silentLogger: DriverLogger = { info() {}, warn() {}, debug() {} };

export interface VzVmContext {
  /** The helper's command and any leading arguments; `serve --dir DIR` is appended. */
  helperArgv: string[];
  log: DriverLogger;
  /** How long start() waits for the helper to answer and the VM to reach running. */
  startTimeoutMs: number;
  /** How often a helper that is not vmlet's child is checked for. */
  pollMs: number;
  env?: NodeJS.ProcessEnv;
}

export class VzVm implements Vm {
  readonly spec: VmSpec;
  readonly dir: string;
  readonly consoleLog: string;
  private readonly paths: VzPaths;
  private record: VzRecord;
  private control: VzControl | undefined;
  private child: ChildProcess | undefined;
  private childExit: { code: number | null; signal: string | null } | undefined;
  private startError: HelperError | undefined;
  private poll: NodeJS.Timeout | undefined;
  private starting = false;
  private detached = false;
  private finishing: Promise<void> | undefined;
  private exitedPromise!: Promise<VmExit>;
  private resolveExited!: (exit: VmExit) => void;
  private persistChain: Promise<void> = Promise.resolve();

  constructor(record: VzRecord, dir: string, private readonly ctx: VzVmContext) {
    this.record = record;
    this.spec = record.spec;
    this.dir = dir;
    this.paths = vzPaths(dir);
    this.consoleLog = record.consoleLog;
    this.newExitPromise();
    if (record.exit) this.resolveExited({ ...record.exit, at: new Date(record.exit.at) });
  }

  get exited(): Promise<VmExit> {
    return this.exitedPromise;
  }

  /** The MAC address of the VM's NIC. */
  get macAddress(): string {
    return this.record.mac;
  }

  state(): VmState {
    return this.record.state;
  }

  pid(): number | undefined {
    return this.record.state === 'exited' || this.record.state === 'created' ? undefined : this.record.helper?.pid;
  }

  async start(opts: StartOptions = {}): Promise<void> {
    if (this.detached) throw new VmError('Detached', `VM ${this.spec.id} was detached; attach it again`);
    if (this.record.state !== 'created' && this.record.state !== 'exited') {
      throw new VmError('InvalidState', `VM ${this.spec.id} is ${this.record.state}; only a created or exited VM can start`);
    }
    let config;
    try {
      config = startConfig(this.spec, this.paths, this.record.mac);
    } catch (err) {
      throw err instanceof VmError ? err : new VmError('BootFailed', (err as Error).message);
    }
    if (opts.restoreFrom) {
      await stat(opts.restoreFrom).catch(() => {
        throw new VmError('BootFailed', `no saved state at ${opts.restoreFrom}`);
      });
    }
    this.newExitPromise();
    this.record = { ...this.record, state: 'starting', helper: undefined, exit: undefined, intent: undefined, lastStop: undefined };
    this.childExit = undefined;
    this.startError = undefined;
    this.finishing = undefined;
    this.starting = true;
    await this.removeRuntimeFiles();
    try {
      const spawned = await spawnHelper([...this.ctx.helperArgv, 'serve', '--dir', this.dir], this.paths.helperLog, this.ctx.env);
      this.child = spawned.child;
      spawned.child.once('exit', (code, signal) => {
        this.childExit = { code, signal };
        this.onGoneLogged();
      });
      this.record.helper = spawned.record;
      await this.persist();
      this.ctx.log.info({ vm: this.spec.id, pid: spawned.record.pid }, 'vz helper started');
      const control = await VzControl.connect(this.paths.control, this.ctx.startTimeoutMs, () => (this.childExit ? 'the vz helper exited before its control socket answered' : undefined));
      this.useControl(control);
      const result = await control.request({ op: 'start', config, ...(opts.restoreFrom ? { restoreFrom: opts.restoreFrom } : {}) }, this.ctx.startTimeoutMs);
      this.record.state = result.state === 'paused' ? 'paused' : 'running';
      this.starting = false;
      await this.persist();
    } catch (err) {
      const helperError = err instanceof HelperRequestError ? err.error : undefined;
      this.startError = helperError;
      // Nothing half-started stays behind: the helper goes, and start() says why.
      if (!this.isExited()) {
        if (this.record.helper) {
          this.record.intent = { kind: 'kill', message: `start failed: ${(err as Error).message}` };
          await this.forceDown(3000);
        } else {
          await this.finish({ reason: 'BootFailed', message: (err as Error).message, exitCode: null, signal: null, at: new Date() });
        }
      }
      this.starting = false;
      if (helperError) {
        const { reason, message } = describeHelperError(helperError, `VM ${this.spec.id} could not start`);
        throw new VmError(reason, message);
      }
      throw new VmError('BootFailed', (err as Error).message);
    }
  }

  async connectAgent(timeoutMs = 10_000): Promise<Duplex> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.record.state === 'exited') throw new VmError('NotRunning', `VM ${this.spec.id} has exited; no agent to connect to`);
      try {
        return await connectUnix(this.paths.agentSocket);
      } catch (err) {
        if (Date.now() >= deadline) {
          throw new VmError('AgentUnreachable', `cannot connect to the agent's vsock proxy ${this.paths.agentSocket} within ${timeoutMs} ms: ${(err as Error).message}`);
        }
        await sleep(50);
      }
    }
  }

  async stop(opts: StopOptions): Promise<VmExit> {
    if (this.record.state === 'exited') return this.exitedPromise;
    this.assertStarted('stop');
    const deadline = Date.now() + opts.timeoutMs;
    const half = Date.now() + opts.timeoutMs / 2;
    const wasPaused = this.record.state === 'paused';
    await this.setIntent({ kind: 'stop', message: 'stopped by vmlet' }, 'stopping');
    if (opts.askGuest) {
      this.record.intent = { kind: 'stop', message: 'stopped by vmlet through the guest agent' };
      const asked = opts.askGuest().then(
        () => true,
        (err: unknown) => {
          this.ctx.log.warn({ vm: this.spec.id, err: (err as Error).message }, 'the guest agent did not take the shutdown request');
          return false;
        },
      );
      const accepted = await Promise.race([asked, this.exitedPromise.then(() => true), sleep(Math.max(0, half - Date.now()), true)]);
      if (accepted && (await this.exitedBy(half))) return this.exitedPromise;
    }
    if (!this.isExited()) {
      this.record.intent = { kind: 'stop', message: 'stopped by vmlet with a stop request to the guest (requestStop)' };
      await this.persist();
      const left = (): number => Math.max(100, deadline - Date.now());
      try {
        // A paused guest cannot see the request.
        if (wasPaused) await this.control?.request({ op: 'resume' }, left()).catch(() => {});
        await this.control?.request({ op: 'stop' }, left());
      } catch (err) {
        this.ctx.log.warn({ vm: this.spec.id, err: (err as Error).message }, 'requestStop failed');
      }
      if (await this.exitedBy(deadline)) return this.exitedPromise;
    }
    await this.setIntent({ kind: 'kill', message: `did not shut down within ${(opts.timeoutMs / 1000).toFixed(1)} s of a stop request; stopped by force` });
    await this.forceDown(3000);
    return this.exitedPromise;
  }

  async kill(): Promise<VmExit> {
    if (this.record.state === 'exited') return this.exitedPromise;
    this.assertStarted('kill');
    await this.setIntent({ kind: 'kill', message: 'killed by vmlet' }, 'stopping');
    await this.forceDown(3000);
    return this.exitedPromise;
  }

  async pause(): Promise<void> {
    this.assertRunning('pause');
    await this.call({ op: 'pause' }, 'pause');
    this.record.state = 'paused';
    await this.persist();
  }

  async resume(): Promise<void> {
    this.assertRunning('resume');
    await this.call({ op: 'resume' }, 'resume');
    this.record.state = 'running';
    await this.persist();
  }

  /** saveMachineStateTo (macOS 14+): the VM is paused first, and stays paused. */
  async save(file: string): Promise<void> {
    this.assertRunning('save');
    if (this.record.state === 'running') await this.pause();
    const partial = `${file}.partial`;
    await rm(partial, { force: true });
    try {
      await this.call({ op: 'save', path: partial }, 'save', 10 * 60_000);
    } catch (err) {
      await rm(partial, { force: true });
      throw err;
    }
    await rename(partial, file);
    this.record.state = 'paused';
    await this.persist();
  }

  async usage(): Promise<VmUsage> {
    const diskBytes = await stat(this.spec.disk.path).then((s) => s.blocks * 512, () => 0);
    const rec = this.record.helper;
    if (!rec || this.record.state === 'exited' || !(await helperAlive(rec))) return { cpuSeconds: 0, rssBytes: 0, diskBytes };
    return { ...(await helperUsage(rec.pid)), diskBytes };
  }

  /**
   * The guest's IPv4 address: the agent's answer first (askAgent), then macOS's DHCP leases by this VM's
   * MAC, then the ARP cache. Undefined while nobody knows it yet.
   */
  async ipAddress(askAgent?: () => Promise<string | undefined>): Promise<FoundIp | undefined> {
    return discoverIp(this.record.mac, {
      ...(askAgent ? { askAgent } : {}),
      readLeases: () => readFile('/var/db/dhcpd_leases', 'utf8').catch(() => undefined),
      runArp: async () => (await run('arp', ['-an'], { timeout: 5000 })).stdout,
    });
  }

  async detach(): Promise<void> {
    this.detached = true;
    clearInterval(this.poll);
    this.child?.removeAllListeners('exit');
    this.child?.unref();
    this.control?.removeAllListeners();
    this.control?.close();
    this.control = undefined;
    await this.persistChain;
  }

  async destroy(): Promise<void> {
    if (this.record.state !== 'exited' && this.record.state !== 'created') {
      throw new VmError('InvalidState', `VM ${this.spec.id} is ${this.record.state}; stop or kill it before destroying it`);
    }
    await this.finishing;
    await this.detach();
    await rm(this.dir, { recursive: true, force: true });
  }

  // ---- re-attach (driver.attach) ----

  async reattach(): Promise<void> {
    if (this.record.state === 'exited' || this.record.state === 'created') return;
    const rec = this.record.helper;
    if (!rec || !(await helperAlive(rec))) {
      const stop = this.record.lastStop ?? (await this.readExitFile());
      const exit: VmExit = stop
        ? { ...classifyVzExit({ intent: this.record.intent, stop, duringStart: false }), at: new Date() }
        : { reason: 'Lost', message: 'the vz helper ended while vmlet was not running; nothing says how', exitCode: null, signal: null, at: new Date() };
      await this.finish(exit);
      return;
    }
    this.watchNotChild();
    try {
      const control = await VzControl.connect(this.paths.control, 10_000, () => (this.isExited() ? 'the vz helper exited' : undefined));
      this.useControl(control);
      this.applyHelperState(control.hello.state);
      await this.persist();
    } catch (err) {
      this.ctx.log.warn({ vm: this.spec.id, err: (err as Error).message }, 're-attached without a control connection');
    }
    this.ctx.log.info({ vm: this.spec.id, pid: rec.pid, state: this.record.state }, 're-attached to a running vz VM');
  }

  // ---- internals ----

  private newExitPromise(): void {
    this.exitedPromise = new Promise<VmExit>((resolve) => (this.resolveExited = resolve));
  }

  private useControl(control: VzControl): void {
    this.control = control;
    control.on('event', (ev) => this.onEvent(ev));
    control.on('close', () => {
      if (this.control === control) this.control = undefined;
      // Not our child: the socket closing is the first sign of an exit; the pid confirms it.
      const rec = this.record.helper;
      if (!this.child && rec && !this.detached) {
        void (async () => {
          for (let i = 0; i < 40 && (await helperAlive(rec)); i++) await sleep(50);
          if (!(await helperAlive(rec))) this.onGoneLogged();
        })();
      }
    });
  }

  private watchNotChild(): void {
    const rec = this.record.helper;
    if (!rec) return;
    this.poll = setInterval(() => {
      void helperAlive(rec).then((alive) => {
        if (!alive) this.onGoneLogged();
      });
    }, this.ctx.pollMs);
    this.poll.unref();
  }

  private onEvent(ev: HelperEvent): void {
    if (ev.event === 'stopped') {
      this.record.lastStop = { cause: ev.cause, ...(ev.error ? { error: ev.error } : {}) };
      void this.persist();
    } else if (ev.event === 'state') {
      if (this.applyHelperState(ev.state)) void this.persist();
    } else {
      this.ctx.log.warn({ vm: this.spec.id, event: ev.event, err: ev.error.message }, 'vz helper reported a device error');
    }
    this.ctx.log.debug({ vm: this.spec.id, event: ev }, 'vz helper event');
  }

  /** Follows the helper's running/paused; true when the record changed. */
  private applyHelperState(state: HelperState): boolean {
    if (this.isExited() || this.starting) return false;
    if (state === 'running' && this.record.state === 'paused') this.record.state = 'running';
    else if (state === 'paused' && this.record.state === 'running') this.record.state = 'paused';
    else return false;
    return true;
  }

  private onGoneLogged(): void {
    this.onGone().catch((err: unknown) => this.ctx.log.warn({ vm: this.spec.id, err: (err as Error).message }, 'could not record the VM exit'));
  }

  private onGone(): Promise<void> {
    if (this.detached) return Promise.resolve();
    this.finishing ??= (async () => {
      clearInterval(this.poll);
      this.control?.close();
      this.control = undefined;
      const stop = this.record.lastStop ?? (await this.readExitFile());
      const exit: VmExit = {
        ...classifyVzExit({
          intent: this.record.intent,
          ...(stop ? { stop } : {}),
          ...(this.childExit ? { child: this.childExit } : {}),
          duringStart: this.starting,
          ...(this.startError ? { startError: this.startError } : {}),
        }),
        at: new Date(),
      };
      await this.finish(exit);
    })();
    return this.finishing;
  }

  private async finish(exit: VmExit): Promise<void> {
    this.record.state = 'exited';
    this.record.exit = { ...exit, at: exit.at.toISOString() };
    this.child = undefined;
    try {
      await rm(this.paths.control, { force: true });
      await rm(this.paths.agentSocket, { force: true });
      await this.persist();
    } finally {
      this.ctx.log.info({ vm: this.spec.id, reason: exit.reason, exitCode: exit.exitCode, signal: exit.signal }, `VM exited: ${exit.message}`);
      this.resolveExited(exit);
    }
  }

  private async readExitFile(): Promise<ReturnType<typeof parseExitFile>> {
    return parseExitFile(await readFile(this.paths.exitFile, 'utf8').catch(() => ''));
  }

  /** forceStop through the helper; SIGKILL to the helper if it has not gone within graceMs. */
  private async forceDown(graceMs: number): Promise<void> {
    await this.persist();
    await this.control?.request({ op: 'forceStop' }, graceMs).catch(() => {});
    if (await this.exitedOrTimeout(graceMs)) return;
    const rec = this.record.helper;
    if (this.child && !this.childExit) this.child.kill('SIGKILL');
    else if (rec) await signalHelper(rec, 'SIGKILL');
    if (!(await this.exitedOrTimeout(5000)) && !this.child) this.onGoneLogged();
    await this.exitedOrTimeout(5000);
  }

  private async call(req: Parameters<VzControl['request']>[0], what: string, timeoutMs?: number): Promise<Record<string, unknown>> {
    if (!this.control) throw new VmError('NotConnected', `VM ${this.spec.id}: no control connection to the vz helper`);
    try {
      return await this.control.request(req, timeoutMs);
    } catch (err) {
      if (err instanceof HelperRequestError) {
        const { reason, message } = describeHelperError(err.error, `${what} VM ${this.spec.id}`);
        throw new VmError(what === 'save' && reason !== 'NotSupported' ? 'SaveFailed' : reason, message);
      }
      throw err;
    }
  }

  private async removeRuntimeFiles(): Promise<void> {
    await Promise.all([this.paths.control, this.paths.agentSocket, this.paths.exitFile].map((f) => rm(f, { force: true })));
  }

  private async setIntent(intent: VzIntent, state?: VmState): Promise<void> {
    this.record.intent = intent;
    if (state && this.record.state !== 'exited') this.record.state = state;
    await this.persist();
  }

  private async exitedBy(deadline: number): Promise<boolean> {
    return this.exitedOrTimeout(deadline - Date.now());
  }

  private async exitedOrTimeout(ms: number): Promise<boolean> {
    if (this.record.state === 'exited') return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), Math.max(0, ms))));
    try {
      return await Promise.race([this.exitedPromise.then(() => true as const), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private isExited(): boolean {
    return this.record.state === 'exited';
  }

  private assertStarted(what: string): void {
    if (this.detached) throw new VmError('Detached', `VM ${this.spec.id} was detached; attach it again to ${what} it`);
    if (this.record.state === 'created') throw new VmError('InvalidState', `VM ${this.spec.id} was never started; nothing to ${what}`);
  }

  private assertRunning(what: string): void {
    this.assertStarted(what);
    if (this.record.state !== 'running' && this.record.state !== 'paused') {
      throw new VmError('InvalidState', `VM ${this.spec.id} is ${this.record.state}; cannot ${what} it`);
    }
  }

  private persist(): Promise<void> {
    this.record.updatedAt = new Date().toISOString();
    const snapshot = structuredClone(this.record);
    this.persistChain = this.persistChain.then(
      () => writeVzRecord(this.paths.state, snapshot),
      () => writeVzRecord(this.paths.state, snapshot),
    );
    return this.persistChain;
  }
}
