// The vz driver's vm.json and how an exit is classified, pure. Same ideas as the QEMU driver's
// (src/drivers/qemu/state.ts), with the same shared parts (../common/record.ts: the spec, the state, the
// intent, the exit): the helper process (pid + start time, so a reused pid is never adopted or signalled),
// what vmlet asked for, the helper's last `stopped` event, and the exit.
import { z } from 'zod';
import type { VmExit, VmSpec } from '../hypervisor.ts';
import { exitSchema, intentSchema, parseJsonRecord, processSchema, serializeJsonRecord, specSchema, StateError, vmStateSchema } from '../common/record.ts';
import { describeHelperError, STOP_CAUSES, type HelperError, type StopCause } from './protocol.ts';

export const VZ_STATE_VERSION = 1;

const helperErrorSchema = z.object({ name: z.string(), message: z.string(), domain: z.string().optional(), code: z.number().int().optional() });

export const vzRecordSchema = z.object({
  version: z.literal(VZ_STATE_VERSION),
  driver: z.literal('vz'),
  spec: specSchema,
  state: vmStateSchema,
  /** The MAC the VM's NIC has (derived from the id: config.ts macForId). */
  mac: z.string(),
  sockets: z.object({ control: z.string(), agent: z.string() }),
  consoleLog: z.string(),
  /** The helper (../common/record.ts): startTime is field 22 of /proc/<pid>/stat on Linux, `ps -o lstart=` on macOS. */
  helper: processSchema.optional(),
  intent: intentSchema.optional(),
  /** The helper's `stopped` event for the current boot, once seen. */
  lastStop: z.object({ cause: z.enum(STOP_CAUSES), error: helperErrorSchema.optional() }).optional(),
  exit: exitSchema.optional(),
  updatedAt: z.string(),
});

export type VzRecord = z.infer<typeof vzRecordSchema>;
export type VzProcess = z.infer<typeof processSchema>;
export type VzIntent = NonNullable<VzRecord['intent']>;

export class VzStateError extends StateError {
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
  return serializeJsonRecord(record);
}

/** vm.json as a vz record; undefined when it is another driver's; VzStateError when it is broken. */
export function parseVzRecord(text: string, file: string): VzRecord | undefined {
  return parseJsonRecord(text, file, {
    schema: vzRecordSchema,
    kind: 'vz',
    makeError: (m) => new VzStateError(m),
    accept: (raw) => !(typeof raw === 'object' && raw !== null && (raw as { driver?: unknown }).driver !== 'vz'),
  });
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
