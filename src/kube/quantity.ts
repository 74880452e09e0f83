// Kubernetes resource quantities ("500m", "2", "4Gi", "1.5G") parsed to numbers and formatted back.
// Pure functions: used by configuration, node capacity and (later) pod sizing.

const BINARY: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL: Record<string, number> = { n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };
const QUANTITY = /^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$/;

/** Parses a Kubernetes quantity into its numeric value (bytes, cores, ...). Throws on malformed input. */
export function parseQuantity(text: string): number {
  const match = QUANTITY.exec(text.trim());
  if (!match) throw new Error(`"${text}" is not a Kubernetes quantity (examples: 500m, 2, 512Mi, 4Gi)`);
  const [, num, exponent, suffix] = match;
  const value = Number(num);
  if (exponent) return value * 10 ** Number(exponent.slice(1));
  const s = suffix ?? '';
  return value * (BINARY[s] ?? DECIMAL[s] ?? 1);
}

/** Whole CPUs needed for a CPU quantity: millicores round up, as a VM can only have whole vCPUs. */
export function wholeCpus(text: string): number {
  return Math.ceil(parseQuantity(text) - 1e-9);
}

/** Formats a byte count the way the kubelet reports memory: exact, in the largest binary unit that divides it. */
export function formatBytes(bytes: number): string {
  const n = Math.max(0, Math.floor(bytes));
  for (const unit of ['Ei', 'Pi', 'Ti', 'Gi', 'Mi', 'Ki'] as const) {
    const size = BINARY[unit]!;
    if (n >= size && n % size === 0) return `${n / size}${unit}`;
  }
  if (n % 1024 === 0 && n > 0) return `${n / 1024}Ki`;
  return String(n);
}

/** Formats a CPU count in cores or millicores. */
export function formatCpu(cores: number): string {
  const milli = Math.round(cores * 1000);
  return milli % 1000 === 0 ? String(milli / 1000) : `${milli}m`;
}
