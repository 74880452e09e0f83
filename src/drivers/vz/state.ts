// The vz driver's vm.json and how an exit is classified, pure. Same ideas as the QEMU driver's
// (src/drivers/qemu/state.ts): the spec, the helper process (pid + start time, so a reused pid is never
// adopted or signalled), what vmlet asked for, the helper's last `stopped` event, and the exit.
import { z } from 'zod';
import type { VmExit, VmSpec } from '../hypervisor.ts';
import { vmRecordSchema as qemuRecordSchema } from '../qemu/state.ts';
import { describeHelperError, STOP_CAUSES, type HelperError, type StopCause } from './protocol.ts';

export const VZ_STATE_VERSION = 1;

const specSchema = qemuRecordSchema.shape.spec;
const helperErrorSchema = z.object({ name: z.string(), message: z.string(), domain: z.string().optional(), code: z.number().int().optional() });

const processSchema = z.object({
  pid: z.number().int().positive(),
  /** Linux: field 22 of /proc/<pid>/stat; macOS: `ps -o lstart=`. Compared as an opaque string. */
  startTime: z.string(),
  argv: z.array(z.string()),
});

export const vzRecordSchema = z.object({
  version: z.literal(VZ_STATE_VERSION),
  driver: z.literal('vz'),
  spec: specSchema,
  state: z.enum(['created', 'starting', 'running', 'paused', 'stopping', 'exited']),
  /** The MAC the VM's NIC has (derived from the id: config.ts macForId). */
  mac: z.string(),
  sockets: z.object({ control: z.string(), agent: z.string() }),
  consoleLog: z.string(),
  helper: processSchema.optional(),
  intent: z.object({ kind: z.enum(['stop', 'kill']), message: z.string() }).optional(),
  /** The helper's `stopped` event for the current boot, once seen. */
  lastStop: z.object({ cause: z.enum(STOP_CAUSES), error: helperErrorSchema.optional() }).optional(),
  exit: z.object({
    reason: z.enum(['GuestShutdown', 'Stopped', 'Killed', 'Crashed', 'BootFailed', 'Lost']),
    message: z.string(),
    exitCode: z.number().int().nullable().optional(),
    signal: z.string().nullable().optional(),
    at: z.string(),
  }).optional(),
  updatedAt: z.string(),
});

export type VzRecord = z.infer<typeof vzRecordSchema>;
export type VzProcess = z.infer<typeof processSchema>;
export type VzIntent = NonNullable<VzRecord['intent']>;

export class VzStateError extends Error {
  override name = 'VzStateError';
}

export function newVzRecord(spec: VmSpec, mac: string, paths: { control: string; agentSocket: string; consoleLog: string }, now: Date): VzRecord {
  return {
    version: VZ_STATE_VERSION,
    driver: 'vz',
    spec: specSchema.parse(spec),
    state: 'created',
    mac,
    sockets: { control: paths.control, agent: paths.agentSocket },
    consoleLog: paths.consoleLog,
    updatedAt: now.toISOString(),
  };
}

export function serializeVzRecord(record: VzRecord): string {
  return `${JSON.stringify(record, null, 2)}\n`;
}

/** vm.json as a vz record; undefined when it is another driver's; VzStateError when it is broken. */
export function parseVzRecord(text: string, file: string): VzRecord | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new VzStateError(`${file} is not JSON: ${(err as Error).message}`);
  }
  if (typeof raw === 'object' && raw !== null && (raw as { driver?: unknown }).driver !== 'vz') return undefined;
  const parsed = vzRecordSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new VzStateError(`${file} is not a vz VM record: ${issue?.path.join('.') || '(root)'}: ${issue?.message ?? 'invalid'}`);
  }
  return parsed.data;
}

/** What the helper leaves in helper-exit.json as it exits (docs/VZ-HELPER-PROTOCOL.md, "exit file"). */
export const exitFileSchema = z.object({ v: z.number().int(), cause: z.enum(STOP_CAUSES), error: helperErrorSchema.optional(), at: z.string().optional() });

export function parseExitFile(text: string): { cause: StopCause; error?: HelperError } | undefined {
  try {
    const parsed = exitFileSchema.safeParse(JSON.parse(text));
    return parsed.success ? { cause: parsed.data.cause, ...(parsed.data.error ? { error: parsed.data.error } : {}) } : undefined;
  } catch {
    return undefined;
  }
}

export interface VzExitFacts {
  intent?: VzIntent;
  stop?: { cause: StopCause; error?: HelperError };
  /** From the child's 'exit' event: only while vmlet is the helper's parent. */
  child?: { code: number | null; signal: string | null };
  /** The helper exited while start() still waited. */
  duringStart: boolean;
  /** Why start failed, as the helper said. */
  startError?: HelperError;
}

export function classifyVzExit(f: VzExitFacts): Omit<VmExit, 'at'> {
  const codes = { exitCode: f.child?.code ?? null, signal: f.child?.signal ?? null };
  const how = f.child ? (f.child.signal ? `the vz helper was killed by ${f.child.signal}` : `the vz helper exited with code ${f.child.code}`) : 'the vz helper exited';
  if (f.duringStart) {
    const message = f.startError ? describeHelperError(f.startError, 'start').message : f.stop?.error ? describeHelperError(f.stop.error, 'start').message : `${how} while starting`;
    return { reason: 'BootFailed', message, ...codes };
  }
  if (f.intent?.kind === 'kill') return { reason: 'Killed', message: f.intent.message, ...codes };
  if (f.intent?.kind === 'stop' && f.stop && f.stop.cause !== 'error') return { reason: 'Stopped', message: f.intent.message, ...codes };
  if (f.stop) {
    switch (f.stop.cause) {
      case 'guest':
        return { reason: 'GuestShutdown', message: 'the guest powered off', ...codes };
      case 'error':
        return { reason: 'Crashed', message: `the VM stopped with an error: ${f.stop.error ? describeHelperError(f.stop.error, 'Virtualization.framework').message : 'unknown'}`, ...codes };
      default:
        return { reason: 'Crashed', message: `the VM was stopped (${f.stop.cause}) through the helper, not by this vmlet`, ...codes };
    }
  }
  return { reason: 'Crashed', message: `${how} unexpectedly`, ...codes };
}
