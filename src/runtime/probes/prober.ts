// A container's probe workers, timed as the kubelet's (pkg/kubelet/prober/worker.go, prober_manager.go):
// one worker per probe, each probing at once and then every periodSeconds, never two runs of one probe at
// a time; a result counts only after successThreshold / failureThreshold of the same in a row; until the
// startup probe succeeds the container is not started and the other probes wait; a liveness or startup
// failure asks for a restart and holds that worker until reset() says a new container runs.
import type { V1Container, V1Probe } from '@kubernetes/client-node';
import { runProbe, type ProbeContainer, type ProbeOutcome, type ProbeTarget } from './handlers.ts';

export type ProbeKind = 'startup' | 'liveness' | 'readiness';

/** Timers the prober uses; tests pass a fake one. */
export interface ProberClock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: ProberClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export type ProberContainer = ProbeContainer & Pick<V1Container, 'startupProbe' | 'livenessProbe' | 'readinessProbe'>;

export interface ContainerProberOptions {
  container: ProberContainer;
  target: ProbeTarget;
  /** When the container started (ms since the epoch): initialDelaySeconds counts from it. Default: start() time. */
  startedAt?: number;
  /** Readiness changed (only changes are told). */
  onReady(ready: boolean): void;
  /** The container counts as started (startup probe passed, or there is none). */
  onStarted(): void;
  /**
   * Liveness or startup failed failureThreshold times: kill the container with this reason
   * ("LivenessProbe" / "StartupProbe") and message (the kubelet's Normal `Killing` event text, e.g.
   * "Container app failed liveness probe, will be restarted"), within `gracePeriodSeconds` when the probe
   * sets one (else the pod's). That worker then waits for reset().
   */
  onRestart(reason: 'LivenessProbe' | 'StartupProbe', message: string, gracePeriodSeconds: number | undefined): void;
  /** An event for the pod, as the kubelet's prober records them (Warning Unhealthy, Warning ProbeWarning). */
  onEvent(type: 'Normal' | 'Warning', reason: string, message: string): void;
  clock?: ProberClock;
  /** Runs one probe (default: runProbe). */
  run?: (probe: V1Probe, target: ProbeTarget, container: ProbeContainer) => Promise<ProbeOutcome>;
}

/** prober.go maxProbeRetries: a probe that errored (unknown) is tried again at once, this many times in all. */
const MAX_PROBE_RETRIES = 3;

const KIND_WORD: Record<ProbeKind, string> = { startup: 'Startup', liveness: 'Liveness', readiness: 'Readiness' };

/** A probe's settings with the API defaults filled in. */
export interface ProbeTiming {
  initialDelaySeconds: number;
  periodSeconds: number;
  timeoutSeconds: number;
  successThreshold: number;
  failureThreshold: number;
}

export function probeTiming(p: V1Probe): ProbeTiming {
  return {
    initialDelaySeconds: p.initialDelaySeconds ?? 0,
    periodSeconds: p.periodSeconds || 10,
    timeoutSeconds: p.timeoutSeconds || 1,
    successThreshold: p.successThreshold || 1,
    failureThreshold: p.failureThreshold || 3,
  };
}

class Worker {
  readonly timing: ProbeTiming;
  private lastResult: 'success' | 'failure' | undefined;
  private resultRun = 0;
  onHold = false;
  private running = false;
  /** A tick or trigger came while running: run once more right after (Go's ticker keeps one). */
  private pending = false;
  private timer: unknown;
  private nextAt = 0;
  private stopped = false;
  /** Bumped by reset(): a run that straddles it is thrown away. */
  private generation = 0;

  constructor(readonly kind: ProbeKind, readonly probe: V1Probe, private readonly owner: ContainerProber, private readonly clock: ProberClock) {
    this.timing = probeTiming(probe);
  }

  start(): void {
    this.nextAt = this.clock.now();
    this.tick();
  }

  stop(): void {
    this.stopped = true;
    this.clock.clearTimeout(this.timer);
  }

  reset(): void {
    this.generation++;
    this.onHold = false;
    this.lastResult = undefined;
    this.resultRun = 0;
  }

  /** The readiness trigger (prober_manager's manualTriggerCh): probe now, outside the ticks. */
  trigger(): void {
    if (this.stopped) return;
    if (this.running) this.pending = true;
    else void this.probe1();
  }

  private tick(): void {
    if (this.stopped) return;
    const period = this.timing.periodSeconds * 1000;
    const now = this.clock.now();
    // The next tick on the period's grid, skipping the ones missed (a ticker drops them).
    do this.nextAt += period; while (this.nextAt <= now);
    this.timer = this.clock.setTimeout(() => this.tick(), this.nextAt - now);
    this.trigger();
  }

  private async probe1(): Promise<void> {
    const o = this.owner;
    if (this.onHold) return;
    if (Math.floor((this.clock.now() - o.startedAt) / 1000) < this.timing.initialDelaySeconds) return;
    if (this.kind === 'startup' ? o.started : !o.started) return;
    this.running = true;
    const generation = this.generation;
    let outcome: ProbeOutcome;
    try {
      outcome = await o.runOnce(this.probe);
      for (let i = 1; i < MAX_PROBE_RETRIES && outcome.result === 'unknown' && !this.stopped && generation === this.generation; i++) {
        outcome = await o.runOnce(this.probe);
      }
    } finally {
      this.running = false;
    }
    if (this.stopped || generation !== this.generation) return;
    this.record(outcome);
    if (this.pending) {
      this.pending = false;
      void this.probe1();
    }
  }

  private record(outcome: ProbeOutcome): void {
    const o = this.owner;
    const word = KIND_WORD[this.kind];
    if (outcome.result === 'unknown') {
      // worker.go: a probe that errored is thrown away.
      o.event('Warning', 'Unhealthy', `${word} probe errored and resulted in unknown state: ${outcome.message}`);
      return;
    }
    if (outcome.result === 'failure') o.event('Warning', 'Unhealthy', `${word} probe failed: ${outcome.message}`);
    else if (outcome.warning) o.event('Warning', 'ProbeWarning', `${word} probe warning: ${outcome.message}`);
    const result = outcome.result;
    if (this.lastResult === result) this.resultRun++;
    else {
      this.lastResult = result;
      this.resultRun = 1;
    }
    if ((result === 'failure' && this.resultRun < this.timing.failureThreshold) || (result === 'success' && this.resultRun < this.timing.successThreshold)) return;
    if (result === 'failure' && this.kind !== 'readiness') {
      this.onHold = true;
      this.resultRun = 0;
    }
    o.result(this.kind, result);
  }
}

/** The probes of one container. Construct, then start(); stop() when the container is gone for good. */
export class ContainerProber {
  private readonly clock: ProberClock;
  private readonly workers = new Map<ProbeKind, Worker>();
  private readonly runner: NonNullable<ContainerProberOptions['run']>;
  startedAt: number;
  private isStarted = false;
  private isReady = false;
  private stopped = false;
  private workersStarted = false;

  constructor(private readonly o: ContainerProberOptions) {
    this.clock = o.clock ?? systemClock;
    this.runner = o.run ?? runProbe;
    this.startedAt = o.startedAt ?? Number.NaN;
    const c = o.container;
    if (c.startupProbe) this.workers.set('startup', new Worker('startup', c.startupProbe, this, this.clock));
    if (c.livenessProbe) this.workers.set('liveness', new Worker('liveness', c.livenessProbe, this, this.clock));
    if (c.readinessProbe) this.workers.set('readiness', new Worker('readiness', c.readinessProbe, this, this.clock));
  }

  /** Whether the container counts as started (ContainerStatus.started). */
  get started(): boolean {
    return this.isStarted;
  }

  /** Whether the container is ready (ContainerStatus.ready). */
  get ready(): boolean {
    return this.isReady;
  }

  /** The probe's terminationGracePeriodSeconds (liveness and startup only), for the kill after its failure. */
  terminationGracePeriodSeconds(kind: 'liveness' | 'startup'): number | undefined {
    return this.workers.get(kind)?.probe.terminationGracePeriodSeconds;
  }

  start(): void {
    if (Number.isNaN(this.startedAt)) this.startedAt = this.clock.now();
    this.initialState();
    // Each worker's first probe is now: the readiness trigger of setStarted is not needed for it.
    this.workersStarted = true;
    for (const w of this.workers.values()) w.start();
  }

  /**
   * A new container runs (after onRestart, or any restart): results go back to their initial values
   * (not started while there is a startup probe, not ready while there is a readiness probe), held
   * workers probe again, initialDelaySeconds counts from `startedAt` (default now).
   */
  reset(startedAt?: number): void {
    if (this.stopped) return;
    this.startedAt = startedAt ?? this.clock.now();
    for (const w of this.workers.values()) w.reset();
    this.initialState();
  }

  /**
   * The pod is being deleted: liveness and startup stop (the kubelet lets a terminating container be);
   * readiness goes on until stop().
   */
  terminating(): void {
    for (const kind of ['liveness', 'startup'] as const) this.workers.get(kind)?.stop();
  }

  /** Ends every worker; no callback is called after this. */
  stop(): void {
    this.stopped = true;
    for (const w of this.workers.values()) w.stop();
  }

  // ----- for the workers -----

  runOnce(probe: V1Probe): Promise<ProbeOutcome> {
    return this.runner(probe, this.o.target, this.o.container).catch((err: unknown) => ({
      result: 'unknown' as const, message: err instanceof Error ? err.message : String(err),
    }));
  }

  event(type: 'Normal' | 'Warning', reason: string, message: string): void {
    if (!this.stopped) this.o.onEvent(type, reason, message);
  }

  result(kind: ProbeKind, result: 'success' | 'failure'): void {
    if (this.stopped) return;
    const name = this.o.container.name;
    if (kind === 'startup') {
      if (result === 'success') this.setStarted();
      else this.o.onRestart('StartupProbe', `Container ${name} failed startup probe, will be restarted`, this.terminationGracePeriodSeconds('startup'));
    } else if (kind === 'liveness') {
      if (result === 'failure') this.o.onRestart('LivenessProbe', `Container ${name} failed liveness probe, will be restarted`, this.terminationGracePeriodSeconds('liveness'));
    } else {
      this.setReady(result === 'success');
    }
  }

  private initialState(): void {
    this.isStarted = false;
    this.setReady(false);
    if (!this.workers.has('startup')) this.setStarted();
  }

  private setStarted(): void {
    if (this.isStarted) return;
    this.isStarted = true;
    this.o.onStarted();
    const readiness = this.workers.get('readiness');
    // Without a readiness probe a started container is ready; with one, it is probed at once.
    if (!readiness) this.setReady(true);
    else if (this.workersStarted) readiness.trigger();
  }

  private setReady(ready: boolean): void {
    if (this.isReady === ready || this.stopped) return;
    this.isReady = ready;
    this.o.onReady(ready);
  }
}
