// Structured JSON logs (pino). One root logger per process; parts take a child with their own `component`.
import { pino, type Logger } from 'pino';

export type { Logger };

/** Creates the process's logger writing JSON lines to stdout (or to `dest`, a file descriptor or path). */
export function createLogger(level: string, bindings: Record<string, unknown> = {}, dest: number | string = 1): Logger {
  return pino(
    { level, base: { ...bindings }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } },
    // Synchronous writes: a node agent logs little, and what it logs just before a crash must not be lost.
    pino.destination({ dest, sync: true }),
  );
}
