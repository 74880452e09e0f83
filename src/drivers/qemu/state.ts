// The pure parts of a QEMU VM's bookkeeping: vm.json (what the driver persists, and its schema), the
// process identity that keeps a reused pid from ever being adopted, and how an exit is classified. The
// file I/O is in persist.ts, the /proc reads in process.ts.
import { z } from 'zod';
import type { VmExit, VmSpec } from '../hypervisor.ts';
import type { ShutdownInfo } from './qmp-protocol.ts';

export const STATE_VERSION = 1;

const forwardSchema = z.object({
  protocol: z.enum(['tcp', 'udp']),
  hostAddress: z.string().optional(),
  hostPort: z.number().int(),
  guestPort: z.number().int(),
});

const specSchema = z.object({
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

/** Who a process is: a pid alone can be reused, pid + start time (+ boot) cannot. */
const processSchema = z.object({
  pid: z.number().int().positive(),
  /** Field 22 of /proc/<pid>/stat: clock ticks after boot; a string, it can exceed 2^53 in theory. */
  startTime: z.string(),
  /** /proc/sys/kernel/random/boot_id when it started: start times restart from zero at each boot. */
  bootId: z.string(),
  argv: z.array(z.string()),
});

const exitSchema = z.object({
  reason: z.enum(['GuestShutdown', 'Stopped', 'Killed', 'Crashed', 'BootFailed', 'Lost']),
  message: z.string(),
  exitCode: z.number().int().nullable().optional(),
  signal: z.string().nullable().optional(),
  at: z.string(),
});

export const vmRecordSchema = z.object({
  version: z.literal(STATE_VERSION),
  driver: z.literal('qemu'),
  spec: specSchema,
  state: z.enum(['created', 'starting', 'running', 'paused', 'stopping', 'exited']),
  /** Paths QEMU was told about (also derivable from the dir; recorded so a reader needs no code). */
  sockets: z.object({ qmp: z.string(), agent: z.string() }),
  consoleLog: z.string(),
  qemu: processSchema.optional(),
  virtiofsd: z.array(processSchema.extend({ tag: z.string(), socket: z.string() })),
  /** What vmlet asked for, so an exit seen after a vmlet restart is still classified as ours. */
  intent: z.object({ kind: z.enum(['stop', 'kill']), message: z.string() }).optional(),
  /** The last SHUTDOWN event QMP reported for the current boot. */
  lastShutdown: z.object({ guest: z.boolean(), reason: z.string() }).optional(),
  exit: exitSchema.optional(),
  updatedAt: z.string(),
});

export type VmRecord = z.infer<typeof vmRecordSchema>;
export type ProcessRecord = z.infer<typeof processSchema>;
export type Intent = NonNullable<VmRecord['intent']>;

export class StateError extends Error {
  override name = 'StateError';
}

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
  return `${JSON.stringify(record, null, 2)}\n`;
}

/** Parses vm.json; throws StateError naming the first thing wrong. */
export function parseRecord(text: string, file: string): VmRecord {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new StateError(`${file} is not JSON: ${(err as Error).message}`);
  }
  const parsed = vmRecordSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new StateError(`${file} is not a QEMU VM record: ${issue?.path.join('.') || '(root)'}: ${issue?.message ?? 'invalid'}`);
  }
  return parsed.data;
}

export function exitFromRecord(exit: NonNullable<VmRecord['exit']>): VmExit {
  return { ...exit, at: new Date(exit.at) };
}

export function exitToRecord(exit: VmExit): NonNullable<VmRecord['exit']> {
  return { ...exit, at: exit.at.toISOString() };
}

/** The fields of /proc/<pid>/stat the driver uses. */
export interface ProcStat {
  pid: number;
  comm: string;
  /** R, S, D, Z (zombie: exited, not yet reaped), X... */
  state: string;
  ppid: number;
  /** Clock ticks. */
  utime: number;
  stime: number;
  startTime: string;
}

/** Parses /proc/<pid>/stat. comm may hold spaces and parentheses, so fields are counted after the last ')'. */
export function parseProcStat(text: string): ProcStat {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw new StateError(`not a /proc/<pid>/stat line: ${text.slice(0, 80)}`);
  const rest = text.slice(close + 2).trim().split(/\s+/);
  // rest[0] is field 3 (state); field n is rest[n - 3].
  const field = (n: number): string => {
    const v = rest[n - 3];
    if (v === undefined) throw new StateError(`/proc/<pid>/stat has no field ${n}: ${text.slice(0, 80)}`);
    return v;
  };
  return {
    pid: Number(text.slice(0, open).trim()),
    comm: text.slice(open + 1, close),
    state: field(3),
    ppid: Number(field(4)),
    utime: Number(field(14)),
    stime: Number(field(15)),
    startTime: field(22),
  };
}

/** /proc/<pid>/cmdline as argv. */
export function parseCmdline(raw: Buffer | string): string[] {
  const text = typeof raw === 'string' ? raw : raw.toString('utf8');
  const parts = text.split('\0');
  if (parts.at(-1) === '') parts.pop();
  return parts;
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

