// vmlet-agent's core: the state that outlives host connections (main processes, their logs, mounts) and
// the request handlers. Transports (port.ts, main.ts) hand it connections; each becomes a Session.
import { rm } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import { AgentError } from '../protocol/errors.ts';
import {
  MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, type AgentHello, type ExecRequest, type LogsRequest, type MainStartRequest,
  type MountRequest, type Ops,
} from '../protocol/messages.ts';
import { startPiped, startTty, type ExecHandle } from './exec.ts';
import { logStream } from './log-stream.ts';
import { MainProcess } from './main-process.ts';
import { prepareProcess, signalName } from './process-spec.ts';
import { Session, type SessionHost } from './session.ts';
import { addresses, bootId, bootIdSync, mount, run, setHostname, stats, systemFacts, uptimeSeconds, uptimeSecondsSync } from './system.ts';

declare const VMLET_AGENT_VERSION: string | undefined;
/** Set by the bundler (bundle.ts); "dev" when run from the TypeScript sources. */
export const AGENT_VERSION = typeof VMLET_AGENT_VERSION === 'string' ? VMLET_AGENT_VERSION : 'dev';

export const CAPABILITIES = ['exec', 'tty', 'main', 'logs', 'mount.virtiofs', 'stats', 'hostname', 'shutdown'];

export interface AgentOptions {
  /** Where main processes' CRI logs go. */
  logDir: string;
  /** Scratch files (tty wrappers). */
  runDir: string;
  /** After a shutdown request has stopped everything: exit (the guest's init powers off) or run `poweroff`. */
  onShutdown: 'exit' | 'poweroff';
  log(msg: string): void;
}

export class Agent implements SessionHost {
  private readonly mains = new Map<string, MainProcess>();
  private readonly execs = new Map<Session, Map<number, ExecHandle>>();
  private readonly mounts: string[] = [];
  private current: Session | undefined;
  private shuttingDown = false;
  private readonly started = performance.now();
  private readonly bootId = bootIdSync();
  private sessions = 0;
  /** Resolves when a shutdown has stopped everything and the agent should exit. */
  readonly done: Promise<void>;
  private finish!: () => void;

  constructor(private readonly opts: AgentOptions) {
    this.done = new Promise((resolve) => (this.finish = resolve));
  }

  /** A new connection from a host (the port's, a unix socket's, a TLS one's). */
  serve(link: Duplex): Session {
    return new Session(link, this, `session ${++this.sessions}`);
  }

  log(msg: string): void {
    this.opts.log(msg);
  }

  hello(version: number | undefined, error?: AgentError): AgentHello {
    return {
      magic: 'vmlet', role: 'agent', ...(version !== undefined ? { version } : {}),
      minVersion: MIN_PROTOCOL_VERSION, maxVersion: PROTOCOL_VERSION, agentVersion: AGENT_VERSION,
      capabilities: CAPABILITIES, uptimeSeconds: uptimeSecondsSync(), bootId: this.bootId,
      ...(error ? { error: error.toBody() } : {}),
    };
  }

  attached(session: Session): void {
    // One host at a time: a newer one replaces the older (vmlet restarted, or the old connection is half-open).
    if (this.current && this.current !== session) this.current.close();
    this.current = session;
  }

  detached(session: Session): void {
    if (this.current === session) this.current = undefined;
    const execs = this.execs.get(session);
    this.execs.delete(session);
    for (const e of execs?.values() ?? []) e.hangup();
  }

  async handle(session: Session, op: string, args: Record<string, unknown>): Promise<unknown> {
    if (this.shuttingDown && op !== 'ping' && op !== 'info') throw new AgentError('Unavailable', 'the agent is shutting down');
    const a = args as never;
    switch (op as keyof Ops) {
      case 'ping':
        return { agentVersion: AGENT_VERSION, uptimeSeconds: await uptimeSeconds(), agentUptimeSeconds: this.agentUptime() };
      case 'info':
        return {
          agentVersion: AGENT_VERSION, protocolVersion: PROTOCOL_VERSION, ...systemFacts(), uptimeSeconds: await uptimeSeconds(),
          agentUptimeSeconds: this.agentUptime(), bootId: await bootId(), addresses: addresses(),
        };
      case 'stats':
        return stats(this.mounts);
      case 'exec':
        return this.exec(session, a);
      case 'exec.signal':
        this.execHandle(session, (a as { stream: number }).stream).signal(signalName((a as { signal: string }).signal));
        return {};
      case 'exec.resize': {
        const { stream, rows, cols } = a as { stream: number; rows: number; cols: number };
        this.execHandle(session, stream).resize(rows, cols);
        return {};
      }
      case 'main.start':
        return this.startMain(a);
      case 'main.stop': {
        const { id, signal, graceMs } = a as { id: string; signal?: string; graceMs?: number };
        const main = this.main(id);
        await main.stop(signalName(signal ?? 'SIGTERM'), graceMs);
        return main.status();
      }
      case 'main.restart': {
        const main = this.main((a as { id: string }).id);
        await main.restart((a as { graceMs?: number }).graceMs);
        return main.status();
      }
      case 'main.status':
        return this.main((a as { id: string }).id).status();
      case 'main.list':
        return [...this.mains.values()].map((m) => m.status());
      case 'main.remove': {
        const main = this.main((a as { id: string }).id);
        if (main.running) throw new AgentError('InvalidArgument', `main process ${main.spec.id} is running; stop it first`);
        this.mains.delete(main.spec.id);
        main.writer.close();
        await rm(main.writer.path, { force: true });
        for (let i = 1; i < (main.spec.log?.maxFiles ?? 5); i++) await rm(`${main.writer.path}.${i}`, { force: true });
        return {};
      }
      case 'logs':
        return this.logs(session, a);
      case 'mount': {
        const req = a as MountRequest;
        await mount(req);
        if (!this.mounts.includes(req.mountPath)) this.mounts.push(req.mountPath);
        return {};
      }
      case 'set-hostname':
        await setHostname(String((a as { hostname: string }).hostname));
        return {};
      case 'shutdown':
        await this.shutdown((a as { graceMs?: number }).graceMs ?? 10_000);
        // Power off (or exit) once the answer is on its way.
        setImmediate(() => void session.flush().then(() => this.afterShutdown()));
        return {};
      default:
        throw new AgentError('InvalidArgument', `unknown op "${op}"`);
    }
  }

  private agentUptime(): number {
    return (performance.now() - this.started) / 1000;
  }

  private main(id: string): MainProcess {
    const main = this.mains.get(id);
    if (!main) throw new AgentError('NotFound', `no main process "${id}"`);
    return main;
  }

  private execHandle(session: Session, stream: number): ExecHandle {
    const handle = this.execs.get(session)?.get(stream);
    if (!handle) throw new AgentError('NotFound', `no exec on stream ${stream}`);
    return handle;
  }

  private async exec(session: Session, req: ExecRequest): Promise<{ pid: number }> {
    if (!Number.isInteger(req.stream) || req.stream <= 0) throw new AgentError('InvalidArgument', 'exec needs a positive integer stream');
    if (this.execs.get(session)?.has(req.stream)) throw new AgentError('InvalidArgument', `stream ${req.stream} is in use`);
    const p = await prepareProcess(req, req.tty ? { TERM: req.tty.term ?? 'xterm' } : {});
    const handle = req.tty
      ? await startTty(p, req.tty, this.opts.runDir)
      : await startPiped(p, req.stdin === true);
    if (!session.attached) {
      handle.hangup();
      throw new AgentError('Disconnected', 'the host went away while the exec started');
    }
    let execs = this.execs.get(session);
    if (!execs) this.execs.set(session, (execs = new Map<number, ExecHandle>()));
    execs.set(req.stream, handle);
    session.register(req.stream, {
      ...(req.stdin && handle.stdin ? { stdin: handle.stdin } : {}),
      reset: () => {
        this.execs.get(session)?.delete(req.stream);
        handle.hangup();
      },
    });
    const outputs = [session.pipeOut(req.stream, 1, handle.stdout)];
    if (handle.stderr) outputs.push(session.pipeOut(req.stream, 2, handle.stderr));
    void Promise.all([handle.exited, ...outputs]).then(([exit]) => {
      session.unregister(req.stream);
      if (this.execs.get(session)?.delete(req.stream)) session.sendEvent(req.stream, { event: 'exec-exit', ...exit });
    });
    return { pid: handle.pid };
  }

  private async startMain(req: Omit<MainStartRequest, 'op'>): Promise<unknown> {
    const existing = this.mains.get(req.id);
    if (existing?.running) throw new AgentError('AlreadyExists', `main process ${req.id} is running`);
    existing?.writer.close();
    const main = new MainProcess(req, this.opts.logDir, (m) => {
      const s = m.status();
      if (s.exit) this.current?.sendEvent(0, { event: 'main-exit', id: s.id, ...s.exit });
    });
    this.mains.set(req.id, main);
    await main.start();
    return main.status();
  }

  private async logs(session: Session, req: Omit<LogsRequest, 'op'>): Promise<Record<string, never>> {
    if (!Number.isInteger(req.stream) || req.stream <= 0) throw new AgentError('InvalidArgument', 'logs needs a positive integer stream');
    const main = this.main(req.id);
    const stream = logStream(main, req);
    session.register(req.stream, { reset: () => stream.destroy() });
    void session.pipeOut(req.stream, 1, stream).then(() => session.unregister(req.stream));
    return {};
  }

  /** Stops the main processes (SIGTERM, SIGKILL after graceMs), hangs up execs, syncs the disks. */
  private async shutdown(graceMs: number): Promise<void> {
    this.shuttingDown = true;
    this.log('shutdown requested: stopping main processes');
    await Promise.all([...this.mains.values()].map((m) => m.stop('SIGTERM', graceMs)));
    for (const execs of this.execs.values()) for (const e of execs.values()) e.hangup();
    await run('sync', []).catch(() => undefined);
  }

  /** SIGTERM to the agent: its processes go with it (nothing else would ever reap or report them). */
  async terminate(): Promise<void> {
    this.shuttingDown = true;
    for (const execs of this.execs.values()) for (const e of execs.values()) e.hangup();
    await Promise.all([...this.mains.values()].map((m) => m.stop('SIGTERM', 2000)));
    this.finish();
  }

  private async afterShutdown(): Promise<void> {
    if (this.opts.onShutdown === 'poweroff') {
      this.log('powering off');
      await run('poweroff', []).catch((err: Error) => this.log(`poweroff: ${err.message}`));
    }
    this.finish();
  }
}
