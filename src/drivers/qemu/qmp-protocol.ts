// QMP, the QEMU Machine Protocol, as bytes in and messages out: pure, like ws's receiver and sender. QMP
// is one JSON object per line (QEMU ends each with CRLF), but a socket read may hold half a message or
// several; QmpDecoder reassembles them. qmp-client.ts ties this to a unix socket.

/** The greeting QEMU sends first. */
export interface QmpGreeting {
  kind: 'greeting';
  version: string;
  capabilities: string[];
}

export interface QmpReturn {
  kind: 'return';
  id?: string | number;
  value: unknown;
}

export interface QmpErrorReply {
  kind: 'error';
  id?: string | number;
  errorClass: string;
  desc: string;
}

export interface QmpEvent {
  kind: 'event';
  event: string;
  data: Record<string, unknown>;
  /** QEMU's timestamp of the event, in ms since the epoch. */
  at: number;
}

export type QmpMessage = QmpGreeting | QmpReturn | QmpErrorReply | QmpEvent;

export class QmpProtocolError extends Error {
  override name = 'QmpProtocolError';
}

/** Feeds chunks of a QMP stream, returns the complete messages in them. Partial lines wait for the next chunk. */
export class QmpDecoder {
  private pending = '';
  // Bytes, not characters: a chunk may end inside a multi-byte UTF-8 character.
  private partialBytes = Buffer.alloc(0);
  /** A line this long without a newline is not QMP (QEMU's largest replies are well below this). */
  constructor(private readonly maxLineBytes = 16 * 1024 * 1024) {}

  push(chunk: Buffer | string): QmpMessage[] {
    let text: string;
    if (typeof chunk === 'string') {
      text = chunk;
    } else {
      const bytes = this.partialBytes.length ? Buffer.concat([this.partialBytes, chunk]) : chunk;
      const cut = completeUtf8Length(bytes);
      text = bytes.subarray(0, cut).toString('utf8');
      this.partialBytes = Buffer.from(bytes.subarray(cut));
    }
    this.pending += text;
    const out: QmpMessage[] = [];
    let newline: number;
    while ((newline = this.pending.indexOf('\n')) >= 0) {
      const line = this.pending.slice(0, newline).trim();
      this.pending = this.pending.slice(newline + 1);
      if (line) out.push(parseQmpLine(line));
    }
    if (this.pending.length > this.maxLineBytes) {
      throw new QmpProtocolError(`QMP message longer than ${this.maxLineBytes} bytes without a line end`);
    }
    return out;
  }
}

/** One QMP line as a message; throws QmpProtocolError for anything QEMU would not send. */
export function parseQmpLine(line: string): QmpMessage {
  let obj: unknown;
  try {
    obj = JSON.parse(line);
  } catch {
    throw new QmpProtocolError(`QMP sent a line that is not JSON: ${line.slice(0, 120)}`);
  }
  if (!isObject(obj)) throw new QmpProtocolError(`QMP sent a non-object: ${line.slice(0, 120)}`);
  const id = typeof obj.id === 'string' || typeof obj.id === 'number' ? obj.id : undefined;
  if (isObject(obj.QMP)) {
    const version = isObject(obj.QMP.version) && isObject(obj.QMP.version.qemu) ? obj.QMP.version.qemu : {};
    const capabilities = Array.isArray(obj.QMP.capabilities) ? obj.QMP.capabilities.map(String) : [];
    return { kind: 'greeting', version: `${String(version.major)}.${String(version.minor)}.${String(version.micro)}`, capabilities };
  }
  if ('return' in obj) return { kind: 'return', id, value: obj.return };
  if (isObject(obj.error)) {
    const { class: errorClass, desc } = obj.error;
    return { kind: 'error', id, errorClass: typeof errorClass === 'string' ? errorClass : 'GenericError', desc: typeof desc === 'string' ? desc : '' };
  }
  if (typeof obj.event === 'string') {
    const ts = isObject(obj.timestamp) ? obj.timestamp : {};
    const at = Number(ts.seconds ?? 0) * 1000 + Math.floor(Number(ts.microseconds ?? 0) / 1000);
    return { kind: 'event', event: obj.event, data: isObject(obj.data) ? obj.data : {}, at };
  }
  throw new QmpProtocolError(`QMP sent an unknown message: ${line.slice(0, 120)}`);
}

/** A command as QMP wants it on the wire (one line). */
export function encodeQmpCommand(execute: string, args?: Record<string, unknown>, id?: string | number): string {
  const msg: Record<string, unknown> = { execute };
  if (args && Object.keys(args).length > 0) msg.arguments = args;
  if (id !== undefined) msg.id = id;
  return `${JSON.stringify(msg)}\n`;
}

/** The SHUTDOWN event's payload: `guest` is true when the guest itself powered off or reset. */
export interface ShutdownInfo {
  guest: boolean;
  /** QEMU's ShutdownCause, e.g. guest-shutdown, guest-reset, guest-panic, host-qmp-quit, host-signal. */
  reason: string;
}

export function shutdownInfo(event: QmpEvent): ShutdownInfo | undefined {
  if (event.event !== 'SHUTDOWN') return undefined;
  return { guest: event.data.guest === true, reason: typeof event.data.reason === 'string' ? event.data.reason : 'unknown' };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** How many leading bytes of buf end on a UTF-8 character boundary. */
function completeUtf8Length(buf: Buffer): number {
  const n = buf.length;
  // Look back at most 3 bytes for the lead byte of a sequence that the buffer cuts short.
  for (let i = n - 1; i >= Math.max(0, n - 3); i--) {
    const b = buf[i]!;
    if ((b & 0xc0) === 0x80) continue; // continuation byte
    const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    return n - i >= need ? n : i;
  }
  return n;
}
