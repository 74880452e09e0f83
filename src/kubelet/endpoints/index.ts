// The kubelet API's own endpoints, registered on a KubeletServer: health and configuration, pod lists,
// the Summary API and the Prometheus endpoints. Streaming endpoints (exec, attach, port-forward, logs)
// are registered by endpoints/streaming.ts.
import type { Registry } from 'prom-client';
import type { Logger } from '../../observability/log.ts';
import type { KubeletServer, RouteContext } from '../server.ts';
import { sendJson, sendText } from '../server.ts';
import { installHealth, type KubeletConfigView } from './health.ts';
import { PROMETHEUS_TEXT, resourceMetricsText } from './metrics.ts';
import { installPods } from './pods.ts';
import { buildSummary, CpuRates, type HostReadings, type PodReading, type Summary } from './stats.ts';

export interface EndpointDeps {
  nodeName: string;
  config: () => KubeletConfigView;
  readHost: () => Promise<HostReadings>;
  /** vmlet's own metrics, served on /metrics. */
  registry: Registry;
  log: Logger;
}

export function installEndpoints(server: KubeletServer, deps: EndpointDeps): void {
  installHealth(server, deps.config);
  installPods(server);
  const rates = new CpuRates();

  const summarize = async (ctx: RouteContext, onlyCpuAndMemory: boolean): Promise<{ summary: Summary; failed: string[] }> => {
    const host = await deps.readHost();
    const failed: string[] = [];
    let pods: PodReading[] = [];
    // Without the runtime (not started yet, or no hypervisor) the node's numbers are still worth serving.
    if (ctx.providerReady) {
      pods = await Promise.all(
        ctx.provider.runningPods().map(async (pod): Promise<PodReading> => {
          try {
            const usage = await ctx.provider.usage(pod);
            return usage ? { pod, usage } : { pod };
          } catch (err) {
            failed.push(`${pod.metadata?.namespace}/${pod.metadata?.name}`);
            deps.log.warn({ err, pod: pod.metadata?.name, namespace: pod.metadata?.namespace }, 'cannot read the usage of a pod');
            return { pod };
          }
        }),
      );
    }
    return { summary: buildSummary({ nodeName: deps.nodeName, host, pods, rates, onlyCpuAndMemory }), failed };
  };

  server.route({
    method: ['GET', 'POST'],
    path: '/stats/summary',
    handle: async (ctx, res) => {
      const only = ctx.url.searchParams.getAll('only_cpu_and_memory');
      const { summary } = await summarize(ctx, only.length === 1 && only[0] === 'true');
      sendJson(res, 200, summary);
    },
  });

  server.route({
    method: 'GET',
    path: '/metrics/resource',
    handle: async (ctx, res) => {
      let text: string;
      try {
        const { summary, failed } = await summarize(ctx, true);
        text = resourceMetricsText(summary, failed.length > 0);
      } catch (err) {
        deps.log.error({ err }, 'cannot collect resource metrics');
        text = resourceMetricsText(undefined, true);
      }
      sendText(res, 200, text, PROMETHEUS_TEXT);
    },
  });

  server.route({
    method: 'GET',
    path: '/metrics',
    handle: async (_ctx, res) => sendText(res, 200, await deps.registry.metrics(), deps.registry.contentType),
  });
}
