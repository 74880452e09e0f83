// RunWriter: what a chunk-writer thread does with the bytes it decodes. It gathers them into runs of whole
// 64 KiB windows (ZERO_RUN), drops the windows that are all zeros when the range is known to be a hole
// (sparse), and hands each contiguous run to one positional write of up to a stage's length. Fewer,
// larger writes, from buffers the sink lends, which can be aligned for O_DIRECT and written while the
// next one fills (direct-sink.ts). The I/O is a collaborator (RunSink), so the gathering here is pure and
// tested alone.
import { ZERO_RUN } from './sparse-file.ts';

/**
 * Where runs go. stage() lends the buffer to fill next (a whole number of windows long); write() takes
 * back its start, `data`, to be written at `position`, all of it (at once, or later: the sink owns the
 * stage until then).
 */
export interface RunSink {
  stage(): Buffer;
  write(data: Buffer, position: number): void;
}

const ZEROS = Buffer.alloc(ZERO_RUN);

function isZero(b: Buffer): boolean {
  return b.compare(ZEROS, 0, b.length) === 0;
}

export class RunWriter {
  /** Disk position of stage[0]. */
  private stageStart: number;
  private len = 0;
  /** Bytes handed to the sink. */
  written = 0;
  /** Bytes pushed (decoded), zeros included. */
  pushed = 0;

  /** The stage being filled; taken from the sink when the first byte needs it. */
  private current: Buffer | undefined;

  /**
   * @param start disk position of the first byte pushed; windows are counted from here
   * @param sparse skip all-zero windows (only right for a range that holds zeros already)
   */
  constructor(private readonly sink: RunSink, start: number, private readonly sparse: boolean) {
    this.stageStart = start;
  }

  push(data: Buffer): void {
    this.pushed += data.length;
    let at = 0;
    while (at < data.length) {
      const partial = this.len % ZERO_RUN;
      if (partial === 0 && data.length - at >= ZERO_RUN) {
        // A whole window in the input: test it where it is, so zeros are never copied.
        const window = data.subarray(at, at + ZERO_RUN);
        at += ZERO_RUN;
        if (this.sparse && isZero(window)) {
          this.skipWindow();
          continue;
        }
        if (this.len === this.stage.length) this.flush();
        window.copy(this.stage, this.len);
        this.len += ZERO_RUN;
        continue;
      }
      // A window split across inputs: assemble it in the stage, test it once complete.
      if (this.len === this.stage.length) this.flush();
      const take = Math.min(ZERO_RUN - partial, data.length - at);
      data.copy(this.stage, this.len, at, at + take);
      this.len += take;
      at += take;
      if (this.len % ZERO_RUN === 0 && this.sparse && isZero(this.stage.subarray(this.len - ZERO_RUN, this.len))) {
        this.len -= ZERO_RUN;
        this.skipWindow();
      }
    }
  }

  /** Writes what is staged (a last, partial window is skipped too when it is all zeros). */
  end(): void {
    const partial = this.len % ZERO_RUN;
    if (partial > 0 && this.sparse && isZero(this.stage.subarray(this.len - partial, this.len))) this.len -= partial;
    this.flush();
  }

  private skipWindow(): void {
    this.flush();
    this.stageStart += ZERO_RUN;
  }

  private flush(): void {
    if (this.len === 0) return;
    this.sink.write(this.stage.subarray(0, this.len), this.stageStart);
    this.written += this.len;
    this.stageStart += this.len;
    this.len = 0;
    this.current = undefined; // the sink's until written
  }

  private get stage(): Buffer {
    if (this.current) return this.current;
    const stage = this.sink.stage();
    if (stage.length === 0 || stage.length % ZERO_RUN !== 0) throw new RangeError(`run-writer: a stage must be a whole number of ${ZERO_RUN}-byte windows, got ${stage.length}`);
    this.current = stage;
    return stage;
  }
}
