// One QEMU VM: the Vm of hypervisor.ts over a detached QEMU process, its QMP socket and vm.json. This is
// the I/O shell; the command line, QMP framing, the record's schema and exit classification are the pure
// modules next to it.
//
// Exits are seen two ways. While vmlet started QEMU (it is our child), the child's 'exit' event gives the
// code or signal. After a vmlet restart QEMU is not our child: its exit shows as end-of-file on QMP, and
// /proc (polled, and checked with the recorded start time so a reused pid is never mistaken for it) tells
// when it is really gone. Either way the classification uses the last SHUTDOWN event and what vmlet had
// asked for (persisted in vm.json, so it survives a vmlet restart too).
import type { ChildProcess } from 'node:child_process';
import { copyFile, open, rename, rm, stat } from 'node:fs/promises';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  VmError, type StartOptions, type StopOptions, type Vm, type VmExit, type VmSpec, type VmState, type VmUsage,
} from '../hypervisor.ts';
import { qemuArgs, VIRTIOFSD, virtiofsdArgs, vmPaths, type QemuHost, type VmPaths } from './args.ts';
import { writeRecord } from './persist.ts';
import { isAlive, observeProcess, processUsage, signalRecorded, spawnDetached, watchGone } from './process.ts';
import { QmpClient } from './qmp-client.ts';
import { shutdownInfo, type QmpEvent } from './qmp-protocol.ts';
import { checkIdentity, classifyExit, exitFromRecord, exitToRecord, qemuErrorLine, type Intent, type ProcessRecord, type VmRecord } from './state.ts';
import { connectUnix } from '../../host/unix-socket.ts';

/** The logger calls the driver makes: pino's, or anything shaped like it. */
export interface DriverLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
}

export const silentLogger: DriverLogger = { info() {}, warn() {}, debug() {} };

export interface VmContext {
  host: QemuHost;
  log: DriverLogger;
  /** How long start() waits for QMP to answer. */
  startTimeoutMs: number;
}

const GONE_POLL_MS = 500;

export class QemuVm implements Vm {
  readonly spec: VmSpec;
  readonly dir: string;
  readonly consoleLog: string;
  private readonly paths: VmPaths;
  private record: VmRecord;
  private qmp: QmpClient | undefined;
  private child: ChildProcess | undefined;
  /** virtiofsd children of this vmlet (for unref on detach). */
  private shareChildren: ChildProcess[] = [];
  private childExit: { code: number | null; signal: string | null } | undefined;
  private goneWatch: { stop: () => void } | undefined;
  private starting = false;
  private detached = false;
  private finishing: Promise<void> | undefined;
  private qemuLogOffset = 0;
  private exitedPromise!: Promise<VmExit>;
  private resolveExited!: (exit: VmExit) => void;
  private persistChain: Promise<void> = Promise.resolve();

  constructor(
    record: VmRecord,
    dir: string,
    private readonly ctx: VmContext,
  ) {
    this.record = record;
    this.spec = record.spec;
    this.dir = dir;
    this.paths = vmPaths(dir);
    this.consoleLog = this.paths.consoleLog;
    this.newExitPromise();
    if (record.exit) this.resolveExited(exitFromRecord(record.exit));
  }

  /** The current boot's exit (the last boot's, once exited; a new one at each start()). */
  get exited(): Promise<VmExit> {
    return this.exitedPromise;
  }

  state(): VmState {
    return this.record.state;
  }

  pid(): number | undefined {
    return this.record.state === 'exited' || this.record.state === 'created' ? undefined : this.record.qemu?.pid;
  }

  async start(opts: StartOptions = {}): Promise<void> {
    if (this.detached) throw new VmError('Detached', `VM ${this.spec.id} was detached; attach it again`);
    if (this.record.state !== 'created' && this.record.state !== 'exited') {
      throw new VmError('InvalidState', `VM ${this.spec.id} is ${this.record.state}; only a created or exited VM can start`);
    }
    const { host, log } = this.ctx;
    const binary = host.binaries[this.spec.arch];
    if (!binary) throw new VmError('BootFailed', `no QEMU binary for ${this.spec.arch} guests on this host`);
    let argv: string[];
    try {
      argv = [binary, ...qemuArgs(this.spec, host, this.paths, { incoming: opts.restoreFrom !== undefined })];
    } catch (err) {
      throw new VmError('BootFailed', (err as Error).message);
    }
    if (opts.restoreFrom) {
      await stat(opts.restoreFrom).catch(() => {
        throw new VmError('BootFailed', `no saved state at ${opts.restoreFrom}`);
      });
    }
    // A new boot: forget the last one's exit, intent and shutdown.
    this.newExitPromise();
    this.record = { ...this.record, state: 'starting', qemu: undefined, exit: undefined, intent: undefined, lastShutdown: undefined, virtiofsd: [] };
    this.childExit = undefined;
    this.finishing = undefined;
    this.starting = true;
    await this.removeSockets();
    if (this.spec.boot.kind === 'efi' && !this.spec.boot.nvram) await this.ensureNvram();
    this.qemuLogOffset = await stat(this.paths.qemuLog).then((s) => s.size, () => 0);

    try {
      await this.startShares();
      const spawned = await spawnDetached(argv, this.paths.qemuLog);
      this.adoptChild(spawned.child);
      this.record.qemu = spawned.record;
      await this.persist();
      log.info({ vm: this.spec.id, pid: spawned.record.pid, accelerator: host.arch === this.spec.arch ? host.accelerator : 'tcg' }, 'QEMU started');

      const gaveUp = (): string | undefined => (this.childExit ? 'QEMU exited' : undefined);
      let qmp: QmpClient;
      try {
        qmp = await QmpClient.connect(this.paths.qmpSocket, this.ctx.startTimeoutMs, gaveUp);
      } catch (err) {
        if (this.childExit) throw new VmError('BootFailed', (await this.exitedPromise).message);
        throw err;
      }
      this.useQmp(qmp);
      if (opts.restoreFrom) await this.restore(opts.restoreFrom);
      const status = await qmp.execute<{ status: string }>('query-status');
      this.record.state = status.status === 'running' ? 'running' : 'paused';
      this.starting = false;
      await this.persist();
    } catch (err) {
      // Nothing half-started stays behind: QEMU and virtiofsd go, and start() says why.
      const message = (err as Error).message;
      if (this.record.state !== 'exited' && this.record.qemu) {
        this.record.intent = { kind: 'kill', message: `start failed: ${message}` };
        await this.killProcesses();
        await this.exitedOrTimeout(10_000);
      } else if (this.record.state !== 'exited') {
        await this.cleanupShares();
        await this.finish({ reason: 'BootFailed', message, exitCode: null, signal: null, at: new Date() });
      }
      this.starting = false;
      // QEMU's own line says most ("could not load kernel ..."), whatever step noticed the failure.
      const qemuError = qemuErrorLine(await readFrom(this.paths.qemuLog, this.qemuLogOffset));
      if (qemuError) throw new VmError('BootFailed', qemuError);
      if (err instanceof VmError) throw err;
      throw new VmError('BootFailed', message);
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
          throw new VmError('AgentUnreachable', `cannot connect to the agent channel ${this.paths.agentSocket} within ${timeoutMs} ms: ${(err as Error).message}`);
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
      // A rejection moves on at once; an accepted request (or one that hangs) gets until half the budget.
      const accepted = await Promise.race([asked, this.exitedPromise.then(() => true), sleep(Math.max(0, half - Date.now()), true)]);
      if (accepted && (await this.exitedBy(half))) return this.exitedPromise;
    }
    if (!this.isExited()) {
      this.record.intent = { kind: 'stop', message: 'stopped by vmlet with the ACPI power button' };
      await this.persist();
      // Each QMP call gets only what is left of the budget: a hung QEMU must still be killed in time.
      const left = (): number => Math.max(100, deadline - Date.now());
      try {
        // A paused guest cannot see the button.
        if ((await this.qmpStatus(left())) !== 'running') await this.qmp?.execute('cont', undefined, left()).catch(() => {});
        await this.qmp?.execute('system_powerdown', undefined, left());
      } catch (err) {
        this.ctx.log.warn({ vm: this.spec.id, err: (err as Error).message }, 'ACPI power-down request failed');
      }
      if (await this.exitedBy(deadline)) return this.exitedPromise;
    }
    await this.setIntent({ kind: 'kill', message: `did not shut down within ${seconds} s of a stop request; killed` });
    await this.killProcesses();
    return this.exitedPromise;
  }

  async kill(): Promise<VmExit> {
    if (this.record.state === 'exited') return this.exitedPromise;
    this.assertStarted('kill');
    await this.setIntent({ kind: 'kill', message: 'killed by vmlet' }, 'stopping');
    await this.killProcesses();
    return this.exitedPromise;
  }

  async pause(): Promise<void> {
    this.assertRunning('pause');
    await this.requireQmp().execute('stop');
    this.record.state = 'paused';
    await this.persist();
  }

  async resume(): Promise<void> {
    this.assertRunning('resume');
    await this.requireQmp().execute('cont');
    this.record.state = 'running';
    await this.persist();
  }

  async save(file: string): Promise<void> {
    this.assertRunning('save');
    const qmp = this.requireQmp();
    const partial = `${file}.partial`;
    await rm(partial, { force: true });
    // QEMU 7.2 has no file: migration URI; exec: runs the command through /bin/sh. The default
    // bandwidth cap (32 MiB/s) is for live migration over a network; a local file wants no cap.
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 * 1024 * 1024 });
    await qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(partial)}` });
    try {
      await this.waitForMigration(qmp, 'save');
    } catch (err) {
      await rm(partial, { force: true });
      throw err;
    }
    await rename(partial, file);
    // After a completed migration QEMU holds the guest stopped (postmigrate); resume() continues it.
    this.record.state = 'paused';
    await this.persist();
  }

  /** Runs a QMP command on this VM's connection: for diagnostics and tests (e.g. query-pci), not for control. */
  async monitor<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return this.requireQmp().execute<T>(command, args);
  }

  async usage(): Promise<VmUsage> {
    const diskBytes = await stat(this.spec.disk.path).then((s) => s.blocks * 512, () => 0);
    let cpuSeconds = 0;
    let rssBytes = 0;
    const procs = [this.record.qemu, ...this.record.virtiofsd].filter((p): p is ProcessRecord => p !== undefined);
    if (this.record.state !== 'exited') {
      for (const p of procs) {
        if (!checkIdentity(p, await observeProcess(p.pid)).alive) continue;
        const u = await processUsage(p.pid).catch(() => ({ cpuSeconds: 0, rssBytes: 0 }));
        cpuSeconds += u.cpuSeconds;
        rssBytes += u.rssBytes;
      }
    }
    return { cpuSeconds, rssBytes, diskBytes };
  }

  async detach(): Promise<void> {
    this.detached = true;
    this.goneWatch?.stop();
    this.child?.removeAllListeners('exit');
    this.child?.unref();
    for (const c of this.shareChildren) c.unref();
    this.qmp?.removeAllListeners();
    this.qmp?.close();
    this.qmp = undefined;
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
    const rec = this.record.qemu;
    if (this.record.state === 'exited' || this.record.state === 'created') return;
    if (!rec || !checkIdentity(rec, await observeProcess(rec.pid)).alive) {
      // Gone while no vmlet watched. A SHUTDOWN seen before vmlet went away still says how; else Lost.
      await this.cleanupShares();
      const exit: VmExit = this.record.lastShutdown
        ? { ...classifyExit({ intent: this.record.intent, shutdown: this.record.lastShutdown, duringStart: false }), at: new Date() }
        : { reason: 'Lost', message: 'the VM process ended while vmlet was not running; nothing says how', exitCode: null, signal: null, at: new Date() };
      await this.finish(exit);
      return;
    }
    this.watchNotChild(rec);
    try {
      this.useQmp(await QmpClient.connect(this.paths.qmpSocket, 10_000, () => (this.record.state === 'exited' ? 'QEMU exited' : undefined)));
      const status = await this.qmpStatus();
      if (!this.isExited() && this.record.state !== 'stopping') this.record.state = status === 'running' ? 'running' : 'paused';
      await this.persist();
    } catch (err) {
      // QEMU runs but QMP does not answer: the /proc watch still sees its exit; control waits.
      this.ctx.log.warn({ vm: this.spec.id, err: (err as Error).message }, 're-attached without QMP');
    }
    this.ctx.log.info({ vm: this.spec.id, pid: rec.pid, state: this.record.state }, 're-attached to a running VM');
  }

  // ---- internals ----

  private newExitPromise(): void {
    this.exitedPromise = new Promise<VmExit>((resolve) => (this.resolveExited = resolve));
  }

  private adoptChild(child: ChildProcess): void {
    this.child = child;
    child.once('exit', (code, signal) => {
      this.childExit = { code, signal };
      this.onGoneLogged();
    });
  }

  private watchNotChild(rec: ProcessRecord): void {
    const watch = watchGone(rec, GONE_POLL_MS);
    this.goneWatch = watch;
    void watch.gone.then(() => this.onGoneLogged());
  }

  /** onGone from an event: a failure to record the exit (e.g. the disk is full) is logged, not thrown. */
  private onGoneLogged(): void {
    this.onGone().catch((err: unknown) => this.ctx.log.warn({ vm: this.spec.id, err: (err as Error).message }, 'could not record the VM exit'));
  }

  private useQmp(qmp: QmpClient): void {
    this.qmp = qmp;
    qmp.on('event', (ev) => this.onEvent(ev));
    qmp.on('close', () => {
      if (this.qmp === qmp) this.qmp = undefined;
      // Not our child: end-of-file is the first sign of an exit; /proc confirms it soon after.
      const rec = this.record.qemu;
      if (!this.child && rec && !this.detached) {
        void (async () => {
          for (let i = 0; i < 40 && (await isAlive(rec)); i++) await sleep(50);
          if (!(await isAlive(rec))) this.onGoneLogged();
        })();
      }
    });
  }

  private onEvent(ev: QmpEvent): void {
    const shutdown = shutdownInfo(ev);
    if (shutdown) {
      this.record.lastShutdown = shutdown;
      void this.persist();
    } else if (ev.event === 'STOP' && this.record.state === 'running') {
      this.record.state = 'paused';
      void this.persist();
    } else if (ev.event === 'RESUME' && this.record.state === 'paused') {
      this.record.state = 'running';
      void this.persist();
    }
    this.ctx.log.debug({ vm: this.spec.id, event: ev.event, data: ev.data }, 'QMP event');
  }

  /** QEMU is gone: classify, record, clean up, resolve `exited`. Runs once per boot. */
  private onGone(): Promise<void> {
    if (this.detached) return Promise.resolve();
    this.finishing ??= (async () => {
      this.goneWatch?.stop();
      this.qmp?.close();
      this.qmp = undefined;
      await this.cleanupShares();
      const log = await readFrom(this.paths.qemuLog, this.qemuLogOffset);
      const exit: VmExit = {
        ...classifyExit({
          intent: this.record.intent,
          shutdown: this.record.lastShutdown,
          child: this.childExit,
          duringStart: this.starting,
          qemuError: qemuErrorLine(log),
        }),
        at: new Date(),
      };
      await this.finish(exit);
    })();
    return this.finishing;
  }

  private async finish(exit: VmExit): Promise<void> {
    this.record.state = 'exited';
    this.record.exit = exitToRecord(exit);
    this.child = undefined;
    try {
      await this.removeSockets();
      await this.persist();
    } finally {
      // Whoever waits for the exit hears of it even if vm.json could not be written.
      this.ctx.log.info({ vm: this.spec.id, reason: exit.reason, exitCode: exit.exitCode, signal: exit.signal }, `VM exited: ${exit.message}`);
      this.resolveExited(exit);
    }
  }

  private async startShares(): Promise<void> {
    for (const share of this.spec.shares) {
      const socket = this.paths.shareSocket(share.tag);
      const logFile = this.paths.shareLog(share.tag);
      const offset = await stat(logFile).then((s) => s.size, () => 0);
      const { child, record } = await spawnDetached([VIRTIOFSD, ...virtiofsdArgs(share, socket)], logFile);
      let exited = false;
      child.once('exit', () => (exited = true));
      this.shareChildren.push(child);
      this.record.virtiofsd.push({ ...record, tag: share.tag, socket });
      await this.persist();
      // QEMU connects to virtiofsd's socket at start: it must exist first.
      const deadline = Date.now() + 10_000;
      while (!(await stat(socket).then(() => true, () => false))) {
        if (exited || Date.now() > deadline) {
          const why = (await readFrom(logFile, offset)).trim().split('\n').at(-1) || (exited ? 'it exited' : 'no socket within 10 s');
          throw new VmError('BootFailed', `virtiofsd for share ${share.tag} (${share.hostPath}) did not start: ${why}`);
        }
        await sleep(20);
      }
    }
  }

  private async cleanupShares(): Promise<void> {
    for (const p of this.record.virtiofsd) await signalRecorded(p, 'SIGTERM');
    for (const p of this.record.virtiofsd) {
      for (let i = 0; i < 40 && (await isAlive(p)); i++) await sleep(50);
      await signalRecorded(p, 'SIGKILL');
    }
  }

  private async killProcesses(): Promise<void> {
    const rec = this.record.qemu;
    if (rec && this.record.state !== 'exited') {
      // Our child may not have been reaped yet; a recorded process is only signalled while it is itself.
      if (this.child && !this.childExit) this.child.kill('SIGKILL');
      else await signalRecorded(rec, 'SIGKILL');
    } else if (!rec) {
      await this.cleanupShares();
    }
  }

  private async restore(file: string): Promise<void> {
    const qmp = this.requireQmp();
    await qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(file)}` });
    await this.waitForMigration(qmp, 'restore');
    await qmp.execute('cont');
  }

  private async waitForMigration(qmp: QmpClient, what: 'save' | 'restore'): Promise<void> {
    for (;;) {
      const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (info.status === 'completed') return;
      if (info.status === 'failed' || info.status === 'cancelled') {
        throw new VmError(what === 'save' ? 'SaveFailed' : 'RestoreFailed', `${what} failed: ${info['error-desc'] ?? info.status}`);
      }
      // Before migrate-incoming has started reading, a restoring QEMU reports no status at all.
      await sleep(50);
    }
  }

  private async qmpStatus(timeoutMs = 30_000): Promise<string | undefined> {
    return (await this.qmp?.execute<{ status: string }>('query-status', undefined, timeoutMs).catch(() => undefined))?.status;
  }

  private async ensureNvram(): Promise<void> {
    const template = this.spec.arch === 'x86_64' ? this.ctx.host.firmware.ovmfVars : this.ctx.host.firmware.aavmfVars;
    if (await stat(this.paths.nvram).then(() => true, () => false)) return;
    if (!template) throw new VmError('BootFailed', `EFI boot needs a variable-store template (apt-get install ${this.spec.arch === 'x86_64' ? 'ovmf' : 'qemu-efi-aarch64'})`);
    await copyFile(template, this.paths.nvram);
  }

  private async removeSockets(): Promise<void> {
    const files = [this.paths.qmpSocket, this.paths.agentSocket, ...this.spec.shares.map((s) => this.paths.shareSocket(s.tag))];
    await Promise.all(files.map((f) => rm(f, { force: true })));
  }

  private async setIntent(intent: Intent, state?: VmState): Promise<void> {
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

  /** The state can change across any await; a method call keeps TypeScript from narrowing it. */
  private isExited(): boolean {
    return this.record.state === 'exited';
  }

  private requireQmp(): QmpClient {
    if (!this.qmp) throw new VmError('NotConnected', `VM ${this.spec.id}: no QMP connection to QEMU`);
    return this.qmp;
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

  /** Writes vm.json; writes are queued so they land in order. */
  private persist(): Promise<void> {
    this.record.updatedAt = new Date().toISOString();
    const snapshot = structuredClone(this.record);
    this.persistChain = this.persistChain.then(
      () => writeRecord(this.paths.state, snapshot),
      () => writeRecord(this.paths.state, snapshot),
    );
    return this.persistChain;
  }
}


async function readFrom(file: string, offset: number): Promise<string> {
  const handle = await open(file, 'r').catch(() => undefined);
  if (!handle) return '';
  try {
    const { size } = await handle.stat();
    const length = Math.min(Math.max(0, size - offset), 1024 * 1024);
    const buf = Buffer.alloc(length);
    await handle.read(buf, 0, length, offset);
    return buf.toString('utf8');
  } finally {
    await handle.close();
  }
}

/** One argument for /bin/sh, single-quoted. */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
