// The cluster's Services, for pods' service-link variables: one watch of all Services, as the kubelet's
// service informer keeps (the Node authorizer lets a node list and watch them), started when the first pod
// needs it, so that a pod start costs no API request for its environment. Until the first list has
// arrived a pod waits for it, at most `syncTimeoutMs` (then it starts with what is known, like the kubelet
// does after its own wait).
import type { V1Service, V1ServiceList } from '@kubernetes/client-node';
import type { KubeApi } from '../client.ts';
import { Reflector } from '../reflector.ts';
import type { Logger } from '../../observability/log.ts';
import type { AgentMetrics } from '../../observability/metrics.ts';

export class ServiceCache {
  private reflector?: Reflector<V1Service>;
  private syncWaiters: Array<() => void> = [];

  constructor(private readonly o: { api: KubeApi; log: Logger; metrics: AgentMetrics; syncTimeoutMs?: number }) {}

  async list(): Promise<V1Service[]> {
    const r = this.start();
    if (!r.synced) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.o.syncTimeoutMs ?? 10_000);
        this.syncWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return r.items();
  }

  private start(): Reflector<V1Service> {
    if (this.reflector) return this.reflector;
    const { api } = this.o;
    this.reflector = new Reflector<V1Service>({
      resource: 'services',
      api,
      list: () => api.call<V1ServiceList>('list', 'services', { method: 'GET', path: '/api/v1/services' }),
      watchPath: '/api/v1/services',
      handler: {
        synced: () => {
          for (const w of this.syncWaiters.splice(0)) w();
        },
      },
      log: this.o.log.child({ component: 'service-watch' }),
      metrics: this.o.metrics,
    });
    this.reflector.start();
    return this.reflector;
  }

  async stop(): Promise<void> {
    await this.reflector?.stop();
  }
}
