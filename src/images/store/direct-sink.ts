// DiskSink: the positional writes of a chunk-writer thread into the disk file, with O_DIRECT where the
// system has it (Linux). Writing a pulled disk through the page cache costs more CPU in the kernel than
// decoding it: on this project's 2-core machines 1 GiB took 1.1-2.7 s of system time buffered and
// 0.2-0.3 s with O_DIRECT (dd, BENCHMARKS.md run 6), and the pull is bound by that write. O_DIRECT also
// puts the bytes on the device at once, so the one fsync before the image is published is cheap.
//
// O_DIRECT wants the memory, the file position and the length aligned to the filesystem's block. The
// stage that RunWriter fills is carved out of a larger buffer at an offset that the kernel accepts,
// found by probing (Node cannot align memory or tell an address); positions are multiples of 64 KiB from
// a chunk's offset; a length's unaligned tail, a misaligned position, and every write on a filesystem or
// OS without O_DIRECT (macOS, tmpfs) go through an ordinary descriptor. An EINVAL from a direct write
// turns direct I/O off for the rest of the chunk and the write is redone buffered: never a lost write.
//
// VMLET_DIRECT_IO=0 turns it off (for A/B benchmarks, or a filesystem that misbehaves with it).
import { closeSync, constants, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import type { RunSink } from './run-writer.ts';

/** Alignment asked of positions and lengths of direct writes, and the most the stage is shifted by. */
const ALIGN = 4096;
/** malloc returns memory aligned to at least this; the probe steps by it. */
const MALLOC_ALIGN = 16;

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
   * Opens `file` for writing and returns the sink with a stage of `stageBytes` taken from `arena` (which
   * must be at least stageBytes + 4 KiB long), aligned for direct writes when they are possible.
   */
  static open(file: string, arena: Buffer, stageBytes: number, options: DiskSinkOptions = {}): DiskSink {
    if (arena.length < stageBytes + ALIGN) throw new RangeError(`direct-sink: the arena must be at least ${stageBytes + ALIGN} bytes`);
    const fd = openSync(file, 'r+');
    let direct: number | undefined;
    let offset = 0;
    const wanted = options.direct ?? process.env.VMLET_DIRECT_IO !== '0';
    if (wanted && typeof constants.O_DIRECT === 'number' && fstatSync(fd).size >= ALIGN) {
      try {
        direct = openSync(file, constants.O_RDWR | constants.O_DIRECT);
        const found = probeAlignment(direct, arena);
        if (found === undefined) {
          closeSync(direct);
          direct = undefined;
        } else offset = found;
      } catch {
        if (direct !== undefined) closeSync(direct);
        direct = undefined; // e.g. EINVAL from open on a filesystem without O_DIRECT
      }
    }
    return new DiskSink(fd, direct, arena.subarray(offset, offset + stageBytes));
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

/**
 * The offset into `arena` at which a direct read of one block succeeds: there the memory is aligned as
 * the filesystem wants. Reads the file's first block (a hole reads as zeros), never writes.
 */
function probeAlignment(fd: number, arena: Buffer): number | undefined {
  for (let offset = 0; offset < ALIGN; offset += MALLOC_ALIGN) {
    try {
      readSync(fd, arena, offset, ALIGN, 0);
      return offset;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') return undefined;
    }
  }
  return undefined;
}

function writeAll(fd: number, data: Buffer, position: number): void {
  for (let done = 0; done < data.length; ) done += writeSync(fd, data, done, data.length - done, position + done);
}
