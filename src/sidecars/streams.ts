// The Docker API's stream framing and the process shape the kubelet API takes (src/kubelet/provider.ts's
// StreamedProcess, declared again here so this layer does not import upward; the two are kept identical).
import { PassThrough, Writable, type Duplex, type Readable } from 'node:stream';

/** Same as src/kubelet/provider.ts StreamOptions. */
export interface SidecarStreamOptions {
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
  tty: boolean;
  size?: { rows: number; cols: number };
}

/** Same as src/kubelet/provider.ts StreamedProcess: assignable to it. */
export interface SidecarProcess {
  stdin: Writable | null;
  stdout: Readable | null;
  stderr: Readable | null;
  exited: Promise<{ exitCode: number; signal: string | null }>;
  resize(rows: number, cols: number): Promise<void>;
  close(): void;
}

export type StreamKind = 'stdout' | 'stderr';

/**
 * Splits the engine's multiplexed stream (8-byte headers: stream type, 3 zero bytes, big-endian length)
 * into frames. Without a tty the engine frames stdout and stderr this way; with one the bytes are raw.
 */
export class FrameDemuxer {
  private pending: Buffer = Buffer.alloc(0);
  constructor(private readonly onFrame: (kind: StreamKind, payload: Buffer) => void) {}

  push(chunk: Buffer): void {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    while (this.pending.length >= 8) {
      const size = this.pending.readUInt32BE(4);
      if (this.pending.length < 8 + size) break;
      const type = this.pending[0];
      const payload = this.pending.subarray(8, 8 + size);
      this.pending = this.pending.subarray(8 + size);
      // 0 is stdin echoed back (tty off, never seen in practice); 3 is a systemerr message: show it on stderr.
      if (size > 0) this.onFrame(type === 1 ? 'stdout' : 'stderr', payload);
    }
  }

  /** Bytes of an unfinished frame left at the end (a cut stream). */
  get leftover(): number {
    return this.pending.length;
  }
}

/** Copies `source` into stdout/stderr streams, demultiplexed unless `tty`; ends both when it ends. */
export function splitOutput(source: Readable | NodeJS.ReadableStream, tty: boolean): { stdout: PassThrough; stderr: PassThrough; done: Promise<void> } {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const demux = new FrameDemuxer((kind, payload) => (kind === 'stdout' ? stdout : stderr).write(payload));
  const done = new Promise<void>((resolve) => {
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      stdout.end();
      stderr.end();
      resolve();
    };
    source.on('data', (chunk: Buffer | string) => {
      const b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      if (tty) stdout.write(b);
      else demux.push(b);
    });
    source.on('end', finish);
    source.on('close', finish);
    source.on('error', finish);
  });
  return { stdout, stderr, done };
}

/** A Writable into the hijacked connection: end() half-closes it, which is EOF on the process's stdin. */
export function stdinInto(conn: Duplex): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (conn.destroyed || conn.writableEnded) return cb();
      conn.write(chunk, (err) => cb(err ?? null));
    },
    final(cb) {
      if (!conn.destroyed && !conn.writableEnded) conn.end();
      cb();
    },
  });
}
