// A main process's log in the CRI format the kubelet reads (`<RFC3339Nano> stdout|stderr F|P <text>`), kept
// in the guest and rotated by size. Writes are synchronous, so a reader can take a consistent snapshot
// (open every file and note its size) and subscribe to new records in one tick: nothing is lost or
// repeated between what it reads from the files and what it is told afterwards.
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, read, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { performance } from 'node:perf_hooks';

export type LogStream = 'stdout' | 'stderr';
/** Lines longer than this are split into partial (P) records, as the kubelet's 16 KiB limit does. */
export const MAX_RECORD_TEXT = 16 * 1024;

/** RFC 3339 with nanoseconds as Go prints it (trailing zeros kept: the field is fixed-width here). */
export function rfc3339Nano(ms = performance.timeOrigin + performance.now()): string {
  const whole = Math.floor(ms);
  const iso = new Date(whole).toISOString(); // 2024-01-02T03:04:05.678Z
  const subMs = Math.floor((ms - whole) * 1e6).toString().padStart(6, '0');
  return `${iso.slice(0, 23)}${subMs}Z`;
}

export interface Snapshot {
  files: { fd: number; size: number }[];
}

export class CriLogWriter {
  private fd: number;
  private size: number;
  private readonly partial: Record<LogStream, Buffer[]> = { stdout: [], stderr: [] };
  private readonly listeners = new Set<(record: Buffer) => void>();

  constructor(readonly path: string, private readonly maxBytes: number, private readonly maxFiles: number) {
    mkdirSync(dirname(path), { recursive: true });
    this.fd = openSync(path, 'a');
    this.size = fstatSync(this.fd).size;
  }

  /** Output of the process, in whatever pieces the pipe delivered. */
  write(stream: LogStream, chunk: Buffer): void {
    let start = 0;
    for (let nl = chunk.indexOf(10); nl >= 0; nl = chunk.indexOf(10, start)) {
      const held = this.partial[stream];
      const text = held.length ? Buffer.concat([...held, chunk.subarray(start, nl)]) : chunk.subarray(start, nl);
      this.partial[stream] = [];
      this.emitLine(stream, text);
      start = nl + 1;
    }
    if (start < chunk.length) {
      const held = this.partial[stream];
      held.push(chunk.subarray(start));
      const heldBytes = held.reduce((n, b) => n + b.length, 0);
      if (heldBytes >= MAX_RECORD_TEXT) {
        const all = Buffer.concat(held);
        let at = 0;
        for (; all.length - at >= MAX_RECORD_TEXT; at += MAX_RECORD_TEXT) this.record(stream, 'P', all.subarray(at, at + MAX_RECORD_TEXT));
        this.partial[stream] = at < all.length ? [all.subarray(at)] : [];
      }
    }
  }

  /** The stream ended: an unterminated last line is logged as a full one. */
  flush(stream: LogStream): void {
    const held = this.partial[stream];
    this.partial[stream] = [];
    if (held.length) this.record(stream, 'F', Buffer.concat(held));
  }

  /** Opens the files as they are now, oldest first, with their sizes; the reader closes the fds. */
  snapshot(): Snapshot {
    return snapshotFiles(this.path, this.maxFiles);
  }

  /** Where the log of the run before the last restart is kept (with `.1` … for its rotated files). */
  get previousPath(): string {
    return `${this.path}.previous`;
  }

  /** The previous run's log files, as snapshot() does for the current ones; undefined when there is none. */
  previousSnapshot(): Snapshot | undefined {
    if (!existsSync(this.previousPath)) return undefined;
    // Rotated files are numbered without gaps; the previous run may have had another maxFiles.
    let files = 1;
    while (existsSync(`${this.previousPath}.${files}`)) files++;
    return snapshotFiles(this.previousPath, files);
  }

  /**
   * A new run begins: the current files (what the last run logged) replace the previous run's, and
   * logging starts again in an empty file. Followers of the old run have been told it ended.
   */
  startOver(): void {
    this.flush('stdout');
    this.flush('stderr');
    closeSync(this.fd);
    rmSync(this.previousPath, { force: true });
    for (let i = 1; existsSync(`${this.previousPath}.${i}`); i++) rmSync(`${this.previousPath}.${i}`, { force: true });
    for (let i = 0; i < this.maxFiles; i++) {
      try {
        renameSync(i === 0 ? this.path : `${this.path}.${i}`, i === 0 ? this.previousPath : `${this.previousPath}.${i}`);
      } catch { /* fewer files */ }
    }
    this.fd = openSync(this.path, 'a');
    this.size = 0;
  }

  /** Every file of this log: current, rotated and previous ones (for removal). */
  allPaths(): string[] {
    const out: string[] = [];
    for (const base of [this.path, this.previousPath]) {
      for (let i = 0; i < this.maxFiles; i++) out.push(i === 0 ? base : `${base}.${i}`);
    }
    return out;
  }

  /** Called with every record written from now on (a Buffer of one CRI line, newline included). */
  subscribe(fn: (record: Buffer) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  close(): void {
    this.flush('stdout');
    this.flush('stderr');
    closeSync(this.fd);
  }

  private emitLine(stream: LogStream, text: Buffer): void {
    let at = 0;
    for (; text.length - at > MAX_RECORD_TEXT; at += MAX_RECORD_TEXT) this.record(stream, 'P', text.subarray(at, at + MAX_RECORD_TEXT));
    this.record(stream, 'F', text.subarray(at));
  }

  private record(stream: LogStream, tag: 'F' | 'P', text: Buffer): void {
    const line = Buffer.concat([Buffer.from(`${rfc3339Nano()} ${stream} ${tag} `), text, NEWLINE]);
    if (this.size > 0 && this.size + line.length > this.maxBytes) this.rotate();
    writeSync(this.fd, line);
    this.size += line.length;
    for (const fn of this.listeners) fn(line);
  }

  private rotate(): void {
    closeSync(this.fd);
    rmSync(`${this.path}.${this.maxFiles - 1}`, { force: true });
    for (let i = this.maxFiles - 2; i >= 1; i--) {
      try {
        renameSync(`${this.path}.${i}`, `${this.path}.${i + 1}`);
      } catch { /* not there yet */ }
    }
    if (this.maxFiles > 1) renameSync(this.path, `${this.path}.1`);
    else rmSync(this.path, { force: true });
    this.fd = openSync(this.path, 'a');
    this.size = 0;
  }
}

const NEWLINE = Buffer.from('\n');

/** Opens `base`, `base.1` … `base.<maxFiles-1>` as they are now, oldest first, with their sizes. */
function snapshotFiles(base: string, maxFiles: number): Snapshot {
  const files: Snapshot['files'] = [];
  for (let i = maxFiles - 1; i >= 0; i--) {
    const name = i === 0 ? base : `${base}.${i}`;
    let fd: number;
    try {
      fd = openSync(name, 'r');
    } catch {
      continue;
    }
    files.push({ fd, size: fstatSync(fd).size });
  }
  return { files };
}

export interface CriRecord {
  time: string;
  stream: LogStream;
  partial: boolean;
  text: Buffer;
}

/** One CRI line (without its newline) as a record; undefined for a line that is not one. */
export function parseCriLine(line: Buffer): CriRecord | undefined {
  const s1 = line.indexOf(32);
  const s2 = s1 < 0 ? -1 : line.indexOf(32, s1 + 1);
  const s3 = s2 < 0 ? -1 : line.indexOf(32, s2 + 1);
  if (s3 < 0) return undefined;
  const stream = line.toString('latin1', s1 + 1, s2);
  const tag = line.toString('latin1', s2 + 1, s3);
  if ((stream !== 'stdout' && stream !== 'stderr') || (tag !== 'F' && tag !== 'P')) return undefined;
  return { time: line.toString('latin1', 0, s1), stream, partial: tag === 'P', text: line.subarray(s3 + 1) };
}

/** Reads the CRI lines of a snapshot's files (newline included), up to the sizes noted, and closes them. */
export async function* readSnapshot(snapshot: Snapshot): AsyncGenerator<Buffer[]> {
  try {
    for (const { fd, size } of snapshot.files) {
      // Through the fd taken at the snapshot: a rotation may have renamed or removed the file since.
      let carry = Buffer.alloc(0);
      const buf = Buffer.allocUnsafe(256 * 1024);
      for (let pos = 0; pos < size; ) {
        const bytesRead = await readAt(fd, buf, Math.min(buf.length, size - pos), pos);
        if (bytesRead === 0) break;
        pos += bytesRead;
        // One copy per read; the lines are views of it, handed over together (one await per read, not
        // per line: under emulation that difference is most of a long log's read time).
        const data = Buffer.concat([carry, buf.subarray(0, bytesRead)]);
        const lines: Buffer[] = [];
        let start = 0;
        for (let nl = data.indexOf(10); nl >= 0; nl = data.indexOf(10, start)) {
          lines.push(data.subarray(start, nl + 1));
          start = nl + 1;
        }
        carry = Buffer.from(data.subarray(start));
        yield lines;
      }
    }
  } finally {
    for (const { fd } of snapshot.files) {
      try {
        closeSync(fd);
      } catch { /* closed already */ }
    }
  }
}

function readAt(fd: number, buf: Buffer, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => read(fd, buf, 0, length, position, (err, n) => (err ? reject(err) : resolve(n))));
}
