// What both drivers' vm.json records share, pure: the spec's schema, the VM state, what vmlet asked for
// (intent), the recorded exit and its conversion, and parsing a record with its schema. Each driver's
// record (qemu/state.ts, vz/state.ts) adds its own process fields and what its VM said about the stop.
import { z } from 'zod';
import type { VmExit } from '../hypervisor.ts';

const forwardSchema = z.object({
  protocol: z.enum(['tcp', 'udp']),
  hostAddress: z.string().optional(),
  hostPort: z.number().int(),
  guestPort: z.number().int(),
});

export const specSchema = z.object({
  id: z.string().min(1),
  name: z.string(),
  os: z.enum(['linux', 'darwin']),
  arch: z.enum(['x86_64', 'aarch64']),
  cpus: z.number().int().positive(),
  memoryMiB: z.number().int().positive(),
  macAddress: z.string().optional(),
  disk: z.object({ path: z.string(), format: z.enum(['raw', 'qcow2']) }),
  boot: z.discriminatedUnion('kind', [
    z.object({ kind: z.literal('kernel'), kernel: z.string(), initrd: z.string().optional(), cmdline: z.string() }),
    z.object({ kind: z.literal('efi'), nvram: z.string().optional() }),
    z.object({ kind: z.literal('macos'), nvram: z.string(), hardwareModel: z.string(), ecid: z.string() }),
  ]),
  network: z.discriminatedUnion('mode', [
    z.object({ mode: z.literal('none') }),
    z.object({ mode: z.literal('user'), forwards: z.array(forwardSchema) }),
    z.object({ mode: z.literal('bridge'), bridge: z.string(), tap: z.string().optional() }),
  ]),
  shares: z.array(z.object({ tag: z.string(), hostPath: z.string(), readOnly: z.boolean() })),
});

/**
 * Who a process is: a pid alone can be reused, pid + start time cannot. The start time is compared as an
 * opaque string (each driver says where it comes from).
 */
export const processSchema = z.object({
  pid: z.number().int().positive(),
  startTime: z.string(),
  argv: z.array(z.string()),
});

export const vmStateSchema = z.enum(['created', 'starting', 'running', 'paused', 'stopping', 'exited']);

/** What vmlet asked for, so an exit seen after a vmlet restart is still classified as ours. */
export const intentSchema = z.object({ kind: z.enum(['stop', 'kill']), message: z.string() });

export const exitSchema = z.object({
  reason: z.enum(['GuestShutdown', 'Stopped', 'Killed', 'Crashed', 'BootFailed', 'Lost']),
  message: z.string(),
  exitCode: z.number().int().nullable().optional(),
  signal: z.string().nullable().optional(),
  at: z.string(),
});

/** A record (or a /proc reading) that is not what it should be. */
export class StateError extends Error {
  override name = 'StateError';
}

export type Intent = z.infer<typeof intentSchema>;
export type ExitRecord = z.infer<typeof exitSchema>;

export function exitFromRecord(exit: ExitRecord): VmExit {
  return { ...exit, at: new Date(exit.at) };
}

export function exitToRecord(exit: VmExit): ExitRecord {
  return { ...exit, at: exit.at.toISOString() };
}

export function serializeJsonRecord(record: object): string {
  return `${JSON.stringify(record, null, 2)}\n`;
}

/**
 * Parses vm.json text with schema; throws makeError(sentence) naming the first thing wrong. `accept`
 * looks at the JSON before the schema does: false means "not this driver's", and undefined is returned.
 */
export function parseJsonRecord<T>(
  text: string,
  file: string,
  opts: { schema: z.ZodType<T>; kind: string; makeError: (message: string) => Error; accept?: (raw: unknown) => boolean },
): T | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw opts.makeError(`${file} is not JSON: ${(err as Error).message}`);
  }
  if (opts.accept && !opts.accept(raw)) return undefined;
  const parsed = opts.schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw opts.makeError(`${file} is not a ${opts.kind} VM record: ${issue?.path.join('.') || '(root)'}: ${issue?.message ?? 'invalid'}`);
  }
  return parsed.data;
}
