// The vz helper protocol (docs/VZ-HELPER-PROTOCOL.md), pure: JSON lines, one message per line, versioned.
// vmlet sends requests ({v, id, op, ...}); the helper answers each with a response ({v, id, ok, result |
// error}) and pushes events ({v, event, ...}) to every session. The same messages flow on the helper's
// stdin/stdout and on each connection to its control socket in the VM dir.
//
// This file holds the message types, the encoder, a decoder that copes with split and merged reads, and
// the mapping of Virtualization.framework's VZErrorDomain codes to the stable names the helper reports.
import { z } from 'zod';

export const PROTOCOL_VERSION = 1;
/** Longest line either side accepts: a start config with many shares stays far below. */
export const MAX_LINE_BYTES = 1024 * 1024;

// ---- the start config (what the helper turns into a VZVirtualMachineConfiguration) ----

const shareSchema = z.object({ name: z.string().min(1), hostPath: z.string().min(1), readOnly: z.boolean() });

export const startConfigSchema = z.object({
  cpus: z.number().int().positive(),
  memoryBytes: z.number().int().positive(),
  boot: z.discriminatedUnion('kind', [
    /** hardwareModel and machineIdentifier: base64 of their dataRepresentation (Tart's config.json fields). */
    z.object({ kind: z.literal('macos'), hardwareModel: z.string().min(1), machineIdentifier: z.string().min(1), auxiliaryStorage: z.string().min(1) }),
    /** UEFI with a variable store; created first when `create` and the file is missing. */
    z.object({ kind: z.literal('efi'), variableStore: z.string().min(1), create: z.boolean() }),
    z.object({ kind: z.literal('linux'), kernel: z.string().min(1), initrd: z.string().optional(), cmdline: z.string() }),
  ]),
  disks: z.array(z.object({ path: z.string().min(1), readOnly: z.boolean() })),
  network: z.discriminatedUnion('mode', [
    z.object({ mode: z.literal('none') }),
    z.object({ mode: z.literal('nat'), mac: z.string() }),
    z.object({ mode: z.literal('bridged'), interface: z.string().min(1), mac: z.string() }),
  ]),
  /**
   * virtiofs devices. `multiple` shares several directories under one tag (the macOS automount tag for
   * macOS guests: they appear under /Volumes/My Shared Files/<name>); `single` is one directory per tag.
   */
  fileSystems: z.array(z.discriminatedUnion('kind', [
    z.object({ kind: z.literal('single'), tag: z.string().min(1), share: shareSchema }),
    z.object({ kind: z.literal('multiple'), tag: z.string().min(1), shares: z.array(shareSchema) }),
  ])),
  /** Guest vsock ports exposed as host unix sockets: each connection to `socket` is proxied to `port`. */
  vsock: z.array(z.object({ port: z.number().int().min(0).max(0xffffffff), socket: z.string().min(1) })),
  /** The guest's serial console (virtio console) appended to this file. */
  console: z.string().optional(),
  graphics: z.boolean(),
});
export type StartConfig = z.infer<typeof startConfigSchema>;

// ---- requests ----

export type Request =
  | { op: 'start'; config: StartConfig; restoreFrom?: string }
  | { op: 'stop' } // requestStop(): ask the guest (the power button)
  | { op: 'forceStop' } // stop(completionHandler:): destructive
  | { op: 'pause' }
  | { op: 'resume' }
  | { op: 'save'; path: string } // macOS 14+: the VM must be paused, and stays paused
  | { op: 'status' };
export type Op = Request['op'];

export function encodeRequest(id: number, req: Request): string {
  return `${JSON.stringify({ v: PROTOCOL_VERSION, id, ...req })}\n`;
}

// ---- what the helper sends ----

/** The helper's view of VZVirtualMachine.State, plus `idle` before any start. */
export const HELPER_STATES = ['idle', 'starting', 'running', 'pausing', 'paused', 'resuming', 'stopping', 'saving', 'restoring', 'stopped', 'error'] as const;
export type HelperState = (typeof HELPER_STATES)[number];

const errorSchema = z.object({
  /** Stable name: a VZErrorDomain code's name (vzErrorName) or a helper error (BadRequest, ...). */
  name: z.string(),
  message: z.string(),
  domain: z.string().optional(),
  code: z.number().int().optional(),
});
export type HelperError = z.infer<typeof errorSchema>;

/** How a VM stopped: the guest powered off, stopped with an error, or was stopped on a request. */
export const STOP_CAUSES = ['guest', 'error', 'requested', 'forced'] as const;
export type StopCause = (typeof STOP_CAUSES)[number];

const helloSchema = z.object({
  v: z.number().int(),
  type: z.literal('hello'),
  helper: z.string(),
  version: z.string(),
  pid: z.number().int().positive(),
  state: z.enum(HELPER_STATES),
});
const responseSchema = z.object({
  v: z.number().int(),
  id: z.number().int(),
  ok: z.boolean(),
  result: z.record(z.string(), z.unknown()).optional(),
  error: errorSchema.optional(),
});
const eventSchema = z.discriminatedUnion('event', [
  z.object({ v: z.number().int(), event: z.literal('state'), state: z.enum(HELPER_STATES) }),
  z.object({ v: z.number().int(), event: z.literal('stopped'), cause: z.enum(STOP_CAUSES), error: errorSchema.optional() }),
  z.object({ v: z.number().int(), event: z.literal('network-disconnected'), error: errorSchema }),
  z.object({ v: z.number().int(), event: z.literal('vsock-error'), port: z.number().int(), error: errorSchema }),
]);

export type Hello = z.infer<typeof helloSchema>;
export type Response = z.infer<typeof responseSchema>;
export type HelperEvent = z.infer<typeof eventSchema>;
export type HelperMessage = { kind: 'hello'; hello: Hello } | { kind: 'response'; response: Response } | { kind: 'event'; event: HelperEvent };

export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

/** One line from the helper as a message; throws ProtocolError for anything else (or another version). */
export function parseHelperLine(line: string): HelperMessage {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    throw new ProtocolError(`not JSON: ${line.slice(0, 120)}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ProtocolError(`not an object: ${line.slice(0, 120)}`);
  const obj = raw as Record<string, unknown>;
  if (obj.v !== PROTOCOL_VERSION) throw new ProtocolError(`protocol version ${String(obj.v)}; this vmlet speaks ${PROTOCOL_VERSION}`);
  const pick = <T>(schema: z.ZodType<T>, what: string): T => {
    const parsed = schema.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new ProtocolError(`bad ${what}: ${issue?.path.join('.') || '(root)'}: ${issue?.message ?? 'invalid'}`);
    }
    return parsed.data;
  };
  if (obj.type === 'hello') return { kind: 'hello', hello: pick(helloSchema, 'hello') };
  if ('id' in obj) return { kind: 'response', response: pick(responseSchema, 'response') };
  if ('event' in obj) return { kind: 'event', event: pick(eventSchema, 'event') };
  throw new ProtocolError(`neither a hello, a response nor an event: ${line.slice(0, 120)}`);
}

/**
 * Splits a byte stream into lines: chunks may end mid-line or hold several lines, and a multi-byte UTF-8
 * character may be split across chunks (bytes are buffered, decoded per line). Empty lines are skipped.
 */
export class LineDecoder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(private readonly maxLineBytes = MAX_LINE_BYTES) {}

  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    let start = 0;
    for (let nl = chunk.indexOf(0x0a, start); nl >= 0; nl = chunk.indexOf(0x0a, start)) {
      this.pending.push(chunk.subarray(start, nl));
      const line = Buffer.concat(this.pending).toString('utf8').replace(/\r$/, '');
      this.pending = [];
      this.pendingBytes = 0;
      if (line.trim() !== '') lines.push(line);
      start = nl + 1;
    }
    if (start < chunk.length) {
      this.pending.push(chunk.subarray(start));
      this.pendingBytes += chunk.length - start;
      if (this.pendingBytes > this.maxLineBytes) {
        this.pending = [];
        this.pendingBytes = 0;
        throw new ProtocolError(`a line longer than ${this.maxLineBytes} bytes`);
      }
    }
    return lines;
  }
}

// ---- errors ----

/**
 * VZErrorDomain codes (VZError.Code, Apple: https://developer.apple.com/documentation/virtualization/vzerror/code)
 * and the stable names the helper reports for them. The numbers are the SDK's VZErrorCode values.
 */
export const VZ_ERROR_NAMES: Readonly<Record<number, string>> = {
  1: 'InternalError',
  2: 'InvalidVirtualMachineConfiguration',
  3: 'InvalidVirtualMachineState',
  4: 'InvalidVirtualMachineStateTransition',
  5: 'InvalidDiskImage',
  6: 'VirtualMachineLimitExceeded', // macOS 12+: the host's limit on running VMs (two macOS guests)
  7: 'NetworkError',
  8: 'OutOfDiskSpace',
  9: 'OperationCancelled',
  10: 'NotSupported',
  11: 'SaveFailed',
  12: 'RestoreFailed',
};

export const VZ_ERROR_DOMAIN = 'VZErrorDomain';

/** The stable name for an NSError's domain and code (the helper applies the same table). */
export function vzErrorName(domain: string, code: number): string {
  if (domain === VZ_ERROR_DOMAIN) return VZ_ERROR_NAMES[code] ?? `VZError${code}`;
  return 'HostError';
}

/**
 * A helper error as a VmError reason and sentence for a pod status. The two-VM limit gets words a user
 * can act on: macOS lets at most two macOS VMs run at once, whoever started them.
 */
export function describeHelperError(err: HelperError, doing: string): { reason: string; message: string } {
  switch (err.name) {
    case 'VirtualMachineLimitExceeded':
      return {
        reason: 'VirtualMachineLimitExceeded',
        message: `${doing}: macOS refused to run another VM (VZErrorDomain code 6): at most two macOS VMs may run on one Mac at a time, counting those of other tools (Tart, Anka, UTM, Parallels); stop one, or lower this node's VM slots`,
      };
    case 'OutOfDiskSpace':
      return { reason: 'OutOfDiskSpace', message: `${doing}: the host is out of disk space (${err.message})` };
    case 'InvalidDiskImage':
      return { reason: 'InvalidDiskImage', message: `${doing}: Virtualization.framework cannot use the disk image (raw disks only): ${err.message}` };
    case 'InvalidVirtualMachineConfiguration':
      return { reason: 'InvalidVmConfiguration', message: `${doing}: Virtualization.framework rejected the VM configuration: ${err.message}` };
    default:
      return { reason: err.name, message: `${doing}: ${err.message}${err.domain ? ` (${err.domain} ${err.code ?? ''})`.replace(/ \)$/, ')') : ''}` };
  }
}
