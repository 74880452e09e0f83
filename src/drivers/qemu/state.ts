// The pure parts of a QEMU VM's bookkeeping: vm.json (what the driver persists, and its schema), the
// process identity that keeps a reused pid from ever being adopted, and how an exit is classified. The
// file I/O is in persist.ts, the /proc reads in process.ts; what both drivers' records share is
// ../common/record.ts, the /proc parsing ../common/proc.ts.
import { z } from 'zod';
import type { VmExit, VmSpec } from '../hypervisor.ts';
import { exitSchema, intentSchema, parseJsonRecord, processSchema as commonProcessSchema, serializeJsonRecord, specSchema, StateError, vmStateSchema, type Intent } from '../common/record.ts';
import type { ProcStat } from '../common/proc.ts';
import type { ShutdownInfo } from './qmp-protocol.ts';

export const STATE_VERSION = 1;

/**
 * Who a process is (../common/record.ts), with the boot it started in: startTime is field 22 of
 * /proc/<pid>/stat (clock ticks after boot; a string, it can exceed 2^53 in theory), and those restart
 * from zero at each boot.
 */
const processSchema = commonProcessSchema.extend({
  /** /proc/sys/kernel/random/boot_id when it started. */
  bootId: z.string(),
});

export const vmRecordSchema = z.object({
  version: z.literal(STATE_VERSION),
  driver: z.literal('qemu'),
  spec: specSchema,
  state: vmStateSchema,
  /** Paths QEMU was told about (also derivable from the dir; recorded so a reader needs no code). */
  sockets: z.object({ qmp: z.string(), agent: z.string() }),
  consoleLog: z.string(),
  qemu: processSchema.optional(),
  virtiofsd: z.array(processSchema.extend({ tag: z.string(), socket: z.string() })),
  /** What vmlet asked for, so an exit seen after a vmlet restart is still classified as ours. */
  intent: intentSchema.optional(),
  /** The last SHUTDOWN event QMP reported for the current boot. */
  lastShutdown: z.object({ guest: z.boolean(), reason: z.string() }).optional(),
  exit: exitSchema.optional(),
  updatedAt: z.string(),
});

export type VmRecord = z.infer<typeof vmRecordSchema>;
export type ProcessRecord = z.infer<typeof processSchema>;

export function newRecord(spec: VmSpec, paths: { qmpSocket: string; agentSocket: string; consoleLog: string }, now: Date): VmRecord {
  return {
    version: STATE_VERSION,
    driver: 'qemu',
    spec: specSchema.parse(spec),
    state: 'created',
    sockets: { qmp: paths.qmpSocket, agent: paths.agentSocket },
    consoleLog: paths.consoleLog,
    virtiofsd: [],
    updatedAt: now.toISOString(),
  };
}

export function serializeRecord(record: VmRecord): string {
  return serializeJsonRecord(record);
}

/** Parses vm.json; throws StateError naming the first thing wrong. */
export function parseRecord(text: string, file: string): VmRecord {
  return parseJsonRecord(text, file, { schema: vmRecordSchema, kind: 'QEMU', makeError: (m) => new StateError(m) })!;
}

/** What /proc says about a pid right now (undefined: no such process). */
export interface ObservedProcess {
  stat: ProcStat;
  argv: string[];
  bootId: string;
}

export type Identity = { alive: true } | { alive: false; why: string };

/**
 * Is the recorded process still running? A different start time, boot or command line means the pid
 * now belongs to someone else: the recorded process is gone, and the other one must never be touched.
 * A zombie has exited (its parent has not reaped it yet).
 */
export function checkIdentity(recorded: ProcessRecord, observed: ObservedProcess | undefined): Identity {
  if (!observed) return { alive: false, why: `process ${recorded.pid} is gone` };
  if (observed.bootId !== recorded.bootId) return { alive: false, why: `the host rebooted since process ${recorded.pid} started` };
  if (observed.stat.startTime !== recorded.startTime) {
    return { alive: false, why: `pid ${recorded.pid} now belongs to another process (started at tick ${observed.stat.startTime}, not ${recorded.startTime})` };
  }
  if (observed.argv.length > 0 && !sameArgv(observed.argv, recorded.argv)) {
    return { alive: false, why: `pid ${recorded.pid} now runs another command (${observed.argv[0] ?? '?'})` };
  }
  if (observed.stat.state === 'Z' || observed.stat.state === 'X') return { alive: false, why: `process ${recorded.pid} has exited` };
  return { alive: true };
}

function sameArgv(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** What is known when QEMU has exited. */
export interface ExitFacts {
  intent?: Intent;
  shutdown?: ShutdownInfo;
  /** From the child's 'exit' event: only while vmlet is QEMU's parent. */
  child?: { code: number | null; signal: string | null };
  /** QEMU exited while start() was still waiting for it to come up. */
  duringStart: boolean;
  /** QEMU's last error line from its log ("qemu-system-x86_64: ..."), if any. */
  qemuError?: string;
}

/** Turns what is known about an exit into the runtime's reason and sentence. */
export function classifyExit(f: ExitFacts): Omit<VmExit, 'at'> {
  const codes = { exitCode: f.child?.code ?? null, signal: f.child?.signal ?? null };
  const how = f.child
    ? f.child.signal ? `QEMU was killed by ${f.child.signal}` : `QEMU exited with code ${f.child.code}`
    : 'QEMU exited';
  if (f.duringStart) {
    return { reason: 'BootFailed', message: f.qemuError ?? `${how} while starting`, ...codes };
  }
  if (f.intent?.kind === 'kill') return { reason: 'Killed', message: f.intent.message, ...codes };
  const clean = f.shutdown !== undefined || (f.child !== undefined && f.child.code === 0 && f.child.signal === null);
  if (f.intent?.kind === 'stop' && clean) return { reason: 'Stopped', message: f.intent.message, ...codes };
  if (f.shutdown?.guest) {
    switch (f.shutdown.reason) {
      case 'guest-shutdown':
        return { reason: 'GuestShutdown', message: 'the guest powered off', ...codes };
      case 'guest-reset':
        return { reason: 'GuestShutdown', message: 'the guest rebooted (a reboot ends the VM: QEMU runs with -no-reboot)', ...codes };
      case 'guest-panic':
        return { reason: 'Crashed', message: 'the guest kernel panicked', ...codes };
      default:
        return { reason: 'GuestShutdown', message: `the guest shut down (${f.shutdown.reason})`, ...codes };
    }
  }
  if (f.shutdown) {
    // A host-side shutdown vmlet did not ask for: a signal or a QMP quit from someone else.
    const who = f.shutdown.reason === 'host-signal' ? 'a signal from outside vmlet' : `${f.shutdown.reason}, not requested by vmlet`;
    return { reason: 'Crashed', message: `QEMU shut down on ${who}`, ...codes };
  }
  if (!f.child) return { reason: 'Crashed', message: 'QEMU exited unexpectedly (killed?)', ...codes };
  return { reason: 'Crashed', message: f.qemuError ? `${how}: ${f.qemuError}` : how, ...codes };
}

/**
 * QEMU's own last error line in its log, without a trailing CR: "qemu-system-x86_64: -drive ...: ..." for
 * option errors, "qemu: could not load kernel ..." for some machine-init errors.
 */
export function qemuErrorLine(log: string): string | undefined {
  const lines = log.split('\n').map((l) => l.trimEnd()).filter((l) => /^qemu(-system-[\w-]+)?: /.test(l) && !/: warning: /.test(l));
  return lines.at(-1);
}

