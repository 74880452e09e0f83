// One QEMU VM: the Vm of hypervisor.ts over a detached QEMU process, its QMP socket and vm.json. This is
// the I/O shell; the command line, QMP framing, the record's schema and exit classification are the pure
// modules next to it, and the lifecycle both drivers share (exited, stop's steps, detach, re-attach) is
// ../common/process-vm.ts.
//
// Exits are seen two ways. While vmlet started QEMU (it is our child), the child's 'exit' event gives the
// code or signal. After a vmlet restart QEMU is not our child: its exit shows as end-of-file on QMP, and
// /proc (polled, and checked with the recorded start time so a reused pid is never mistaken for it) tells
// when it is really gone. Either way the classification uses the last SHUTDOWN event and what vmlet had
// asked for (persisted in vm.json, so it survives a vmlet restart too).
import type { ChildProcess } from 'node:child_process';
import { copyFile, open, rm, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmError, type StartOptions, type VmExit, type VmUsage } from '../hypervisor.ts';
import { ProcessVm, type DriverLogger } from '../common/process-vm.ts';
import { qemuArgs, VIRTIOFSD, virtiofsdArgs, vmPaths, type QemuHost, type VmPaths } from './args.ts';
import { writeRecord } from './persist.ts';
import { isAlive, observeProcess, processUsage, signalRecorded, spawnDetached } from './process.ts';
import { QmpClient } from './qmp-client.ts';
import { shutdownInfo, type QmpEvent } from './qmp-protocol.ts';
import { checkIdentity, classifyExit, qemuErrorLine, type ProcessRecord, type VmRecord } from './state.ts';

export interface VmContext {
  host: QemuHost;
  log: DriverLogger;
  /** How long start() waits for QMP to answer. */
  startTimeoutMs: number;
}

const GONE_POLL_MS = 500;

export class QemuVm extends ProcessVm<VmRecord, ProcessRecord, QmpClient> {
  readonly consoleLog: string;
  private readonly paths: VmPaths;
  /** virtiofsd children of this vmlet (for unref on detach). */
  private shareChildren: ChildProcess[] = [];
  private qemuLogOffset = 0;

  constructor(
    record: VmRecord,
    dir: string,
    private readonly ctx: VmContext,
  ) {
    const paths = vmPaths(dir);
    super(record, dir, {
      log: ctx.log,
      agentSocket: paths.agentSocket,
      processAlive: isAlive,
      signalProcess: signalRecorded,
      pollMs: GONE_POLL_MS,
      unrefPoll: false,
      words: {
        agentChannel: 'the agent channel',
        softStopIntent: 'stopped by vmlet with the ACPI power button',
        hardStopped: 'killed',
        reattachedWithoutControl: 're-attached without QMP',
        reattached: 're-attached to a running VM',
      },
    });
    this.paths = paths;
    this.consoleLog = this.paths.consoleLog;
  }

  async start(opts: StartOptions = {}): Promise<void> {
    this.assertCanStart();
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
    this.beginBoot({ ...this.record, state: 'starting', qemu: undefined, exit: undefined, intent: undefined, lastShutdown: undefined, virtiofsd: [] });
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
        if (this.childExit) throw new VmError('BootFailed', (await this.exited).message);
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
    // After a completed migration QEMU holds the guest stopped (postmigrate); resume() continues it.
    await this.saveThroughPartial(file, async (partial) => {
      // QEMU 7.2 has no file: migration URI; exec: runs the command through /bin/sh. The default
      // bandwidth cap (32 MiB/s) is for live migration over a network; a local file wants no cap.
      await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 * 1024 * 1024 });
      await qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(partial)}` });
      await this.waitForMigration(qmp, 'save');
    });
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

  // ---- the lifecycle's QEMU side (../common/process-vm.ts) ----

  protected mainProcess(): ProcessRecord | undefined {
    return this.record.qemu;
  }

  /** The ACPI power button; a paused guest is continued first (it cannot see the button). */
  protected async softStop(left: () => number): Promise<void> {
    try {
      if ((await this.qmpStatus(left())) !== 'running') await this.conn?.execute('cont', undefined, left()).catch(() => {});
      await this.conn?.execute('system_powerdown', undefined, left());
    } catch (err) {
      this.ctx.log.warn({ vm: this.spec.id, err: (err as Error).message }, 'ACPI power-down request failed');
    }
  }

  protected hardStop(): Promise<void> {
    return this.killProcesses();
  }

  protected async classifyGone(): Promise<Omit<VmExit, 'at'>> {
    await this.cleanupShares();
    const log = await readFrom(this.paths.qemuLog, this.qemuLogOffset);
    return classifyExit({
      intent: this.record.intent,
      shutdown: this.record.lastShutdown,
      child: this.childExit,
      duringStart: this.starting,
      qemuError: qemuErrorLine(log),
    });
  }

  /** A SHUTDOWN seen before vmlet went away still says how; else Lost. */
  protected async exitWhileAway(): Promise<VmExit> {
    await this.cleanupShares();
    return this.record.lastShutdown
      ? { ...classifyExit({ intent: this.record.intent, shutdown: this.record.lastShutdown, duringStart: false }), at: new Date() }
      : { reason: 'Lost', message: 'the VM process ended while vmlet was not running; nothing says how', exitCode: null, signal: null, at: new Date() };
  }

  protected async reconnect(): Promise<void> {
    this.useQmp(await QmpClient.connect(this.paths.qmpSocket, 10_000, () => (this.record.state === 'exited' ? 'QEMU exited' : undefined)));
    const status = await this.qmpStatus();
    if (!this.isExited() && this.record.state !== 'stopping') this.record.state = status === 'running' ? 'running' : 'paused';
  }

  protected removeExitedFiles(): Promise<void> {
    return this.removeSockets();
  }

  protected writeRecord(snapshot: VmRecord): Promise<void> {
    return writeRecord(this.paths.state, snapshot);
  }

  protected override onDetach(): void {
    for (const c of this.shareChildren) c.unref();
  }

  // ---- internals ----

  private useQmp(qmp: QmpClient): void {
    this.conn = qmp;
    qmp.on('event', (ev) => this.onEvent(ev));
    qmp.on('close', () => this.connectionClosed(qmp));
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
    if (this.record.qemu && this.record.state !== 'exited') {
      // Our child may not have been reaped yet; a recorded process is only signalled while it is itself.
      await this.killProcess();
    } else if (!this.record.qemu) {
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
    return (await this.conn?.execute<{ status: string }>('query-status', undefined, timeoutMs).catch(() => undefined))?.status;
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

  private requireQmp(): QmpClient {
    if (!this.conn) throw new VmError('NotConnected', `VM ${this.spec.id}: no QMP connection to QEMU`);
    return this.conn;
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
