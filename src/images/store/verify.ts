// Checking disk chunks against their uncompressed digests: after a reboot, for data written but never
// synced (a pull resumed, an image about to be handed to a VM), and wherever a chunk is trusted again.
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import type { DiskChunk } from '../formats/layout.ts';

/** The indexes of the chunks whose bytes in `file` still hash to their digest. */
export async function validChunks(file: string, chunks: DiskChunk[]): Promise<number[]> {
  const valid: number[] = [];
  const handle = await open(file, 'r').catch(() => undefined);
  if (!handle) return valid;
  try {
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (const chunk of chunks) {
      const hash = createHash('sha256');
      for (let done = 0; done < chunk.size; ) {
        const { bytesRead } = await handle.read(buf, 0, Math.min(buf.length, chunk.size - done), chunk.offset + done);
        if (bytesRead === 0) break;
        hash.update(buf.subarray(0, bytesRead));
        done += bytesRead;
      }
      if (`sha256:${hash.digest('hex')}` === chunk.digest) valid.push(chunk.index);
    }
  } finally {
    await handle.close();
  }
  return valid;
}
