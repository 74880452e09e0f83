// ContainerProber's timing and state, as the kubelet's probe workers behave: a fake clock drives the
// timers (no waiting), and a scripted runner stands in for the handlers (tested on their own against real
// servers in probes-handlers.test.ts).
import type { V1Probe } from '@kubernetes/client-node';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ProbeOutcome, ProbeTarget } from '../../../src/runtime/probes/handlers.ts';
import { ContainerProber, probeTiming, type ProberClock, type ProberContainer, type ProbeKind } from '../../../src/runtime/probes/prober.ts';

const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

class FakeClock implements ProberClock {
  t = 0;
  private seq = 0;
  readonly timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + ms, fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  /** Moves time on by `seconds`, running the timers due on the way in order, settling promises between them. */
  async advance(seconds: number): Promise<void> {
    const end = this.t + seconds * 1000;
    for (;;) {
      await flush();
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.timers) if (entry[1].at <= end && (!next || entry[1].at < next[1].at)) next = entry;
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = end;
    await flush();
  }
}

const target: ProbeTarget = { exec: () => Promise.reject(new Error('unused')), connect: () => Promise.reject(new Error('unused')) };
const ok: ProbeOutcome = { result: 'success', message: '' };
const bad: ProbeOutcome = { result: 'failure', message: 'HTTP probe failed with statuscode: 500' };
const unknown: ProbeOutcome = { result: 'unknown', message: 'the VM agent is not connected' };

function probe(p: Partial<V1Probe> = {}): V1Probe {
  return { httpGet: { port: 8080, path: '/healthz' }, ...p };
}

function setup(container: Omit<ProberContainer, 'name'>, answer: (kind: ProbeKind) => ProbeOutcome | Promise<ProbeOutcome>) {
  const c: ProberContainer = { name: 'app', ...container };
  const clock = new FakeClock();
  const calls: string[] = [];
  const log: string[] = [];
  const kindOf = (p: V1Probe): ProbeKind => (p === c.startupProbe ? 'startup' : p === c.livenessProbe ? 'liveness' : 'readiness');
  const prober = new ContainerProber({
    container: c, target, clock, startedAt: 0,
    run: async (p) => {
      const kind = kindOf(p);
      calls.push(`${kind}@${clock.now() / 1000}`);
      return answer(kind);
    },
    onReady: (ready) => log.push(`ready=${ready}`),
    onStarted: () => log.push('started'),
    onRestart: (reason, message, grace) => log.push(`restart ${reason}: ${message} (grace ${grace})`),
    onEvent: (type, reason, message) => log.push(`${type} ${reason}: ${message}`),
  });
  return { clock, calls, log, prober };
}

test('the API defaults fill a probe\'s timing', () => {
  assert.deepEqual(probeTiming({}), { initialDelaySeconds: 0, periodSeconds: 10, timeoutSeconds: 1, successThreshold: 1, failureThreshold: 3 });
});

test('without probes the container is started and ready at once', async () => {
  const { log, prober, clock } = setup({}, () => ok);
  prober.start();
  await clock.advance(60);
  assert.deepEqual(log, ['started', 'ready=true']);
  assert.equal(prober.ready, true);
  assert.equal(clock.timers.size, 0);
});

test('probes run at once and then every periodSeconds (default 10)', async () => {
  const { calls, prober, clock } = setup({ livenessProbe: probe(), readinessProbe: probe({ periodSeconds: 3 }) }, () => ok);
  prober.start();
  await clock.advance(30);
  assert.deepEqual(calls.filter((c) => c.startsWith('liveness')), ['liveness@0', 'liveness@10', 'liveness@20', 'liveness@30']);
  assert.deepEqual(calls.filter((c) => c.startsWith('readiness')).length, 11);
  prober.stop();
});

test('readiness starts false with a probe, turns true on success and flips back and forth at the thresholds', async () => {
  let answer = ok;
  const { log, prober, clock } = setup({ readinessProbe: probe({ periodSeconds: 1, failureThreshold: 2, successThreshold: 2 }) }, () => answer);
  prober.start();
  assert.equal(prober.ready, false);
  assert.deepEqual(log, ['started']);
  await clock.advance(0);
  assert.equal(prober.ready, false, 'one success of two');
  await clock.advance(1);
  assert.equal(prober.ready, true);
  answer = bad;
  await clock.advance(1);
  assert.equal(prober.ready, true, 'one failure of two');
  await clock.advance(1);
  assert.equal(prober.ready, false);
  answer = ok;
  await clock.advance(2);
  assert.equal(prober.ready, true);
  assert.deepEqual(log, [
    'started', 'ready=true',
    'Warning Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 500',
    'Warning Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 500',
    'ready=false', 'ready=true',
  ]);
  prober.stop();
});

test('initialDelaySeconds skips the ticks before it; the first probe is the first tick after', async () => {
  const { calls, prober, clock } = setup({ livenessProbe: probe({ initialDelaySeconds: 15 }) }, () => ok);
  prober.start();
  await clock.advance(19);
  assert.deepEqual(calls, []);
  await clock.advance(1);
  assert.deepEqual(calls, ['liveness@20']);
  prober.stop();
});

test('the startup probe gates liveness and readiness; its success starts the container and probes readiness at once', async () => {
  let startup = bad;
  const { calls, log, prober, clock } = setup({
    startupProbe: probe({ periodSeconds: 2, failureThreshold: 30 }), livenessProbe: probe({ periodSeconds: 5 }), readinessProbe: probe({ periodSeconds: 10 }),
  }, (kind) => (kind === 'startup' ? startup : ok));
  prober.start();
  await clock.advance(6);
  assert.deepEqual(calls, ['startup@0', 'startup@2', 'startup@4', 'startup@6']);
  assert.equal(prober.started, false);
  startup = ok;
  await clock.advance(2);
  assert.equal(prober.started, true);
  // readiness at once (8), liveness at its next tick (10); startup no more.
  await clock.advance(12);
  assert.deepEqual(calls.slice(4), ['startup@8', 'readiness@8', 'readiness@10', 'liveness@10', 'liveness@15', 'readiness@20', 'liveness@20']);
  assert.deepEqual(log.filter((l) => !l.startsWith('Warning')), ['started', 'ready=true']);
  assert.equal(log.filter((l) => l.startsWith('Warning Unhealthy: Startup probe failed')).length, 4);
  prober.stop();
});

test('a startup probe failing failureThreshold times asks for a restart and holds until reset()', async () => {
  const { calls, log, prober, clock } = setup({ startupProbe: probe({ periodSeconds: 1, failureThreshold: 2, terminationGracePeriodSeconds: 5 }), livenessProbe: probe() }, () => bad);
  prober.start();
  await clock.advance(5);
  assert.deepEqual(calls, ['startup@0', 'startup@1']);
  assert.deepEqual(log.filter((l) => l.startsWith('restart')), ['restart StartupProbe: Container app failed startup probe, will be restarted (grace 5)']);
  prober.reset();
  await clock.advance(1);
  assert.deepEqual(calls.slice(2), ['startup@6']);
  prober.stop();
});

test('liveness failing failureThreshold times restarts once, stops probing, and after reset() counts afresh', async () => {
  let live = ok;
  const { calls, log, prober, clock } = setup({ livenessProbe: probe({ periodSeconds: 1 }), readinessProbe: probe({ periodSeconds: 1 }) }, (kind) => (kind === 'liveness' ? live : ok));
  prober.start();
  await clock.advance(1);
  assert.equal(prober.ready, true);
  live = bad;
  await clock.advance(5);
  const restarts = () => log.filter((l) => l.startsWith('restart'));
  assert.deepEqual(restarts(), ['restart LivenessProbe: Container app failed liveness probe, will be restarted (grace undefined)']);
  assert.deepEqual(calls.filter((c) => c.startsWith('liveness')), ['liveness@0', 'liveness@1', 'liveness@2', 'liveness@3', 'liveness@4']);
  assert.equal(log.filter((l) => l === 'Warning Unhealthy: Liveness probe failed: HTTP probe failed with statuscode: 500').length, 3);
  // The container restarts: results go back to their initial values.
  prober.reset();
  assert.equal(prober.ready, false);
  await clock.advance(2);
  assert.equal(restarts().length, 1, 'two failures after the reset are below the threshold');
  await clock.advance(1);
  assert.equal(restarts().length, 2);
  prober.stop();
});

test('unknown results are not counted: retried three times, told as errored, the threshold unmoved', async () => {
  const answers = [bad, unknown, unknown, unknown, bad, bad];
  const { calls, log, prober, clock } = setup({ livenessProbe: probe({ periodSeconds: 1 }) }, () => answers.shift() ?? ok);
  prober.start();
  await clock.advance(1);
  assert.deepEqual(log.filter((l) => l.startsWith('restart')), []);
  assert.deepEqual(calls, ['liveness@0', 'liveness@1', 'liveness@1', 'liveness@1']);
  assert.equal(log.at(-1), 'Warning Unhealthy: Liveness probe errored and resulted in unknown state: the VM agent is not connected');
  await clock.advance(1);
  assert.deepEqual(log.filter((l) => l.startsWith('restart')), [], 'two failures counted so far');
  await clock.advance(1);
  assert.equal(log.at(-1), 'restart LivenessProbe: Container app failed liveness probe, will be restarted (grace undefined)');
  prober.stop();
});

test('a success with a warning counts as success and is told as ProbeWarning', async () => {
  const { log, prober, clock } = setup({ readinessProbe: probe() }, () => ({ result: 'success', warning: true, message: 'Probe terminated redirects, Response body: ' }));
  prober.start();
  await clock.advance(0);
  assert.deepEqual(log, ['started', 'Warning ProbeWarning: Readiness probe warning: Probe terminated redirects, Response body: ', 'ready=true']);
  prober.stop();
});

test('a probe slower than its period never overlaps itself; the missed tick runs once when it ends', async () => {
  let running = 0;
  let overlap = false;
  const { calls, clock, prober } = setup({ livenessProbe: probe({ periodSeconds: 1 }) }, () => {
    if (++running > 1) overlap = true;
    return new Promise<ProbeOutcome>((resolve) => clock.setTimeout(() => {
      running--;
      resolve(ok);
    }, 2500));
  });
  prober.start();
  await clock.advance(6);
  assert.equal(overlap, false);
  assert.deepEqual(calls, ['liveness@0', 'liveness@2.5', 'liveness@5']);
  prober.stop();
});

test('a run that straddles reset() is thrown away', async () => {
  let release: (o: ProbeOutcome) => void = () => undefined;
  const { log, prober, clock } = setup({ readinessProbe: probe() }, () => new Promise<ProbeOutcome>((resolve) => (release = resolve)));
  prober.start();
  await clock.advance(0);
  prober.reset();
  release(ok);
  await clock.advance(0);
  assert.equal(prober.ready, false);
  assert.deepEqual(log, ['started', 'started']);
  prober.stop();
});

test('terminating() ends liveness and startup; readiness goes on', async () => {
  const { calls, prober, clock } = setup({ livenessProbe: probe({ periodSeconds: 1 }), readinessProbe: probe({ periodSeconds: 1 }) }, () => ok);
  prober.start();
  await clock.advance(1);
  prober.terminating();
  await clock.advance(2);
  assert.deepEqual(calls.filter((c) => c.startsWith('liveness')), ['liveness@0', 'liveness@1']);
  assert.deepEqual(calls.filter((c) => c.startsWith('readiness')), ['readiness@0', 'readiness@1', 'readiness@2', 'readiness@3']);
  prober.stop();
});

test('stop() clears every timer and no callback comes after it, even from a run in flight', async () => {
  let release: (o: ProbeOutcome) => void = () => undefined;
  const { log, prober, clock } = setup({
    startupProbe: probe({ periodSeconds: 1 }), livenessProbe: probe(), readinessProbe: probe(),
  }, () => new Promise<ProbeOutcome>((resolve) => (release = resolve)));
  prober.start();
  await clock.advance(0);
  prober.stop();
  assert.equal(clock.timers.size, 0);
  release(ok);
  await clock.advance(30);
  assert.deepEqual(log, []);
  assert.equal(prober.started, false);
});

test('the probe-level terminationGracePeriodSeconds is exposed for the kill', () => {
  const { prober } = setup({ livenessProbe: probe({ terminationGracePeriodSeconds: 7 }) }, () => ok);
  assert.equal(prober.terminationGracePeriodSeconds('liveness'), 7);
  assert.equal(prober.terminationGracePeriodSeconds('startup'), undefined);
});
