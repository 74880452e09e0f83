// The kubelet's crash-loop back-off for one container: the first restart is at once, the second waits
// `initialMs` (10 s), each later one twice as long up to `maxMs` (5 min), and a run that lasted `resetAfterMs` (twice the maximum,
// as the kubelet does) starts the sequence over. No jitter: the kubelet has none, and a user reading
// "back-off 40s restarting failed container" expects 40 s. Pure: run times are arguments.

import { goDuration } from '../../kube/go-duration.ts';

export interface RestartBackoffOptions {
  initialMs?: number;
  maxMs?: number;
  /** A run at least this long resets the back-off (default 2 × maxMs). */
  resetAfterMs?: number;
}

export class RestartBackoff {
  private readonly initialMs: number;
  private readonly maxMs: number;
  private readonly resetAfterMs: number;
  private restarts = 0;
  private current = 0;

  constructor(opts: RestartBackoffOptions = {}) {
    this.initialMs = opts.initialMs ?? 10_000;
    this.maxMs = Math.max(opts.maxMs ?? 300_000, this.initialMs);
    this.resetAfterMs = opts.resetAfterMs ?? 2 * this.maxMs;
  }

  /** The wait before restarting a container whose last run lasted `ranMs`. */
  next(ranMs: number): number {
    if (ranMs >= this.resetAfterMs) this.restarts = 0;
    this.restarts++;
    if (this.restarts === 1) this.current = 0;
    else this.current = this.current === 0 ? this.initialMs : Math.min(this.current * 2, this.maxMs);
    return this.current;
  }

  /** "10s", "1m20s", "5m0s": Go's duration format, which the kubelet's BackOff messages use. */
  static format(ms: number): string {
    return goDuration(ms);
  }
}
