// The sidecar containers of one hybrid pod (issue 8): every container of spec.containers but the VM
// container runs on the node's Docker-API engine (src/sidecars/). A SidecarSet pulls, creates and starts
// them once the VM container runs, restarts them after an exit with their own crash-loop back-off (each run
// a new engine container, restartCount + 1, as the kubelet does), takes running ones over after a vmlet
// restart (engine.list(podUid)), and stops and removes them when the pod goes. PodRuntime owns the VM;
// this module owns the sidecars and tells PodRuntime when their states changed.
//
// Networking: the first sidecar is on the engine's bridge network with the containerPorts of every sidecar
// published on the pod IP (the host's); the others join its network namespace (`container:<id>`), so
// `localhost` is shared between sidecars, and the VM and the sidecars reach each other on the pod IP. A new
// run of the first sidecar is a new network namespace: the others are restarted to join it.
//
// Each sidecar has what a container has on any node: postStart and preStop hooks and startup, liveness
// and readiness probes (src/runtime/probes/, run through the engine: probes/engine-target.ts), and a
// changed definition (a new image in the pod's spec) restarts it.
import type { V1Container, V1Pod } from '@kubernetes/client-node';
import type { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import type { PullSecret } from '../images/registry/credentials.ts';
import type { Logger } from '../observability/log.ts';
import type { SidecarEngine, SidecarSummary } from '../sidecars/engine.ts';
import { SidecarEngineError, SidecarEngineUnavailable } from '../sidecars/errors.ts';
import type { SidecarMount } from '../sidecars/spec.ts';
import type { SidecarProcess, SidecarStreamOptions } from '../sidecars/streams.ts';
import { containerHash } from '../sidecars/spec.ts';
import { expand } from './pod/env.ts';
import { engineProbeTarget } from './probes/engine-target.ts';
import { HOOK_FAILURE, POST_START_TIMEOUT_MS, runHandler, type ProbeTarget } from './probes/handlers.ts';
import { ContainerProber } from './probes/prober.ts';
import { RestartBackoff, type RestartBackoffOptions } from './pod/restart-backoff.ts';
import type { ContainerRuntimeState } from './pod/status.ts';
import { engineContainers } from './pod/validate.ts';

export interface SidecarSetOptions {
  /** The engine, connected on first use (SidecarEngineUnavailable when it does not answer). */
  engine(): Promise<SidecarEngine>;
  pod: V1Pod;
  /** The pod IP (the host's): the first sidecar's ports are published on it. */
  hostIP: string;
  log: Logger;
  restartBackoff?: RestartBackoffOptions;
  event(type: 'Normal' | 'Warning', reason: string, message: string): void;
  /** A sidecar's state changed: post the pod's status. */
  changed(): void;
  /** The container's resolved environment (pod/env.ts resolveEnv). */
  env(c: V1Container): Promise<Record<string, string>>;
  /** Host directories of the volumes the container mounts (pod-volumes.ts prepare()). */
  mounts(c: V1Container, env: Record<string, string>): Promise<SidecarMount[]>;
  /** The pod's imagePullSecrets, as Secrets. */
  pullSecrets(): Promise<PullSecret[]>;
}

/** One run of an init container on the engine: how it ended, or why it could not start. */
export type InitRun =
  | { kind: 'exited'; exitCode: number; reason: string; message?: string; startedAt: Date; finishedAt: Date; containerID: string; imageID: string }
  | { kind: 'failed'; reason: string; message: string };

interface Member {
  /** native: an init container with restartPolicy Always; init: one that runs to completion. */
  kind: 'native' | 'sidecar' | 'init';
  container: V1Container;
  state: ContainerRuntimeState;
  /** The engine container of the current run, and the one before it (for logs --previous). */
  id?: string;
  previousId?: string;
  backoff: RestartBackoff;
  /** The probes of the current run. */
  prober?: ContainerProber;
  /** Why vmlet stopped the current run (a probe, postStart, a new definition): its termination message. */
  killedFor?: string;
  /** The next run starts at once, not after the back-off: vmlet stopped this one (a new network, a new definition). */
  restartNow?: boolean;
  /** The current run's address on the engine's network (the first sidecar's is the pod's). */
  ip?: string;
  /** The run of the first sidecar whose network namespace this run joined. */
  joined?: string;
  /** Native sidecars: told when the current run counts as started (the next init container may go). */
  onStarted?: Array<() => void>;
}

export class SidecarSet {
  private readonly members: Member[];
  private readonly done = new AbortController();
  /** The pod as last seen (update()). */
  private pod: V1Pod;
  /** Told when the network's owner runs (members waiting to join its network). */
  private readonly ownerRuns: Array<() => void> = [];

  constructor(private readonly o: SidecarSetOptions) {
    this.pod = o.pod;
    this.members = engineContainers(o.pod).map(({ container: c, kind }) => ({
      kind,
      container: c,
      state: { name: c.name, image: c.image ?? '', state: { kind: 'waiting', reason: 'ContainerCreating' }, ready: false, started: false, restartCount: 0 },
      backoff: new RestartBackoff(o.restartBackoff),
    }));
  }

  /** The sidecars' states (spec.containers), in spec order (copies). */
  states(): ContainerRuntimeState[] {
    return this.members.filter((m) => m.kind === 'sidecar').map((m) => ({ ...m.state }));
  }

  /** The native sidecars' states (spec.initContainers with restartPolicy Always), in spec order (copies). */
  nativeStates(): ContainerRuntimeState[] {
    return this.members.filter((m) => m.kind === 'native').map((m) => ({ ...m.state }));
  }

  /** The member whose network namespace the others share: the first that runs for the pod's life. */
  private owner(): Member | undefined {
    return this.members.find((m) => m.kind !== 'init');
  }

  has(name: string): boolean {
    return this.members.some((m) => m.container.name === name);
  }

  /**
   * Starts every sidecar, in spec order (the first one's network is the others'); resolves once each has
   * had its first try. Containers the pod already has on the engine (its VM was booted again after a
   * vmlet restart) are taken over as adopt() does.
   */
  async start(): Promise<void> {
    await this.adopt();
  }

  /**
   * Starts a native sidecar (an init container with restartPolicy Always) unless it already runs, and
   * resolves true once it counts as started (its startup probe passed, or it runs and has none), as the
   * kubelet waits before the next init container; false when the pod goes meanwhile. A failed start is
   * retried with the container's back-off meanwhile.
   */
  async startNative(name: string): Promise<boolean> {
    const m = this.member(name);
    if (m.kind !== 'native') throw new Error(`${name} is not a native sidecar`);
    if (this.done.signal.aborted) return false;
    if (m.state.started && m.state.state.kind === 'running') return true;
    const started = new Promise<boolean>((resolve) => {
      (m.onStarted ??= []).push(() => resolve(true));
      this.done.signal.addEventListener('abort', () => resolve(false), { once: true });
    });
    // A member with a run (or a back-off before the next one) is already on its way.
    if (!m.id && m.state.state.kind === 'waiting' && m.state.state.reason === 'ContainerCreating') void this.run(m);
    return started;
  }

  /**
   * One run of an init container on the engine, to its exit (the caller, PodRuntime, keeps the order,
   * the restart policy and the back-off); `onRunning` is told once it runs. Undefined when the pod goes.
   */
  async runInit(name: string, restartCount: number, onRunning: (startedAt: Date, containerID: string) => void): Promise<InitRun | undefined> {
    const m = this.member(name);
    const signal = this.done.signal;
    m.state = { ...m.state, restartCount };
    let id: string | undefined;
    try {
      const engine = await this.o.engine();
      id = await this.create(engine, m);
      if (!id) return undefined;
      await engine.start(id);
      const s = await engine.inspect(id);
      this.rotate(engine, m, id);
      const startedAt = s.startedAt ?? new Date();
      this.o.event('Normal', 'Started', `Started container ${m.container.name}`);
      onRunning(startedAt, s.containerID);
      const { exitCode } = await engine.wait(id, signal);
      if (signal.aborted) return undefined;
      const end = await engine.inspect(id).catch(() => undefined);
      return {
        kind: 'exited', exitCode, reason: end?.oomKilled ? 'OOMKilled' : exitCode === 0 ? 'Completed' : 'Error',
        startedAt, finishedAt: end?.finishedAt ?? new Date(), containerID: s.containerID, imageID: s.imageID,
      };
    } catch (err) {
      if (signal.aborted) return undefined;
      const { reason, message } = this.failure(m, err);
      if (id && m.id !== id) await (await this.o.engine().catch(() => undefined))?.remove(id, { force: true }).catch(() => undefined);
      return { kind: 'failed', reason, message };
    }
  }

  /**
   * After a vmlet restart: the pod's containers on the engine; a running current one is kept (not
   * restarted), an exited one is restarted (restartCount + 1), a missing one started.
   */
  async adopt(): Promise<void> {
    let found: SidecarSummary[];
    try {
      found = await (await this.o.engine()).list(this.pod.metadata!.uid);
    } catch (err) {
      this.o.log.warn({ uid: this.pod.metadata!.uid, err: (err as Error).message }, 'listing the sidecars of an adopted pod failed');
      found = [];
    }
    let adoptedFirst: string | undefined;
    const owner = this.owner();
    for (const m of this.members) {
      if (this.done.signal.aborted) return;
      // Init containers are run by PodRuntime, in order; a member already run by this set is not taken over.
      if (m.kind === 'init' || m.id || m.state.state.kind !== 'waiting' || m.state.state.reason !== 'ContainerCreating') continue;
      const mine = found.filter((s) => s.containerName === m.container.name).sort((a, b) => b.restartCount - a.restartCount);
      const current = mine[0];
      if (current?.engineState === 'running') {
        m.id = current.id;
        m.previousId = mine[1]?.id;
        const engine = await this.o.engine();
        const s = await engine.inspect(current.id).catch(() => undefined);
        m.ip = s?.ipAddress;
        if (m === owner) adoptedFirst = current.id;
        const startedAt = s?.startedAt ?? current.created;
        m.state = {
          ...m.state, restartCount: current.restartCount, containerID: `docker://${current.id}`, imageID: s?.imageID ?? '',
          state: { kind: 'running', startedAt }, ready: false, started: false,
        };
        this.watch(m, current.id);
        if (current.containerHash && current.containerHash !== containerHash(m.container)) {
          // The pod's spec changed while no vmlet watched (a new image): as the kubelet, restart it.
          this.changedDefinition(m);
        } else {
          this.startProbes(m, current.id, startedAt);
        }
        continue;
      }
      if (current) {
        m.previousId = current.id;
        m.state = { ...m.state, restartCount: current.restartCount + 1 };
      }
      await this.run(m);
    }
    // Running sidecars joined the first one's network when it was running; a first one started anew here
    // has a new network, which rejoin() (from run()) could not move them to, as they were not adopted yet.
    for (const m of this.members) if (m !== owner && m.kind !== 'init' && m.id && !m.joined && owner?.id && adoptedFirst === owner.id) m.joined = owner.id;
    if (owner?.id) this.rejoin(owner);
    this.o.changed();
  }

  /** vmlet is stopping: the sidecars keep running, to be adopted by the next vmlet; nothing is watched any more. */
  detach(): void {
    this.done.abort();
  }

  /**
   * The pod goes: every sidecar (in parallel) gets its preStop hook and then the engine's stop (SIGTERM,
   * SIGKILL when the grace period ends), all within `graceSeconds`; then they are removed.
   */
  async stop(graceSeconds: number): Promise<void> {
    this.done.abort();
    for (const m of this.members) {
      m.prober?.stop();
      m.prober = undefined;
    }
    let engine: SidecarEngine;
    try {
      engine = await this.o.engine();
    } catch {
      return;
    }
    const uid = this.pod.metadata!.uid!;
    const deadline = Date.now() + graceSeconds * 1000;
    await Promise.all(this.members.map(async (m) => {
      if (m.id) await this.stopRun(engine, m, m.id, deadline);
    }));
    const all = await engine.list(uid).catch(() => []);
    const remove = (list: SidecarSummary[]) => Promise.all(list.map((s) => engine.remove(s.id, { force: true })
      .catch((err: Error) => this.o.log.warn({ uid, err: err.message }, `removing sidecar ${s.engineName} failed`))));
    // The network's owner last: the engine refuses to remove a container others joined ("dependent containers").
    const owner = this.owner()?.container.name;
    await remove(all.filter((s) => s.containerName !== owner));
    await remove(all.filter((s) => s.containerName === owner));
  }

  /**
   * The pod's spec changed: a sidecar whose definition changed (its image: the one field of a container
   * the API lets change) is restarted with the new one, as the kubelet does.
   */
  update(pod: V1Pod): void {
    this.pod = pod;
    if (this.done.signal.aborted) return;
    const next = new Map(engineContainers(pod).map(({ container: c }) => [c.name, c]));
    for (const m of this.members) {
      const c = next.get(m.container.name);
      if (!c || containerHash(c) === containerHash(m.container)) continue;
      m.container = c;
      m.state = { ...m.state, image: c.image ?? '' };
      // A run of the old definition is replaced (an init container's run goes on: it ends by itself);
      // one still to come takes the new one anyway.
      if (m.kind !== 'init' && m.id && m.state.state.kind === 'running') this.changedDefinition(m);
    }
  }

  private changedDefinition(m: Member): void {
    const message = `Container ${m.container.name} definition changed, will be restarted`;
    this.o.event('Normal', 'Killing', message);
    m.restartNow = true;
    void this.kill(m, m.id!, message, undefined);
  }

  /**
   * A new run of the first sidecar has a new network namespace: the others, still in the old one, are
   * restarted (at once) to join it, so that `localhost` stays shared.
   */
  private rejoin(first: Member): void {
    for (const m of this.members) {
      if (m === first || m.kind === 'init' || !m.id || m.state.state.kind !== 'running' || m.joined === first.id) continue;
      const message = `Container ${m.container.name} shares the network of container ${first.container.name}, which was started again; restarting it to join the new network`;
      this.o.event('Normal', 'Killing', message);
      m.restartNow = true;
      void this.kill(m, m.id, message, undefined);
    }
  }

  /** Ends the run `id` of a sidecar for a restart (a failed probe or postStart, a new definition, a new network). */
  private async kill(m: Member, id: string, why: string, graceSeconds: number | undefined): Promise<void> {
    if (m.id !== id) return;
    m.prober?.stop();
    m.prober = undefined;
    m.killedFor = why;
    this.o.log.info({ uid: this.pod.metadata!.uid, container: m.container.name, why }, 'killing a sidecar');
    const grace = graceSeconds ?? this.pod.spec?.terminationGracePeriodSeconds ?? 30;
    const engine = await this.o.engine().catch(() => undefined);
    if (engine) await this.stopRun(engine, m, id, Date.now() + Math.max(grace, 1) * 1000);
  }

  /** The kubelet's container stop: preStop, then SIGTERM, then SIGKILL at `deadline`. */
  private async stopRun(engine: SidecarEngine, m: Member, id: string, deadline: number): Promise<void> {
    const c = m.container;
    const preStop = c.lifecycle?.preStop;
    if (preStop && m.state.state.kind === 'running') {
      const r = await runHandler(preStop, this.target(m), c, Math.max(deadline - Date.now(), 1000), { pod: this.pod.metadata! });
      for (const e of r.events ?? []) this.o.event(e.type, e.reason, e.message);
      if (!r.ok && !r.timedOut) {
        this.o.event('Warning', HOOK_FAILURE.preStop.reason, HOOK_FAILURE.preStop.message);
        this.o.log.warn({ uid: this.pod.metadata!.uid, container: c.name, message: r.message }, 'preStop hook failed');
      }
    }
    const seconds = Math.max(1, Math.ceil((deadline - Date.now()) / 1000));
    await engine.stop(id, seconds).catch((err: Error) => this.o.log.warn({ uid: this.pod.metadata!.uid, err: err.message }, `stopping sidecar ${c.name} failed`));
  }

  /** What a sidecar's probes and hooks run against: its current run, through the engine. */
  private target(m: Member): ProbeTarget {
    return engineProbeTarget({
      engine: () => this.o.engine(),
      id: () => (m.state.state.kind === 'running' ? m.id : undefined),
      endpoint: async (port) => {
        // Published on the pod IP by the first sidecar, for any sidecar's containerPort; else the shared
        // network namespace's address on the engine's network.
        const published = this.members.flatMap((x) => x.container.ports ?? []).find((p) => p.containerPort === port && (p.protocol ?? 'TCP') === 'TCP');
        if (published) return { host: published.hostIP ?? this.o.hostIP, port: published.hostPort ?? published.containerPort };
        const ip = this.owner()?.ip;
        return ip ? { host: ip, port } : undefined;
      },
      podIP: this.o.hostIP,
    });
  }

  /**
   * A run has started: its postStart hook (a failure kills the run, as on any node, and the restart
   * policy takes it from there), then its probes.
   */
  private async started(m: Member, id: string, startedAt: Date): Promise<void> {
    const c = m.container;
    const postStart = c.lifecycle?.postStart;
    if (postStart) {
      const r = await runHandler(postStart, this.target(m), c, POST_START_TIMEOUT_MS, { pod: this.pod.metadata!, signal: this.done.signal });
      for (const e of r.events ?? []) this.o.event(e.type, e.reason, e.message);
      if (!r.ok && !this.done.signal.aborted && m.id === id) {
        this.o.event('Warning', HOOK_FAILURE.postStart.reason, HOOK_FAILURE.postStart.message);
        await this.kill(m, id, `${HOOK_FAILURE.postStart.waitingReason}: ${r.message}`, undefined);
        return;
      }
    }
    this.startProbes(m, id, startedAt);
  }

  private startProbes(m: Member, id: string, startedAt: Date): void {
    if (this.done.signal.aborted || m.id !== id) return;
    m.prober?.stop();
    const prober = new ContainerProber({
      container: m.container, target: this.target(m), startedAt: startedAt.getTime(),
      onStarted: () => this.set(m, { started: true }),
      onReady: (ready) => this.set(m, { ready }),
      onRestart: (_reason, message, graceSeconds) => {
        this.o.event('Normal', 'Killing', message);
        void this.kill(m, id, message, graceSeconds);
      },
      onEvent: (type, reason, message) => this.o.event(type, reason, message),
    });
    m.prober = prober;
    prober.start();
  }

  // ----- the kubelet API -----

  private member(name: string): Member {
    const m = this.members.find((x) => x.container.name === name);
    if (!m) throw new Error(`no sidecar ${name}`);
    return m;
  }

  /** The engine container of the current run (or the previous one), or the container's waiting reason. */
  containerId(name: string, previous = false): string | undefined {
    const m = this.member(name);
    return previous ? m.previousId : m.id;
  }

  stateOf(name: string): ContainerRuntimeState {
    return this.member(name).state;
  }

  async exec(name: string, command: string[], opts: SidecarStreamOptions): Promise<SidecarProcess> {
    const m = this.member(name);
    if (!m.id || m.state.state.kind !== 'running') throw new SidecarEngineError('Conflict', `container "${name}" is not running`);
    return (await this.o.engine()).exec(m.id, command, opts);
  }

  async attach(name: string, opts: SidecarStreamOptions): Promise<SidecarProcess> {
    const m = this.member(name);
    if (!m.id || m.state.state.kind !== 'running') throw new SidecarEngineError('Conflict', `container "${name}" is not running`);
    return (await this.o.engine()).attach(m.id, opts);
  }

  async logs(id: string, opts: Parameters<SidecarEngine['logs']>[1]): Promise<Readable> {
    return (await this.o.engine()).logs(id, opts);
  }

  // ----- one run of a sidecar -----

  private set(m: Member, state: Partial<ContainerRuntimeState>): void {
    m.state = { ...m.state, ...state };
    if (m.state.started && m.onStarted) {
      for (const tell of m.onStarted.splice(0)) tell();
    }
    if (m.state.state.kind === 'running' && m === this.owner()) {
      for (const tell of this.ownerRuns.splice(0)) tell();
    }
    this.o.changed();
  }

  /** One run: pull, create, start, watch. A failure waits with its reason and is tried again after the back-off. */
  private async run(m: Member): Promise<void> {
    const signal = this.done.signal;
    let id: string | undefined;
    try {
      const engine = await this.o.engine();
      id = await this.create(engine, m);
      if (!id) return;
      await engine.start(id);
      const s = await engine.inspect(id);
      this.rotate(engine, m, id);
      m.ip = s.ipAddress;
      const startedAt = s.startedAt ?? new Date();
      this.set(m, {
        containerID: s.containerID, imageID: s.imageID,
        state: { kind: 'running', startedAt }, ready: false, started: false,
      });
      this.o.event('Normal', 'Started', `Started container ${m.container.name}`);
      this.watch(m, id);
      if (m === this.owner()) this.rejoin(m);
      void this.started(m, id, startedAt);
    } catch (err) {
      if (signal.aborted) return;
      const { reason, message } = this.failure(m, err);
      if (id && m.id !== id) await (await this.o.engine().catch(() => undefined))?.remove(id, { force: true }).catch(() => undefined);
      this.set(m, { state: { kind: 'waiting', reason, message }, ready: false, started: false });
      const wait = Math.max(m.backoff.next(0), 1000);
      void delay(wait, undefined, { signal }).then(() => this.run(m), () => undefined);
    }
  }

  /**
   * Pulls and creates the engine container of a member's next run (not started); undefined when the pod
   * went meanwhile. Its network: the owner's bridge network, publishing every long-running member's
   * ports; the other sidecars join the owner's namespace once it runs; an init container joins it when it
   * runs, else has the bridge to itself.
   */
  private async create(engine: SidecarEngine, m: Member): Promise<string | undefined> {
    const c = m.container;
    const pod = this.pod;
    const signal = this.done.signal;
    await this.pull(engine, m);
    if (signal.aborted) return undefined;
    const env = await this.o.env(c);
    const vars = new Map(Object.entries(env));
    const owner = this.owner();
    let networkMode = 'bridge';
    if (m.kind === 'init') {
      if (owner?.id && owner.state.state.kind === 'running') networkMode = `container:${owner.id}`;
    } else if (m !== owner && owner) {
      while (!owner.id || owner.state.state.kind !== 'running') {
        if (signal.aborted) return undefined;
        await new Promise<void>((resolve) => {
          this.ownerRuns.push(resolve);
          signal.addEventListener('abort', () => resolve(), { once: true });
        });
      }
      networkMode = `container:${owner.id}`;
      m.joined = owner.id;
    }
    const publishPorts = m === owner ? this.members.filter((x) => x !== owner && x.kind !== 'init').flatMap((x) => x.container.ports ?? []) : [];
    const mounts = await this.o.mounts(c, env);
    const out = await engine.create({
      pod: { namespace: pod.metadata!.namespace!, name: pod.metadata!.name!, uid: pod.metadata!.uid! },
      container: c,
      ...(pod.spec?.securityContext ? { podSecurityContext: pod.spec.securityContext } : {}),
      env: Object.entries(env).map(([name, value]) => ({ name, value })),
      ...(c.command ? { command: c.command.map((x) => expand(x, vars)) } : {}),
      ...(c.args ? { args: c.args.map((x) => expand(x, vars)) } : {}),
      restartCount: m.state.restartCount,
      mounts,
      networkMode,
      ...(m.kind === 'init' ? {} : { publishOn: this.o.hostIP }),
      ...(publishPorts.length > 0 ? { publishPorts } : {}),
      hostname: pod.spec?.hostname ?? pod.metadata!.name!,
    });
    if (m.state.restartCount === 0) for (const why of out.ignored) this.o.event('Warning', 'UnsupportedPodSpecField', `container ${c.name}: ${why}`);
    if (signal.aborted) {
      await engine.remove(out.id, { force: true }).catch(() => undefined);
      return undefined;
    }
    this.o.event('Normal', 'Created', `Created container ${c.name} (engine container ${out.name})`);
    return out.id;
  }

  /** `id` is the member's current run; the one before becomes the previous (logs --previous), older ones go. */
  private rotate(engine: SidecarEngine, m: Member, id: string): void {
    const stale = m.previousId;
    m.previousId = m.id ?? m.previousId;
    if (stale && stale !== m.previousId) void engine.remove(stale, { force: true }).catch(() => undefined);
    m.id = id;
  }

  /** A run that could not start: its waiting reason (the kubelet's words) and message; logged and told. */
  private failure(m: Member, err: unknown): { reason: string; message: string } {
    const c = m.container;
    const was = m.state.state;
    const reason = err instanceof SidecarEngineUnavailable ? 'SidecarEngineUnavailable'
      : err instanceof SidecarEngineError ? (err.reason === 'ErrImagePull' ? (was.kind === 'waiting' && ['ErrImagePull', 'ImagePullBackOff'].includes(was.reason) ? 'ImagePullBackOff' : 'ErrImagePull') : err.reason === 'InvalidSpec' ? 'CreateContainerConfigError' : 'CreateContainerError')
      : 'CreateContainerError';
    const message = (err as Error).message.split('\n')[0]!;
    this.o.log.warn({ uid: this.pod.metadata!.uid, container: c.name, err: message }, 'starting a container on the engine failed');
    this.o.event('Warning', reason === 'SidecarEngineUnavailable' ? 'SidecarEngineUnavailable' : 'Failed', `Error: container ${c.name}: ${message}`);
    m.state = { ...m.state, state: { kind: 'waiting', reason, message } };
    return { reason, message };
  }

  /** imagePullPolicy as the kubelet: Always pulls, IfNotPresent pulls a missing image, Never never does. */
  private async pull(engine: SidecarEngine, m: Member): Promise<void> {
    const ref = m.container.image!;
    const policy = m.container.imagePullPolicy ?? (ref.endsWith(':latest') || !ref.split('/').pop()!.includes(':') ? 'Always' : 'IfNotPresent');
    if (policy !== 'Always' && (await engine.hasImage(ref))) {
      if (m.state.restartCount === 0) this.o.event('Normal', 'Pulled', `Container image "${ref}" already present on machine`);
      return;
    }
    if (policy === 'Never') throw new SidecarEngineError('InvalidSpec', `Container image "${ref}" is not present with pull policy of Never`);
    this.o.event('Normal', 'Pulling', `Pulling image "${ref}"`);
    const started = Date.now();
    const pullSecrets = await this.o.pullSecrets();
    await engine.pull(ref, { ...(pullSecrets.length ? { pullSecrets } : {}), signal: this.done.signal });
    this.o.event('Normal', 'Pulled', `Successfully pulled image "${ref}" in ${((Date.now() - started) / 1000).toFixed(1)}s`);
  }

  /** The run's exit goes through the pod's restart policy, with the sidecar's own back-off. */
  private watch(m: Member, id: string): void {
    const signal = this.done.signal;
    void (async () => {
      const engine = await this.o.engine();
      const { exitCode } = await engine.wait(id, signal);
      if (signal.aborted || m.id !== id) return;
      const s = await engine.inspect(id).catch(() => undefined);
      const started = m.state.state.kind === 'running' ? m.state.state.startedAt : s?.startedAt;
      const finishedAt = s?.finishedAt ?? new Date();
      const reason = s?.oomKilled ? 'OOMKilled' : exitCode === 0 ? 'Completed' : 'Error';
      m.prober?.stop();
      m.prober = undefined;
      const message = m.killedFor;
      m.killedFor = undefined;
      const terminated = { exitCode, reason, ...(message ? { message } : {}), ...(started ? { startedAt: started } : {}), finishedAt };
      // A native sidecar is restarted whatever the pod's policy (its own restartPolicy is Always).
      const policy = m.kind === 'native' ? 'Always' : this.pod.spec?.restartPolicy ?? 'Always';
      const name = m.container.name;
      if (!(policy === 'Always' || (policy === 'OnFailure' && exitCode !== 0))) {
        this.set(m, { state: { kind: 'terminated', ...terminated }, ready: false, started: false });
        return;
      }
      // A run vmlet replaced (a new network, a new definition) is followed at once, without a back-off.
      const wait = m.restartNow ? 0 : m.backoff.next(started ? finishedAt.getTime() - started.getTime() : 0);
      m.restartNow = false;
      const podKey = `${this.pod.metadata!.name}_${this.pod.metadata!.namespace}(${this.pod.metadata!.uid})`;
      this.set(m, {
        lastTermination: terminated, ready: false, started: false,
        state: wait > 0 ? { kind: 'waiting', reason: 'CrashLoopBackOff', message: `back-off ${RestartBackoff.format(wait)} restarting failed container=${name} pod=${podKey}` } : { kind: 'terminated', ...terminated },
      });
      if (wait > 0) this.o.event('Warning', 'BackOff', `Back-off restarting failed container ${name} in pod ${podKey}`);
      await delay(wait, undefined, { signal }).catch(() => undefined);
      if (signal.aborted) return;
      m.state = { ...m.state, restartCount: m.state.restartCount + 1 };
      await this.run(m);
    })().catch((err: Error) => {
      if (signal.aborted) return;
      this.o.log.warn({ uid: this.pod.metadata!.uid, container: m.container.name, err: err.message }, 'watching a sidecar failed');
      this.set(m, { state: { kind: 'waiting', reason: 'SidecarEngineUnavailable', message: err.message }, ready: false, started: false });
    });
  }
}
