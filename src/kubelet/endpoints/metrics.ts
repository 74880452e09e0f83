// /metrics/resource: the kubelet's resource metrics (pkg/kubelet/metrics/collectors/resource_metrics.go),
// the endpoint metrics-server scrapes, in Prometheus text exposition format 0.0.4 with the kubelet's
// names, help texts, labels and sample timestamps. Written directly from a CPU-and-memory Summary: the
// values are snapshots taken elsewhere, not something a prom-client metric would hold.
import type { Summary } from './stats.ts';

export const PROMETHEUS_TEXT = 'text/plain; version=0.0.4; charset=utf-8';

type Kind = 'counter' | 'gauge';

interface Family {
  name: string;
  help: string;
  kind: Kind;
  samples: Array<{ labels: Record<string, string>; value: number; timestampMs?: number }>;
}

const FAMILIES: Record<string, { help: string; kind: Kind }> = {
  container_cpu_usage_seconds_total: { help: '[STABLE] Cumulative cpu time consumed by the container in core-seconds', kind: 'counter' },
  container_memory_working_set_bytes: { help: '[STABLE] Current working set of the container in bytes', kind: 'gauge' },
  container_start_time_seconds: { help: '[STABLE] Start time of the container since unix epoch in seconds', kind: 'gauge' },
  node_cpu_usage_seconds_total: { help: '[STABLE] Cumulative cpu time consumed by the node in core-seconds', kind: 'counter' },
  node_memory_working_set_bytes: { help: '[STABLE] Current working set of the node in bytes', kind: 'gauge' },
  pod_cpu_usage_seconds_total: { help: '[STABLE] Cumulative cpu time consumed by the pod in core-seconds', kind: 'counter' },
  pod_memory_working_set_bytes: { help: '[STABLE] Current working set of the pod in bytes', kind: 'gauge' },
  resource_scrape_error: { help: '[STABLE] 1 if there was an error while getting container metrics, 0 otherwise', kind: 'gauge' },
};

/** The resource metrics of a summary; `scrapeError` sets resource_scrape_error to 1. */
export function resourceMetricsText(summary: Summary | undefined, scrapeError: boolean): string {
  const families = new Map<string, Family>();
  const add = (name: string, labels: Record<string, string>, value: number | undefined, time?: string) => {
    if (value === undefined || !Number.isFinite(value)) return;
    const def = FAMILIES[name]!;
    let family = families.get(name);
    if (!family) families.set(name, (family = { name, help: def.help, kind: def.kind, samples: [] }));
    const ts = time ? Date.parse(time) : NaN;
    family.samples.push({ labels, value, ...(Number.isNaN(ts) ? {} : { timestampMs: ts }) });
  };
  if (summary) {
    const { node } = summary;
    if (node.cpu?.usageCoreNanoSeconds !== undefined) add('node_cpu_usage_seconds_total', {}, node.cpu.usageCoreNanoSeconds / 1e9, node.cpu.time);
    add('node_memory_working_set_bytes', {}, node.memory?.workingSetBytes, node.memory?.time);
    for (const pod of summary.pods) {
      const { name: podName, namespace } = pod.podRef;
      for (const c of pod.containers) {
        const labels = { container: c.name, namespace, pod: podName };
        const start = Date.parse(c.startTime);
        if (start > 0) add('container_start_time_seconds', labels, start / 1000);
        if (c.cpu?.usageCoreNanoSeconds !== undefined) add('container_cpu_usage_seconds_total', labels, c.cpu.usageCoreNanoSeconds / 1e9, c.cpu.time);
        add('container_memory_working_set_bytes', labels, c.memory?.workingSetBytes, c.memory?.time);
      }
      const labels = { namespace, pod: podName };
      if (pod.cpu?.usageCoreNanoSeconds !== undefined) add('pod_cpu_usage_seconds_total', labels, pod.cpu.usageCoreNanoSeconds / 1e9, pod.cpu.time);
      add('pod_memory_working_set_bytes', labels, pod.memory?.workingSetBytes, pod.memory?.time);
    }
  }
  add('resource_scrape_error', {}, scrapeError ? 1 : 0);
  return exposition([...families.values()]);
}

/** Prometheus text: families by name, samples by their labels, as client_golang's Gather orders them. */
export function exposition(families: readonly Family[]): string {
  const lines: string[] = [];
  for (const f of [...families].sort((a, b) => a.name.localeCompare(b.name))) {
    lines.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.kind}`);
    const rows = f.samples.map((s) => ({ labels: labelText(s.labels), s }));
    rows.sort((a, b) => (a.labels < b.labels ? -1 : a.labels > b.labels ? 1 : 0));
    for (const { labels, s } of rows) {
      lines.push(`${f.name}${labels} ${formatValue(s.value)}${s.timestampMs !== undefined ? ` ${s.timestampMs}` : ''}`);
    }
  }
  return lines.length > 0 ? `${lines.join('\n')}\n` : '';
}

function labelText(labels: Record<string, string>): string {
  const names = Object.keys(labels).sort();
  if (names.length === 0) return '';
  return `{${names.map((n) => `${n}="${escapeLabel(labels[n]!)}"`).join(',')}}`;
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}
