// The lifecycle both drivers' Vms share around one detached process that runs the VM (QEMU, or the vz
// helper) and a control connection to it (QMP, or the helper's control socket): the `exited` promise and
// when it resolves, stop (askGuest until half the budget, then the driver's softer request, then the
// driver's hard stop at the deadline), kill, detach and destroy, picking a VM up again from its directory
// after a vmlet restart, and vm.json writes in order. The subclass (qemu/vm.ts, vz/vm.ts) starts the
// process, speaks its control protocol and classifies the exit; this class decides when.
//
// Exits are seen two ways. While vmlet started the process (it is our child), the child's 'exit' event
// gives the code or signal. After a vmlet restart it is not our child: its exit shows as the control
// connection closing, and polling (the driver's identity check, so a reused pid is never mistaken for
// it) tells when it is really gone.
import type { ChildProcess } from 'node:child_process';
import { rename, rm } from 'node:fs/promises';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmError, type StopOptions, type Vm, type VmExit, type VmSpec, type VmState, type VmUsage, type StartOptions } from '../hypervisor.ts';
import { connectUnix } from '../../host/unix-socket.ts';
import { exitFromRecord, exitToRecord, type ExitRecord, type Intent } from './record.ts';
import { watchUntilGone } from './spawn.ts';

/** The logger calls the drivers make: pino's, or anything shaped like it. */
export interface DriverLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
}

export const silentLogger: DriverLogger = { info() {}, warn() {}, debug() {} };

/** The fields of vm.json this class reads and writes; each driver's record has more. */
export interface LifecycleRecord {
  spec: VmSpec;
  state: VmState;
  intent?: Intent | undefined;
  exit?: ExitRecord | undefined;
  updatedAt: string;
}

/** A control connection: QmpClient or VzControl. */
export interface ControlConnection {
  close(): void;
  removeAllListeners(): unknown;
}

export interface ChildExit {
  code: number | null;
  signal: string | null;
}

/** The sentences that differ between drivers. */
export interface LifecycleWords {
  /** What connectAgent() connects to: "the agent channel". */
  agentChannel: string;
  /** The intent while the softer stop runs: "stopped by vmlet with the ACPI power button". */
  softStopIntent: string;
  /** How the hard stop ends a "did not shut down within N s of a stop request; ..." intent: "killed". */
  hardStopped: string;
  /** The warning when re-attaching finds no control connection: "re-attached without QMP". */
  reattachedWithoutControl: string;
  /** The log line after a re-attach: "re-attached to a running VM". */
  reattached: string;
}

export interface LifecycleOptions<P> {
  log: DriverLogger;
  /** The unix socket connectAgent() connects to. */
  agentSocket: string;
  /** Is the recorded process still the one running under its pid? */
  processAlive: (rec: P) => Promise<boolean>;
  /** Signals the recorded process, only while it is still that process. */
  signalProcess: (rec: P, sig: NodeJS.Signals) => Promise<unknown>;
  /** How often a process that is not vmlet's child is checked for. */
  pollMs: number;
  /** Whether that check lets vmlet's event loop end. */
  unrefPoll: boolean;
  /** How often the softer stop request is repeated until the deadline (default 10 s). */
  softStopRepeatMs?: number | undefined;
  words: LifecycleWords;
}

export abstract class ProcessVm<R extends LifecycleRecord, P extends { pid: number }, C extends ControlConnection> implements Vm {
  readonly spec: VmSpec;
  readonly dir: string;
  abstract readonly consoleLog: string;
  protected record: R;
  protected conn: C | undefined;
  protected child: ChildProcess | undefined;
  protected childExit: ChildExit | undefined;
  protected starting = false;
  protected detached = false;
  protected finishing: Promise<void> | undefined;
  private goneWatch: { stop: () => void } | undefined;
  private exitedPromise!: Promise<VmExit>;
  private resolveExited!: (exit: VmExit) => void;
  private persistChain: Promise<void> = Promise.resolve();

  protected constructor(record: R, dir: string, protected readonly lifecycle: LifecycleOptions<P>) {
    this.record = record;
    this.spec = record.spec;
    this.dir = dir;
    this.newExitPromise();
    if (record.exit) this.resolveExited(exitFromRecord(record.exit));
  }

  // ---- what the driver provides ----

  /** The process that runs the VM, as recorded. */
  protected abstract mainProcess(): P | undefined;
  /** Asks the guest to shut down (ACPI button, requestStop); failures are logged, not thrown. */
  protected abstract softStop(left: () => number, wasPaused: boolean): Promise<void>;
  /** Ends the VM now, as the last step of stop() and as kill(). */
  protected abstract hardStop(): Promise<void>;
  /** The process is gone while vmlet watched: how did it end? */
  protected abstract classifyGone(): Promise<Omit<VmExit, 'at'>>;
  /** The process was found gone at re-attach: how did it end, as far as anything says? */
  protected abstract exitWhileAway(): Promise<VmExit>;
  /** Connects the control connection again at re-attach and follows the VM's state from it. */
  protected abstract reconnect(): Promise<void>;
  /** The sockets (and the like) to remove once the VM has exited. */
  protected abstract removeExitedFiles(): Promise<void>;
  /** Writes vm.json. */
  protected abstract writeRecord(snapshot: R): Promise<void>;
  /** What else detach() lets go of. */
  protected onDetach(): void {}

  // ---- Vm ----

  /** The current boot's exit (the last boot's, once exited; a new one at each start()). */
  get exited(): Promise<VmExit> {
    return this.exitedPromise;
  }

  state(): VmState {
    return this.record.state;
  }

  pid(): number | undefined {
    return this.record.state === 'exited' || this.record.state === 'created' ? undefined : this.mainProcess()?.pid;
  }

  abstract start(opts?: StartOptions): Promise<void>;
  abstract pause(): Promise<void>;
  abstract resume(): Promise<void>;
  abstract save(file: string): Promise<void>;
  abstract usage(): Promise<VmUsage>;

  async connectAgent(timeoutMs = 10_000): Promise<Duplex> {
    const deadline = Date.now() + timeoutMs;
    const socket = this.lifecycle.agentSocket;
    for (;;) {
      if (this.record.state === 'exited') throw new VmError('NotRunning', `VM ${this.spec.id} has exited; no agent to connect to`);
      try {
        return await connectUnix(socket);
      } catch (err) {
        if (Date.now() >= deadline) {
          throw new VmError('AgentUnreachable', `cannot connect to ${this.lifecycle.words.agentChannel} ${socket} within ${timeoutMs} ms: ${(err as Error).message}`);
        }
        await sleep(50);
      }
    }
  }

  async stop(opts: StopOptions): Promise<VmExit> {
    if (this.record.state === 'exited') return this.exitedPromise;
    this.assertStarted('stop');
    const deadline = Date.now() + opts.timeoutMs;
    const seconds = (opts.timeoutMs / 1000).toFixed(1);
    const half = Date.now() + opts.timeoutMs / 2;
    const wasPaused = this.record.state === 'paused';
    await this.setIntent({ kind: 'stop', message: 'stopped by vmlet' }, 'stopping');
    if (opts.askGuest) {
      this.record.intent = { kind: 'stop', message: 'stopped by vmlet through the guest agent' };
      const asked = opts.askGuest().then(
        () => true,
        (err: unknown) => {
          this.lifecycle.log.warn({ vm: this.spec.id, err: (err as Error).message }, 'the guest agent did not take the shutdown request');
          return false;
        },
      );
      // A rejection moves on at once; an accepted request (or one that hangs) gets until half the budget.
      const accepted = await Promise.race([asked, this.exitedPromise.then(() => true), sleep(Math.max(0, half - Date.now()), true)]);
      if (accepted && (await this.exitedBy(half))) return this.exitedPromise;
    }
    if (!this.isExited()) {
      this.record.intent = { kind: 'stop', message: this.lifecycle.words.softStopIntent };
      await this.persist();
      // Each request gets only what is left of the budget: a hung VM process must still be ended in time.
      // The request is repeated: a guest still booting can miss it (an ACPI button pressed before the
      // guest's handler listens is lost), and would otherwise be killed though it could have shut down.
      const repeat = this.lifecycle.softStopRepeatMs ?? 10_000;
      for (let first = true; ; first = false) {
        await this.softStop(() => Math.max(100, deadline - Date.now()), first && wasPaused);
        const next = Math.min(deadline, Date.now() + repeat);
        if (await this.exitedBy(next)) return this.exitedPromise;
        if (next >= deadline) break;
        this.lifecycle.log.debug({ vm: this.spec.id }, 'the guest has not shut down yet: asking again');
      }
    }
    await this.setIntent({ kind: 'kill', message: `did not shut down within ${seconds} s of a stop request; ${this.lifecycle.words.hardStopped}` });
    await this.hardStop();
    return this.exitedPromise;
  }

  async kill(): Promise<VmExit> {
    if (this.record.state === 'exited') return this.exitedPromise;
    this.assertStarted('kill');
    await this.setIntent({ kind: 'kill', message: 'killed by vmlet' }, 'stopping');
    await this.hardStop();
    return this.exitedPromise;
  }

  async detach(): Promise<void> {
    this.detached = true;
    this.goneWatch?.stop();
    this.child?.removeAllListeners('exit');
    this.child?.unref();
    this.onDetach();
    this.conn?.removeAllListeners();
    this.conn?.close();
    this.conn = undefined;
    await this.persistChain;
  }

  async destroy(): Promise<void> {
    if (this.record.state !== 'exited' && this.record.state !== 'created') {
      throw new VmError('InvalidState', `VM ${this.spec.id} is ${this.record.state}; stop or kill it before destroying it`);
    }
    // An exit being recorded right now finishes first: its vm.json write must not land in a removed dir.
    await this.finishing;
    await this.detach();
    await rm(this.dir, { recursive: true, force: true });
  }

  // ---- re-attach (driver.attach) ----

  /** Picks up a VM from its record after a vmlet restart. */
  async reattach(): Promise<void> {
    if (this.record.state === 'exited' || this.record.state === 'created') return;
    const rec = this.mainProcess();
    if (!rec || !(await this.lifecycle.processAlive(rec))) {
      // Gone while no vmlet watched.
      await this.finish(await this.exitWhileAway());
      return;
    }
    this.watchNotChild(rec);
    try {
      await this.reconnect();
      await this.persist();
    } catch (err) {
      // The process runs but does not answer: the watch still sees its exit; control waits.
      this.lifecycle.log.warn({ vm: this.spec.id, err: (err as Error).message }, this.lifecycle.words.reattachedWithoutControl);
    }
    this.lifecycle.log.info({ vm: this.spec.id, pid: rec.pid, state: this.record.state }, this.lifecycle.words.reattached);
  }

  // ---- for the driver ----

  /** start()'s first check. */
  protected assertCanStart(): void {
    if (this.detached) throw new VmError('Detached', `VM ${this.spec.id} was detached; attach it again`);
    if (this.record.state !== 'created' && this.record.state !== 'exited') {
      throw new VmError('InvalidState', `VM ${this.spec.id} is ${this.record.state}; only a created or exited VM can start`);
    }
  }

  /** A new boot: a new `exited`, the record reset by the driver (no process, exit or intent). */
  protected beginBoot(record: R): void {
    this.newExitPromise();
    this.record = record;
    this.childExit = undefined;
    this.finishing = undefined;
    this.starting = true;
  }

  /** The process vmlet just started: its 'exit' is the exit. */
  protected adoptChild(child: ChildProcess): void {
    this.child = child;
    child.once('exit', (code, signal) => {
      this.childExit = { code, signal };
      this.onGoneLogged();
    });
  }

  /**
   * Saves into file through `file.partial`, written by write(partial): a failed save leaves no partial
   * file, a finished one is renamed into place. The VM is paused afterwards.
   */
  protected async saveThroughPartial(file: string, write: (partial: string) => Promise<void>): Promise<void> {
    const partial = `${file}.partial`;
    await rm(partial, { force: true });
    try {
      await write(partial);
    } catch (err) {
      await rm(partial, { force: true });
      throw err;
    }
    await rename(partial, file);
    this.record.state = 'paused';
    await this.persist();
  }

  /** SIGKILL to the VM process: to our child while it has not been reaped, else to the recorded process while it is itself. */
  protected async killProcess(): Promise<void> {
    const rec = this.mainProcess();
    if (this.child && !this.childExit) this.child.kill('SIGKILL');
    else if (rec) await this.lifecycle.signalProcess(rec, 'SIGKILL');
  }

  /** The control connection closed. Not our child: that is the first sign of an exit; the process check confirms it soon after. */
  protected connectionClosed(conn: C): void {
    if (this.conn === conn) this.conn = undefined;
    const rec = this.mainProcess();
    if (!this.child && rec && !this.detached) {
      void (async () => {
        for (let i = 0; i < 40 && (await this.lifecycle.processAlive(rec)); i++) await sleep(50);
        if (!(await this.lifecycle.processAlive(rec))) this.onGoneLogged();
      })();
    }
  }

  /** onGone from an event: a failure to record the exit (e.g. the disk is full) is logged, not thrown. */
  protected onGoneLogged(): void {
    this.onGone().catch((err: unknown) => this.lifecycle.log.warn({ vm: this.spec.id, err: (err as Error).message }, 'could not record the VM exit'));
  }

  /** Records the exit and resolves `exited`: the last step of every boot. */
  protected async finish(exit: VmExit): Promise<void> {
    this.record.state = 'exited';
    this.record.exit = exitToRecord(exit);
    this.child = undefined;
    try {
      await this.removeExitedFiles();
      await this.persist();
    } finally {
      // Whoever waits for the exit hears of it even if vm.json could not be written.
      this.lifecycle.log.info({ vm: this.spec.id, reason: exit.reason, exitCode: exit.exitCode, signal: exit.signal }, `VM exited: ${exit.message}`);
      this.resolveExited(exit);
    }
  }

  protected async setIntent(intent: Intent, state?: VmState): Promise<void> {
    this.record.intent = intent;
    if (state && this.record.state !== 'exited') this.record.state = state;
    await this.persist();
  }

  protected async exitedBy(deadline: number): Promise<boolean> {
    return this.exitedOrTimeout(deadline - Date.now());
  }

  protected async exitedOrTimeout(ms: number): Promise<boolean> {
    if (this.record.state === 'exited') return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), Math.max(0, ms))));
    try {
      return await Promise.race([this.exitedPromise.then(() => true as const), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The state can change across any await; a method call keeps TypeScript from narrowing it. */
  protected isExited(): boolean {
    return this.record.state === 'exited';
  }

  protected assertStarted(what: string): void {
    if (this.detached) throw new VmError('Detached', `VM ${this.spec.id} was detached; attach it again to ${what} it`);
    if (this.record.state === 'created') throw new VmError('InvalidState', `VM ${this.spec.id} was never started; nothing to ${what}`);
  }

  protected assertRunning(what: string): void {
    this.assertStarted(what);
    if (this.record.state !== 'running' && this.record.state !== 'paused') {
      throw new VmError('InvalidState', `VM ${this.spec.id} is ${this.record.state}; cannot ${what} it`);
    }
  }

  /** Writes vm.json; writes are queued so they land in order. */
  protected persist(): Promise<void> {
    this.record.updatedAt = new Date().toISOString();
    const snapshot = structuredClone(this.record);
    this.persistChain = this.persistChain.then(
      () => this.writeRecord(snapshot),
      () => this.writeRecord(snapshot),
    );
    return this.persistChain;
  }

  // ---- internals ----

  private newExitPromise(): void {
    this.exitedPromise = new Promise<VmExit>((resolve) => (this.resolveExited = resolve));
  }

  private watchNotChild(rec: P): void {
    const watch = watchUntilGone(() => this.lifecycle.processAlive(rec), this.lifecycle.pollMs, { unref: this.lifecycle.unrefPoll });
    this.goneWatch = watch;
    void watch.gone.then(() => this.onGoneLogged());
  }

  /** The process is gone: classify, record, resolve `exited`. Runs once per boot. */
  private onGone(): Promise<void> {
    if (this.detached) return Promise.resolve();
    this.finishing ??= (async () => {
      this.goneWatch?.stop();
      this.conn?.close();
      this.conn = undefined;
      await this.finish({ ...(await this.classifyGone()), at: new Date() });
    })();
    return this.finishing;
  }
}
