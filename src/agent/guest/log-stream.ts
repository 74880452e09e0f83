// `logs` for a main process: its CRI log files read back as kubectl shows them (partial records joined,
// optionally each line prefixed with its time), filtered by since/tail, then, when following, what it
// logs next until the run ends. The snapshot of the files and the subscription to new records are taken
// in one tick, so nothing is missed or repeated between them.
import { Readable } from 'node:stream';
import type { LogsRequest } from '../protocol/messages.ts';
import { parseCriLine, readSnapshot } from './cri-log.ts';
import type { MainProcess } from './main-process.ts';

/** A follower that falls this far behind loses the records in between (and is told so). */
const MAX_LIVE_BYTES = 16 * 1024 * 1024;

export function logStream(main: MainProcess, req: Omit<LogsRequest, 'op' | 'id' | 'stream'>): Readable {
  return Readable.from(logChunks(main, req), { objectMode: false });
}

async function* logChunks(main: MainProcess, req: Omit<LogsRequest, 'op' | 'id' | 'stream'>): AsyncGenerator<Buffer> {
  const follow = req.follow === true && main.running;
  const live: Buffer[] = [];
  let liveBytes = 0;
  let skipped = 0;
  let wake: (() => void) | undefined;
  const unsubscribe = follow
    ? main.writer.subscribe((record) => {
      if (liveBytes + record.length > MAX_LIVE_BYTES) skipped += record.length;
      else {
        live.push(record);
        liveBytes += record.length;
      }
      wake?.();
    })
    : () => true;
  const snapshot = main.writer.snapshot();
  let ended = false;
  void main.runEnded.then(() => {
    ended = true;
    wake?.();
  });
  const format = new LogFormatter(req.timestamps === true, req.sinceTime);
  try {
    const tail = req.tailLines;
    if (tail !== undefined && tail >= 0) {
      const ring: Buffer[] = [];
      for await (const line of readSnapshot(snapshot)) {
        for (const l of format.push(line)) {
          ring.push(l);
          if (ring.length > tail) ring.shift();
        }
      }
      if (ring.length) yield Buffer.concat(ring);
    } else {
      for await (const line of readSnapshot(snapshot)) {
        const out = format.push(line);
        if (out.length) yield Buffer.concat(out);
      }
    }
    while (follow) {
      if (live.length) {
        const batch = live.splice(0);
        liveBytes = 0;
        const out = batch.flatMap((r) => format.push(r));
        if (out.length) yield Buffer.concat(out);
        continue;
      }
      if (skipped) {
        yield Buffer.from(`[vmlet-agent: ${skipped} bytes of log skipped: the reader fell behind]\n`);
        skipped = 0;
      }
      if (ended) break;
      await new Promise<void>((resolve) => (wake = resolve));
      wake = undefined;
    }
  } finally {
    unsubscribe();
  }
}

/** CRI records → lines as `kubectl logs` prints them. Returns the complete pieces a record produced. */
export class LogFormatter {
  private midLine = false;
  private readonly sinceMs: number | undefined;

  constructor(private readonly timestamps: boolean, since: string | undefined) {
    this.sinceMs = since ? Date.parse(since) : undefined;
  }

  push(line: Buffer): Buffer[] {
    const text = line[line.length - 1] === 10 ? line.subarray(0, line.length - 1) : line;
    const record = parseCriLine(text);
    if (!record) return [];
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
