// `logs` for a main process: its CRI log files read back as kubectl shows them (partial records joined,
// optionally each line prefixed with its time), filtered by since/tail/output stream, then, when
// following, what it logs next until the run ends; or the previous run's files (`previous`). The snapshot
// of the files and the subscription to new records are taken in one tick, so nothing is missed or
// repeated between them. `limitBytes` ends the stream after that many bytes, following or not.
import { closeSync } from 'node:fs';
import { Readable } from 'node:stream';
import { AgentError } from '../protocol/errors.ts';
import type { LogsRequest } from '../protocol/messages.ts';
import { parseCriLine, readSnapshot, type LogStream, type Snapshot } from './cri-log.ts';
import type { MainProcess } from './main-process.ts';

/** A follower that falls this far behind loses the records in between (and is told so). */
const MAX_LIVE_BYTES = 16 * 1024 * 1024;
/** Bytes of formatted lines sent as one chunk when reading back the files. */
const BATCH_BYTES = 64 * 1024;

export type LogStreamOptions = Omit<LogsRequest, 'op' | 'id' | 'stream'>;

/**
 * The log as a stream. Checks the options and takes the snapshot (and the subscription, when following)
 * now, so a bad request or a missing previous run throws here, before the caller answers.
 */
export function logStream(main: MainProcess, req: LogStreamOptions): Readable {
  const { limitBytes, outputStream } = req;
  if (limitBytes !== undefined && limitBytes !== null && !(Number.isInteger(limitBytes) && limitBytes > 0)) {
    throw new AgentError('InvalidArgument', `limitBytes must be a positive integer (got ${JSON.stringify(limitBytes)})`);
  }
  if (outputStream !== undefined && outputStream !== null && outputStream !== 'stdout' && outputStream !== 'stderr') {
    throw new AgentError('InvalidArgument', `outputStream must be "stdout" or "stderr" (got ${JSON.stringify(outputStream)})`);
  }
  let snapshot: Snapshot;
  let follow = false;
  if (req.previous === true) {
    const previous = main.writer.previousSnapshot();
    if (!previous) throw new AgentError('NotFound', `no previous run of main process "${main.spec.id}"`);
    snapshot = previous;
  } else {
    follow = req.follow === true && main.running;
    snapshot = main.writer.snapshot();
  }
  const live = new LiveRecords(main, follow);
  let started = false;
  const source = logChunks(snapshot, live, new LogFormatter(req.timestamps === true, req.sinceTime, outputStream ?? undefined), req.tailLines, () => (started = true));
  const stream = Readable.from(limitBytes ? limited(source, limitBytes) : source, { objectMode: false });
  stream.once('close', () => {
    // Destroyed before the first read: the generator never ran, so its finally (which closes these) never will.
    if (started) return;
    live.stop();
    for (const { fd } of snapshot.files) {
      try {
        closeSync(fd);
      } catch { /* closed */ }
    }
  });
  return stream;
}

/** Records logged from now on, while following: bounded, with a count of what was skipped. */
class LiveRecords {
  readonly records: Buffer[] = [];
  bytes = 0;
  skipped = 0;
  ended = false;
  private wake: (() => void) | undefined;
  private readonly unsubscribe: () => void;

  constructor(main: MainProcess, readonly following: boolean) {
    this.unsubscribe = following
      ? main.writer.subscribe((record) => {
        if (this.ended) return; // the next run's (after a restart), not this one's
        if (this.bytes + record.length > MAX_LIVE_BYTES) this.skipped += record.length;
        else {
          this.records.push(record);
          this.bytes += record.length;
        }
        this.wake?.();
      })
      : () => {};
    if (following) {
      void main.runEnded.then(() => {
        this.ended = true;
        this.wake?.();
      });
    }
  }

  take(): Buffer[] {
    this.bytes = 0;
    return this.records.splice(0);
  }

  async next(): Promise<void> {
    await new Promise<void>((resolve) => (this.wake = resolve));
    this.wake = undefined;
  }

  stop(): void {
    this.unsubscribe();
  }
}

async function* logChunks(snapshot: Snapshot, live: LiveRecords, format: LogFormatter, tail: number | undefined, onStart: () => void): AsyncGenerator<Buffer> {
  onStart();
  try {
    if (tail !== undefined && tail !== null && tail >= 0) {
      const ring: Buffer[] = [];
      for await (const lines of readSnapshot(snapshot)) {
        for (const line of lines) {
          for (const l of format.push(line)) {
            ring.push(l);
            if (ring.length > tail) ring.shift();
          }
        }
      }
      if (ring.length) yield Buffer.concat(ring);
    } else {
      // Lines go out in batches: a frame (and, under emulation, a costly trip through the event loop) per
      // line made `kubectl logs` of a long log crawl.
      let batch: Buffer[] = [];
      let bytes = 0;
      for await (const lines of readSnapshot(snapshot)) {
        for (const line of lines) {
          for (const l of format.push(line)) {
            batch.push(l);
            bytes += l.length;
          }
        }
        if (bytes >= BATCH_BYTES) {
          yield Buffer.concat(batch);
          batch = [];
          bytes = 0;
        }
      }
      if (batch.length) yield Buffer.concat(batch);
    }
    while (live.following) {
      if (live.records.length) {
        const out = live.take().flatMap((r) => format.push(r));
        if (out.length) yield Buffer.concat(out);
        continue;
      }
      if (live.skipped) {
        yield Buffer.from(`[vmlet-agent: ${live.skipped} bytes of log skipped: the reader fell behind]\n`);
        live.skipped = 0;
      }
      if (live.ended) break;
      await live.next();
    }
  } finally {
    live.stop();
  }
}

/** The first `limit` bytes of `source`; then `source` is closed (a follow stops). */
async function* limited(source: AsyncGenerator<Buffer>, limit: number): AsyncGenerator<Buffer> {
  let left = limit;
  for await (const chunk of source) {
    if (chunk.length >= left) {
      yield chunk.subarray(0, left);
      return;
    }
    left -= chunk.length;
    yield chunk;
  }
}

/** CRI records → lines as `kubectl logs` prints them. Returns the complete pieces a record produced. */
export class LogFormatter {
  private midLine = false;
  private readonly sinceMs: number | undefined;

  constructor(private readonly timestamps: boolean, since: string | undefined, private readonly only?: LogStream) {
    this.sinceMs = since ? Date.parse(since) : undefined;
  }

  push(line: Buffer): Buffer[] {
    const text = line[line.length - 1] === 10 ? line.subarray(0, line.length - 1) : line;
    const record = parseCriLine(text);
    if (!record) return [];
    if (this.only && record.stream !== this.only) return [];
    if (this.sinceMs !== undefined && !this.midLine && parseTimeMs(record.time) < this.sinceMs) {
      if (record.partial) this.skipping = true;
      return [];
    }
    if (this.skipping) {
      this.skipping = record.partial;
      return [];
    }
    const out: Buffer[] = [];
    if (!this.midLine && this.timestamps) out.push(Buffer.from(`${record.time} `));
    out.push(record.text);
    if (!record.partial) out.push(NEWLINE);
    this.midLine = record.partial;
    // One logical line as one buffer, so a tail counts lines, not pieces.
    if (record.partial) {
      this.held.push(...out);
      return [];
    }
    return [Buffer.concat(this.held.splice(0).concat(out))];
  }

  private skipping = false;
  private readonly held: Buffer[] = [];
}

const NEWLINE = Buffer.from('\n');

/** RFC 3339 with up to nanoseconds, to milliseconds (Date.parse wants at most three fraction digits). */
function parseTimeMs(time: string): number {
  return Date.parse(time.replace(/(\.\d{3})\d+/, '$1'));
}
