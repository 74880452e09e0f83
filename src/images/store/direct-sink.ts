// DiskSink: the positional writes of a chunk-writer thread into the disk file, with O_DIRECT where the
// system has it (Linux). Writing a pulled disk through the page cache costs more CPU in the kernel than
// decoding it: on this project's 2-core machines 1 GiB took 1.1-2.7 s of system time buffered and
// 0.2-0.3 s with O_DIRECT (dd, BENCHMARKS.md run 6), and the pull is bound by that write. O_DIRECT also
// puts the bytes on the device at once, so the one fsync before the image is published is cheap.
//
// O_DIRECT wants the memory, the file position and the length aligned to the filesystem's block. Node
// cannot align a Buffer or tell its address, but a WebAssembly.Memory is page-aligned (V8 reserves it in
// whole pages), so the stage that RunWriter fills is carved from one (alignedArena). Positions are
// multiples of 64 KiB from a chunk's offset; a length's unaligned tail, a misaligned position, and every
// write on a filesystem or OS without O_DIRECT (macOS, tmpfs) go through an ordinary descriptor. An EINVAL
// from a direct write turns direct I/O off for the rest of the chunk and the write is redone buffered:
// never a lost write. (Probing the alignment with a direct read does not work: ext4 does not check the
// memory of a read from a hole.)
//
// Writes are asynchronous (libuv's thread pool) from a few stages in turn, so that the thread decodes and
// hashes the next megabyte while the last one goes to the disk: a direct write blocks until the device
// has it, which was a quarter of a writer thread's time when it waited. The caller waits for free stages
// before it fills more (available) and for every write at the end of a chunk (drain); the first error
// of any write (ENOSPC, EIO) is what both then throw.
//
// The `directIo` setting (VMLET_DIRECT_IO=false) turns it off, through ImageStore and the chunk job (for
// A/B benchmarks, or a filesystem that misbehaves with it).
import { close, closeSync, constants, openSync, write, writeSync } from 'node:fs';
import type { RunSink } from './run-writer.ts';

/** Alignment asked of positions and lengths of direct writes (a page: enough for any block size). */
const ALIGN = 4096;

export interface DiskSinkOptions {
  /** Try O_DIRECT (default true). */
  direct?: boolean;
}

export class DiskSink implements RunSink {
  private direct: number | undefined;
  private readonly free: Buffer[];
  /** Writes handed to the kernel and not finished. */
  private inFlight = 0;
  private failure: Error | undefined;
  private waiters: Array<() => void> = [];
  private closed = false;

  private constructor(private readonly fd: number, direct: number | undefined, private readonly stages: Buffer[]) {
    this.direct = direct;
    this.free = [...stages];
  }

  /**
   * Opens `file` for writing. `stages` are the buffers RunWriter fills in turn, all of one size; from
   * alignedArena() (at page-multiple offsets), direct writes from them are allowed.
   */
  static open(file: string, stages: Buffer[], options: DiskSinkOptions = {}): DiskSink {
    if (stages.length === 0) throw new RangeError('direct-sink: at least one stage');
    const fd = openSync(file, 'r+');
    let direct: number | undefined;
    const aligned = stages.every((b) => arenas.has(b.buffer) && b.byteOffset % ALIGN === 0);
    const wanted = (options.direct ?? true) && aligned;
    if (wanted && typeof constants.O_DIRECT === 'number') {
      try {
        direct = openSync(file, constants.O_RDWR | constants.O_DIRECT);
      } catch {
        direct = undefined; // e.g. EINVAL from open on a filesystem without O_DIRECT
      }
    }
    return new DiskSink(fd, direct, stages);
  }

  /** Whether writes still go around the page cache. */
  get isDirect(): boolean {
    return this.direct !== undefined;
  }

  /** Stages free to lend. */
  get freeStages(): number {
    return this.free.length;
  }

  /** Writes not finished yet. */
  get pending(): number {
    return this.inFlight;
  }

  /** A free stage for RunWriter to fill. Only call with one free: keep pending below stages.length. */
  stage(): Buffer {
    const b = this.free.pop();
    if (!b) throw new Error('direct-sink: no free stage (settle() before filling more)');
    return b;
  }

  /** Writes `data` (the start of a stage from stage()) at `position`; the stage is free again once written. */
  write(data: Buffer, position: number): void {
    const stage = this.stages.find((b) => b.buffer === data.buffer && b.byteOffset === data.byteOffset);
    if (!stage) throw new Error('direct-sink: write() of a buffer that is not one of its stages');
    this.inFlight++;
    const done = (err?: Error) => {
      this.inFlight--;
      this.failure ??= err;
      this.free.push(stage);
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    };
    // The buffered descriptor's share (an unaligned tail, or all of it), synchronously: done once written.
    const buffered = (part: Buffer, at: number): void => {
      try {
        writeAll(this.fd, part, at);
      } catch (e) {
        done(e as Error);
        return;
      }
      done();
    };
    const n = data.length - (data.length % ALIGN);
    if (this.direct !== undefined && position % ALIGN === 0 && n > 0) {
      const direct = this.direct;
      writeAllAsync(direct, data.subarray(0, n), position, (err) => {
        if (err?.code === 'EINVAL') {
          // Redone buffered, all of it (a direct write that fails writes nothing); direct I/O off from here.
          if (this.direct === direct) this.stopDirect();
          buffered(data, position);
        } else if (err) done(err);
        else if (n < data.length) buffered(data.subarray(n), position + n);
        else done();
      });
      return;
    }
    writeAllAsync(this.fd, data, position, (err) => done(err ?? undefined));
  }

  /** Resolves once `n` stages are free; rejects with the first write error. */
  available(n: number): Promise<void> {
    if (n > this.stages.length) throw new RangeError(`direct-sink: ${n} stages wanted, ${this.stages.length} exist`);
    return this.until(() => this.free.length >= n);
  }

  /** Every write finished; the first error of any, thrown. */
  drain(): Promise<void> {
    return this.until(() => this.inFlight === 0);
  }

  /** Closes the file once every write has finished (errors are drain's to report). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.drain().catch(() => undefined);
    this.stopDirect();
    closeSync(this.fd);
  }

  private stopDirect(): void {
    if (this.direct === undefined) return;
    const fd = this.direct;
    this.direct = undefined;
    // Writes on it may still be in flight: closed once they are done.
    if (this.inFlight > 0) void this.drain().catch(() => undefined).then(() => close(fd, () => {}));
    else closeSync(fd);
  }

  /** Waits (woken by each finished write) until `ready`; then the first write error, if any, is thrown. */
  private async until(ready: () => boolean): Promise<void> {
    while (!ready()) await new Promise<void>((resolve) => this.waiters.push(resolve));
    if (this.failure) throw this.failure;
  }
}

/** Backing stores of the arenas made here: only those are known to be page-aligned. */
const arenas = new WeakSet<ArrayBufferLike>();

/**
 * A buffer of at least `bytes` whose first byte is page-aligned: the memory of a WebAssembly.Memory,
 * which V8 allocates in whole pages. Where WebAssembly is not available (node --jitless), a plain buffer
 * that DiskSink writes from without O_DIRECT.
 */
export function alignedArena(bytes: number): Buffer {
  try {
    const { WebAssembly: wasm } = globalThis as unknown as { WebAssembly: { Memory: new (d: { initial: number }) => { buffer: ArrayBuffer } } };
    const memory = new wasm.Memory({ initial: Math.ceil(bytes / WASM_PAGE) });
    arenas.add(memory.buffer);
    return Buffer.from(memory.buffer);
  } catch {
    return Buffer.allocUnsafeSlow(bytes);
  }
}

const WASM_PAGE = 64 * 1024;

function writeAll(fd: number, data: Buffer, position: number): void {
  for (let done = 0; done < data.length; ) done += writeSync(fd, data, done, data.length - done, position + done);
}

/** All of `data` at `position` through libuv's thread pool (short writes continued). */
function writeAllAsync(fd: number, data: Buffer, position: number, cb: (err: NodeJS.ErrnoException | null) => void, done = 0): void {
  write(fd, data, done, data.length - done, position + done, (err, n) => {
    if (err) cb(err);
    else if (done + n >= data.length) cb(null);
    else writeAllAsync(fd, data, position, cb, done + n);
  });
}
