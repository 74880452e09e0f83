// Whether the API server is answering, as seen by every request vmlet makes. An outage is logged once
// when it starts and once when it ends — not once per failed request — and listeners hear of the recovery
// so that the node can post its status at once instead of waiting for its next turn.
import type { Logger } from '../observability/log.ts';
import type { AgentMetrics } from '../observability/metrics.ts';

export class ApiHealth {
  private down = false;
  private since = 0;
  private lastError = '';
  private readonly listeners: Array<() => void> = [];

  constructor(
    private readonly log: Logger,
    private readonly metrics: AgentMetrics,
    private readonly clock: () => number = Date.now,
  ) {
    metrics.apiReachable.set(1);
  }

  get reachable(): boolean {
    return !this.down;
  }

  /** When the current outage started (ms since epoch), or undefined while reachable. */
  get outageSince(): number | undefined {
    return this.down ? this.since : undefined;
  }

  onRecovered(listener: () => void): void {
    this.listeners.push(listener);
  }

  succeeded(): void {
    if (!this.down) return;
    this.down = false;
    this.metrics.apiReachable.set(1);
    const seconds = Math.round((this.clock() - this.since) / 1000);
    this.log.info({ outageSeconds: seconds }, `API server reachable again after ${seconds}s`);
    for (const listener of this.listeners) listener();
  }

  failed(reason: string): void {
    if (this.down) {
      if (reason !== this.lastError) this.log.debug({ err: reason }, 'API server still unreachable');
      this.lastError = reason;
      return;
    }
    this.down = true;
    this.since = this.clock();
    this.lastError = reason;
    this.metrics.apiReachable.set(0);
    this.log.warn({ err: reason }, `API server unreachable: ${reason}; retrying quietly until it answers`);
  }
}
