// Positional writes into a disk file that skip runs of zeros, so that a 100 GB disk that is mostly empty
// takes only the blocks of its data (the file is pre-sized with ftruncate: skipped ranges stay holes).

import { open, type FileHandle } from 'node:fs/promises';

/** Granularity of the zero test: a page-cache friendly size well above the filesystem block. */
export const ZERO_RUN = 64 * 1024;
const ZEROS = Buffer.alloc(ZERO_RUN);

export class SparseFile {
  private constructor(private readonly handle: FileHandle) {}

  /** Opens (creating if needed) and sizes the file; existing bytes are kept (for a resumed pull). */
  static async open(file: string, size: number): Promise<SparseFile> {
    const handle = await open(file, 'a+').then(async (h) => {
      await h.close();
      return open(file, 'r+');
    });
    const { size: current } = await handle.stat();
    if (current !== size) await handle.truncate(size);
    return new SparseFile(handle);
  }

  /**
   * Writes `data` at `position`. With `sparse`, runs of zeros are skipped — only right when the range
   * is known to hold zeros already (a fresh, truncated file); a range written before must be rewritten
   * whole, zeros included. Returns the bytes actually written.
   */
  async write(position: number, data: Buffer, sparse: boolean): Promise<number> {
    if (!sparse) {
      await this.writeAll(position, data);
      return data.length;
    }
    let written = 0;
    let runStart = -1;
    for (let at = 0; at < data.length; at += ZERO_RUN) {
      const end = Math.min(at + ZERO_RUN, data.length);
      const zero = data.compare(ZEROS, 0, end - at, at, end) === 0;
      if (!zero && runStart < 0) runStart = at;
      if (zero && runStart >= 0) {
        await this.writeAll(position + runStart, data.subarray(runStart, at));
        written += at - runStart;
        runStart = -1;
      }
    }
    if (runStart >= 0) {
      await this.writeAll(position + runStart, data.subarray(runStart));
      written += data.length - runStart;
    }
    return written;
  }

  async sync(): Promise<void> {
    await this.handle.sync();
  }

  async close(): Promise<void> {
    await this.handle.close();
  }

  private async writeAll(position: number, data: Buffer): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, position + done);
      done += bytesWritten;
    }
  }
}
