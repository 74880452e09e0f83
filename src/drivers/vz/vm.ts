// One vz VM: the Vm of hypervisor.ts over a detached vz helper process (native/vz, one VM per process),
// its control socket and vm.json. This is the I/O shell; the start config, the protocol, the record and
// the exit classification are the pure modules next to it.
//
// The helper is started detached in its own session, so the VM outlives vmlet. Control always goes
// through the helper's control socket (<dir>/control.sock), whether vmlet started the helper or found it
// again after a restart: the same JSON-lines protocol either way (docs/VZ-HELPER-PROTOCOL.md). Exits are
// seen from the child's 'exit' while vmlet is the parent, else from the socket closing plus the pid
// (checked with its start time) being gone; the helper's `stopped` event, or its exit file when no vmlet
// listened, says how the VM ended. The lifecycle both drivers share (exited, stop's steps, detach,
// re-attach) is ../common/process-vm.ts.
import { execFile } from 'node:child_process';
import { readFile, rm, stat } from 'node:fs/promises';
import { promisify } from 'node:util';
import { VmError, type StartOptions, type VmExit, type VmUsage } from '../hypervisor.ts';
import { ProcessVm, type DriverLogger } from '../common/process-vm.ts';
import { startConfig, vzPaths, type VzPaths } from './config.ts';
import { HelperRequestError, VzControl } from './control.ts';
import { discoverIp, type FoundIp } from './ip.ts';
import { helperAlive, helperUsage, signalHelper, spawnHelper } from './process.ts';
import { describeHelperError, type HelperError, type HelperEvent, type HelperState } from './protocol.ts';
import { writeVzRecord } from './persist.ts';
import { classifyVzExit, parseExitFile, type VzProcess, type VzRecord } from './state.ts';

const run = promisify(execFile);

export interface VzVmContext {
  /** The helper's command and any leading arguments; `serve --dir DIR` is appended. */
  helperArgv: string[];
  log: DriverLogger;
  /** How long start() waits for the helper to answer and the VM to reach running. */
  startTimeoutMs: number;
  /** How often a helper that is not vmlet's child is checked for. */
  pollMs: number;
  /** How often a stop request the guest has not acted on is repeated (default 10 s). */
  softStopRepeatMs?: number | undefined;
  env?: NodeJS.ProcessEnv;
}

export class VzVm extends ProcessVm<VzRecord, VzProcess, VzControl> {
  readonly consoleLog: string;
  private readonly paths: VzPaths;
  private startError: HelperError | undefined;

  constructor(record: VzRecord, dir: string, private readonly ctx: VzVmContext) {
    const paths = vzPaths(dir);
    super(record, dir, {
      log: ctx.log,
      agentSocket: paths.agentSocket,
      processAlive: helperAlive,
      signalProcess: signalHelper,
      pollMs: ctx.pollMs,
      unrefPoll: true,
      softStopRepeatMs: ctx.softStopRepeatMs,
      words: {
        agentChannel: "the agent's vsock proxy",
        softStopIntent: 'stopped by vmlet with a stop request to the guest (requestStop)',
        hardStopped: 'stopped by force',
        reattachedWithoutControl: 're-attached without a control connection',
        reattached: 're-attached to a running vz VM',
      },
    });
    this.paths = paths;
    this.consoleLog = record.consoleLog;
  }

  /** The MAC address of the VM's NIC. */
  get macAddress(): string {
    return this.record.mac;
  }

  async start(opts: StartOptions = {}): Promise<void> {
    this.assertCanStart();
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
    this.beginBoot({ ...this.record, state: 'starting', helper: undefined, exit: undefined, intent: undefined, lastStop: undefined });
    this.startError = undefined;
    await this.removeRuntimeFiles();
    try {
      const spawned = await spawnHelper([...this.ctx.helperArgv, 'serve', '--dir', this.dir], this.paths.helperLog, this.ctx.env);
      this.adoptChild(spawned.child);
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
    await this.saveThroughPartial(file, (partial) => this.call({ op: 'save', path: partial }, 'save', 10 * 60_000).then(() => undefined));
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

  // ---- the lifecycle's vz side (../common/process-vm.ts) ----

  protected mainProcess(): VzProcess | undefined {
    return this.record.helper;
  }

  /** requestStop through the helper; a paused guest is resumed first (it cannot see the request). */
  protected async softStop(left: () => number, wasPaused: boolean): Promise<void> {
    try {
      if (wasPaused) await this.conn?.request({ op: 'resume' }, left()).catch(() => {});
      await this.conn?.request({ op: 'stop' }, left());
    } catch (err) {
      this.ctx.log.warn({ vm: this.spec.id, err: (err as Error).message }, 'requestStop failed');
    }
  }

  protected hardStop(): Promise<void> {
    return this.forceDown(3000);
  }

  protected async classifyGone(): Promise<Omit<VmExit, 'at'>> {
    const stop = this.record.lastStop ?? (await this.readExitFile());
    return classifyVzExit({
      intent: this.record.intent,
      ...(stop ? { stop } : {}),
      ...(this.childExit ? { child: this.childExit } : {}),
      duringStart: this.starting,
      ...(this.startError ? { startError: this.startError } : {}),
    });
  }

  /** The helper's last `stopped` event, or its exit file, still says how; else Lost. */
  protected async exitWhileAway(): Promise<VmExit> {
    const stop = this.record.lastStop ?? (await this.readExitFile());
    return stop
      ? { ...classifyVzExit({ intent: this.record.intent, stop, duringStart: false }), at: new Date() }
      : { reason: 'Lost', message: 'the vz helper ended while vmlet was not running; nothing says how', exitCode: null, signal: null, at: new Date() };
  }

  protected async reconnect(): Promise<void> {
    const control = await VzControl.connect(this.paths.control, 10_000, () => (this.isExited() ? 'the vz helper exited' : undefined));
    this.useControl(control);
    this.applyHelperState(control.hello.state);
  }

  protected async removeExitedFiles(): Promise<void> {
    await rm(this.paths.control, { force: true });
    await rm(this.paths.agentSocket, { force: true });
  }

  protected writeRecord(snapshot: VzRecord): Promise<void> {
    return writeVzRecord(this.paths.state, snapshot);
  }

  // ---- internals ----

  private useControl(control: VzControl): void {
    this.conn = control;
    control.on('event', (ev) => this.onEvent(ev));
    control.on('close', () => this.connectionClosed(control));
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

  private async readExitFile(): Promise<ReturnType<typeof parseExitFile>> {
    return parseExitFile(await readFile(this.paths.exitFile, 'utf8').catch(() => ''));
  }

  /** forceStop through the helper; SIGKILL to the helper if it has not gone within graceMs. */
  private async forceDown(graceMs: number): Promise<void> {
    await this.persist();
    await this.conn?.request({ op: 'forceStop' }, graceMs).catch(() => {});
    if (await this.exitedOrTimeout(graceMs)) return;
    await this.killProcess();
    if (!(await this.exitedOrTimeout(5000)) && !this.child) this.onGoneLogged();
    await this.exitedOrTimeout(5000);
  }

  private async call(req: Parameters<VzControl['request']>[0], what: string, timeoutMs?: number): Promise<Record<string, unknown>> {
    if (!this.conn) throw new VmError('NotConnected', `VM ${this.spec.id}: no control connection to the vz helper`);
    try {
      return await this.conn.request(req, timeoutMs);
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
}
