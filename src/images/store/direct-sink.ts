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
// VMLET_DIRECT_IO=0 turns it off (for A/B benchmarks, or a filesystem that misbehaves with it).
import { closeSync, constants, openSync, writeSync } from 'node:fs';
import type { RunSink } from './run-writer.ts';

/** Alignment asked of positions and lengths of direct writes (a page: enough for any block size). */
const ALIGN = 4096;

export interface DiskSinkOptions {
  /** Try O_DIRECT (default: unless VMLET_DIRECT_IO=0). */
  direct?: boolean;
}

export class DiskSink implements RunSink {
  private direct: number | undefined;

  private constructor(private readonly fd: number, direct: number | undefined, readonly stage: Buffer) {
    this.direct = direct;
  }

  /**
   * Opens `file` for writing and returns the sink, whose stage is the first `stageBytes` of `arena` (from
   * alignedArena(), so that direct writes from it are allowed).
   */
  static open(file: string, arena: Buffer, stageBytes: number, options: DiskSinkOptions = {}): DiskSink {
    if (arena.length < stageBytes) throw new RangeError(`direct-sink: the arena must be at least ${stageBytes} bytes`);
    const fd = openSync(file, 'r+');
    let direct: number | undefined;
    const wanted = (options.direct ?? process.env.VMLET_DIRECT_IO !== '0') && arenas.has(arena.buffer);
    if (wanted && typeof constants.O_DIRECT === 'number') {
      try {
        direct = openSync(file, constants.O_RDWR | constants.O_DIRECT);
      } catch {
        direct = undefined; // e.g. EINVAL from open on a filesystem without O_DIRECT
      }
    }
    return new DiskSink(fd, direct, arena.subarray(0, stageBytes));
  }

  /** Whether writes still go around the page cache. */
  get isDirect(): boolean {
    return this.direct !== undefined;
  }

  write(data: Buffer, position: number): void {
    if (this.direct !== undefined && position % ALIGN === 0 && data.byteOffset === this.stage.byteOffset) {
      const n = data.length - (data.length % ALIGN);
      if (n > 0) {
        try {
          writeAll(this.direct, data.subarray(0, n), position);
          data = data.subarray(n);
          position += n;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
          this.stopDirect(); // redone below, buffered (a direct write that fails writes nothing)
        }
      }
    }
    if (data.length > 0) writeAll(this.fd, data, position);
  }

  close(): void {
    this.stopDirect();
    closeSync(this.fd);
  }

  private stopDirect(): void {
    if (this.direct === undefined) return;
    closeSync(this.direct);
    this.direct = undefined;
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
