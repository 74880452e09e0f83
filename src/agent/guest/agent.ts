// vmlet-agent's core: the state that outlives host connections (main processes, their logs, mounts) and
// the request handlers. Transports (port.ts, main.ts) hand it connections; each becomes a Session.
import { rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import { AgentError } from '../protocol/errors.ts';
import {
  Channel, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, type AgentHello, type ExecRequest, type LogsRequest, type MainAttached,
  type MainAttachRequest, type MainStartRequest, type MountRequest, type Ops, type PortConnectRequest,
} from '../protocol/messages.ts';
import { startPiped, startTty, type ExecHandle } from './exec.ts';
import { logStream } from './log-stream.ts';
import { checkMainSpec, MainProcess } from './main-process.ts';
import { prepareProcess, signalName } from './process-spec.ts';
import { Session, type SessionHost } from './session.ts';
import { addresses, bootId, bootIdSync, mount, run, setHostname, stats, systemFacts, uptimeSeconds, uptimeSecondsSync } from './system.ts';
import { checkPortConnect, connectTcp } from './tcp-connect.ts';

declare const VMLET_AGENT_VERSION: string | undefined;
/** Set by the bundler (bundle.ts); "dev" when run from the TypeScript sources. */
export const AGENT_VERSION = typeof VMLET_AGENT_VERSION === 'string' ? VMLET_AGENT_VERSION : 'dev';

export const CAPABILITIES = [
  'exec', 'tty', 'main', 'logs', 'mount.virtiofs', 'stats', 'hostname', 'shutdown',
  // Since the kubelet API: port-forward, attach (main processes with stdin), logs --previous/--limit-bytes/stream.
  'port-connect', 'attach', 'main.stdin', 'logs.previous', 'logs.limit-bytes', 'logs.stream',
  // Since init containers and subPath mounts.
  'mount.subpath',
];

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
  /** Open port.connect sockets, of every session. */
  private readonly ports = new Set<Socket>();
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
        for (const path of main.writer.allPaths()) await rm(path, { force: true });
        return {};
      }
      case 'main.attach':
        return this.attach(session, a);
      case 'logs':
        return this.logs(session, a);
      case 'port.connect':
        return this.connectPort(session, a);
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
        // (Agents before the port-connect capability answered InvalidArgument.)
        throw new AgentError('NotSupported', `unknown op "${op}"`);
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
    checkStream(session, req.stream, 'exec');
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
    checkMainSpec(req);
    if (existing) {
      // Started again: the last run's log becomes the previous one, as at a restart.
      if (existing.hasRun) existing.writer.startOver();
      existing.writer.close();
    }
    const main = new MainProcess(req, this.opts.logDir, (m) => {
      const s = m.status();
      if (s.exit) this.current?.sendEvent(0, { event: 'main-exit', id: s.id, ...s.exit });
    });
    this.mains.set(req.id, main);
    await main.start();
    return main.status();
  }

  private async logs(session: Session, req: Omit<LogsRequest, 'op'>): Promise<Record<string, never>> {
    checkStream(session, req.stream, 'logs');
    const main = this.main(req.id);
    const stream = logStream(main, req);
    session.register(req.stream, { reset: () => stream.destroy() });
    void session.pipeOut(req.stream, Channel.Stdout, stream).then(() => session.unregister(req.stream));
    return {};
  }

  private async attach(session: Session, req: Omit<MainAttachRequest, 'op'>): Promise<MainAttached> {
    checkStream(session, req.stream, 'main.attach');
    const attachment = this.main(req.id).attach(req.stdin === true);
    let live = true;
    session.register(req.stream, {
      ...(req.stdin === true ? { stdin: attachment.stdin } : {}),
      reset: () => {
        live = false;
        attachment.detach();
      },
    });
    const outputs = [session.pipeOut(req.stream, Channel.Stdout, attachment.stdout), session.pipeOut(req.stream, Channel.Stderr, attachment.stderr)];
    void Promise.all([attachment.ended, ...outputs]).then(([exit]) => {
      if (!live) return;
      live = false;
      session.unregister(req.stream);
      session.sendEvent(req.stream, { event: 'attach-exit', ...exit });
    });
    return { pid: attachment.pid, stdin: req.stdin === true && attachment.stdinAttached };
  }

  private async connectPort(session: Session, req: Omit<PortConnectRequest, 'op'>): Promise<Record<string, never>> {
    checkStream(session, req.stream, 'port.connect');
    const { host, port } = checkPortConnect(req.port, req.host);
    const socket = await connectTcp(host, port);
    if (!session.attached || session.inUse(req.stream)) {
      socket.destroy();
      throw session.attached
        ? new AgentError('InvalidArgument', `stream ${req.stream} is in use`)
        : new AgentError('Disconnected', 'the host went away while the connection was made');
    }
    socket.setNoDelay(true);
    this.ports.add(socket);
    let error: Error | undefined;
    socket.on('error', (err) => (error ??= err));
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    let live = true;
    session.register(req.stream, {
      stdin: socket, // the host's EOF ends our side (a FIN); the guest server's FIN ends stdout
      reset: () => {
        live = false;
        socket.destroy();
      },
    });
    const out = session.pipeOut(req.stream, Channel.Stdout, socket);
    void closed.then(() => this.ports.delete(socket));
    void Promise.all([closed, out]).then(() => {
      if (!live) return;
      live = false;
      session.unregister(req.stream);
      session.sendEvent(req.stream, { event: 'port-closed', ...(error ? { error: error.message } : {}) });
    });
    return {};
  }

  /** Stops the main processes (SIGTERM, SIGKILL after graceMs), hangs up execs, syncs the disks. */
  private async shutdown(graceMs: number): Promise<void> {
    this.shuttingDown = true;
    this.log('shutdown requested: stopping main processes');
    await Promise.all([...this.mains.values()].map((m) => m.stop('SIGTERM', graceMs)));
    for (const execs of this.execs.values()) for (const e of execs.values()) e.hangup();
    for (const socket of this.ports) socket.destroy(new Error('the agent is shutting down'));
    await run('sync', []).catch(() => undefined);
  }

  /** SIGTERM to the agent: its processes go with it (nothing else would ever reap or report them). */
  async terminate(): Promise<void> {
    this.shuttingDown = true;
    for (const execs of this.execs.values()) for (const e of execs.values()) e.hangup();
    for (const socket of this.ports) socket.destroy(new Error('the agent is shutting down'));
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

/** A stream id the host chose: a positive integer not in use on this session. */
function checkStream(session: Session, stream: unknown, op: string): void {
  if (typeof stream !== 'number' || !Number.isInteger(stream) || stream <= 0) throw new AgentError('InvalidArgument', `${op} needs a positive integer stream`);
  if (session.inUse(stream)) throw new AgentError('InvalidArgument', `stream ${stream} is in use`);
}
