// The telnet byte layer between the agent and busybox telnetd, which the agent uses to give an exec a
// pseudo-terminal (see tty.ts): telnetd's output carries IAC commands to strip and 0xFF doubled; what we
// send it must double 0xFF, and a window size travels as NAWS. Pure transforms, tested with bytes.
import { Transform, type TransformCallback } from 'node:stream';

const IAC = 0xff;
const SB = 250;
const SE = 240;
const NAWS = 31;

/** telnetd's output → the terminal's bytes. Also drops the "\r\r\n" telnetd prints before the command. */
export class TelnetDecoder extends Transform {
  private state: 'data' | 'iac' | 'option' | 'sb' | 'sb-iac' = 'data';
  private prefix = 0; // bytes of LEAD matched so far; -1 once past it

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    const out = Buffer.allocUnsafe(chunk.length + LEAD.length);
    let n = 0;
    for (const byte of chunk) {
      switch (this.state) {
        case 'data':
          if (byte === IAC) this.state = 'iac';
          else n = this.emit1(out, n, byte);
          break;
        case 'iac':
          if (byte === IAC) {
            n = this.emit1(out, n, IAC);
            this.state = 'data';
          } else if (byte >= 251 && byte <= 254) this.state = 'option';
          else if (byte === SB) this.state = 'sb';
          else this.state = 'data';
          break;
        case 'option':
          this.state = 'data';
          break;
        case 'sb':
          if (byte === IAC) this.state = 'sb-iac';
          break;
        case 'sb-iac':
          this.state = byte === SE ? 'data' : 'sb';
          break;
      }
    }
    done(null, n > 0 ? out.subarray(0, n) : undefined);
  }

  private emit1(out: Buffer, n: number, byte: number): number {
    if (this.prefix >= 0) {
      if (byte === LEAD[this.prefix]) {
        this.prefix++;
        if (this.prefix === LEAD.length) this.prefix = -1;
        return n;
      }
      // Not the lead after all: give back what was held.
      for (let i = 0; i < this.prefix; i++) out[n++] = LEAD[i]!;
      this.prefix = -1;
    }
    out[n++] = byte;
    return n;
  }
}

const LEAD = Buffer.from('\r\r\n');

/** Terminal input → telnetd: 0xFF doubled. */
export class TelnetEncoder extends Transform {
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    done(null, escapeIac(chunk));
  }
}

export function escapeIac(chunk: Buffer): Buffer {
  if (!chunk.includes(IAC)) return chunk;
  const out: number[] = [];
  for (const b of chunk) {
    out.push(b);
    if (b === IAC) out.push(IAC);
  }
  return Buffer.from(out);
}

/** IAC SB NAWS <cols> <rows> IAC SE: telnetd sets the pty's window size, and the kernel sends SIGWINCH. */
export function nawsCommand(rows: number, cols: number): Buffer {
  const size = Buffer.alloc(4);
  size.writeUInt16BE(Math.max(0, Math.min(65535, cols)), 0);
  size.writeUInt16BE(Math.max(0, Math.min(65535, rows)), 2);
  return Buffer.concat([Buffer.from([IAC, SB, NAWS]), escapeIac(size), Buffer.from([IAC, SE])]);
}
