// Prometheus metrics of the agent itself, served on the admin port's /metrics.
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

/** The agent's metrics in one registry, so tests and the admin server share one instance per process. */
export class AgentMetrics {
  readonly registry = new Registry();

  readonly apiRequests = new Counter({
    name: 'vmlet_api_requests_total',
    help: 'Requests vmlet sent to the Kubernetes API server, by verb, resource and HTTP status code (0 = no answer).',
    labelNames: ['verb', 'resource', 'code'] as const,
    registers: [this.registry],
  });

  readonly apiReachable = new Gauge({
    name: 'vmlet_apiserver_reachable',
    help: '1 while the API server answers, 0 during an outage.',
    registers: [this.registry],
  });

  readonly leaseRenewals = new Counter({
    name: 'vmlet_node_lease_renewals_total',
    help: "Renewals of the Node's Lease, by result.",
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly nodeStatusUpdates = new Counter({
    name: 'vmlet_node_status_updates_total',
    help: 'Patches of the Node status, by reason (changed, heartbeat, recovered) and result.',
    labelNames: ['reason', 'result'] as const,
    registers: [this.registry],
  });

  readonly watchRestarts = new Counter({
    name: 'vmlet_watch_restarts_total',
    help: 'Watches re-established, by resource and reason (timeout, idle, gone, error).',
    labelNames: ['resource', 'reason'] as const,
    registers: [this.registry],
  });

  constructor(options: { processMetrics?: boolean } = {}) {
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'vmlet_' });
  }
}
