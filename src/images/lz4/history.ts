// The last 64 KiB of decoded output: the dictionary the next `bv41` block is decoded against. Our own
// copy, so a consumer that reuses or transfers the buffers we hand out cannot change it.
import { WINDOW_SIZE } from './format.ts';

export class History {
  private readonly buf = Buffer.allocUnsafeSlow(WINDOW_SIZE);
  private length = 0;

  /** The history bytes, oldest first (a view, valid until the next append). */
  view(): Buffer {
    return this.buf.subarray(0, this.length);
  }

  append(out: Uint8Array): void {
    if (out.length >= WINDOW_SIZE) {
      this.buf.set(out.subarray(out.length - WINDOW_SIZE));
      this.length = WINDOW_SIZE;
      return;
    }
    const keep = Math.min(this.length, WINDOW_SIZE - out.length);
    this.buf.copyWithin(0, this.length - keep, this.length);
    this.buf.set(out, keep);
    this.length = keep + out.length;
  }
}
