// The resize channel's content: a sequence of JSON objects {"Width":W,"Height":H} (client-go's
// TerminalSize), one per change, with no separator, split across frames anywhere. Pure.
import type { TerminalSize } from './remote-command.ts';

const MAX_PENDING = 4096;

export class ResizeParser {
  private pending = '';

  constructor(private readonly onSize: (size: TerminalSize) => void) {}

  push(chunk: Buffer | string): void {
    this.pending += chunk.toString();
    for (;;) {
      const start = this.pending.indexOf('{');
      if (start < 0) {
        this.pending = '';
        return;
      }
      const end = this.pending.indexOf('}', start);
      if (end < 0) {
        // Nothing sane is that long: drop it rather than buffer without bound.
        this.pending = this.pending.length - start > MAX_PENDING ? '' : this.pending.slice(start);
        return;
      }
      const text = this.pending.slice(start, end + 1);
      this.pending = this.pending.slice(end + 1);
      const size = parseSize(text);
      if (size) this.onSize(size);
    }
  }
}

function parseSize(text: string): TerminalSize | undefined {
  try {
    const v = JSON.parse(text) as { Width?: unknown; Height?: unknown };
    const cols = Number(v.Width);
    const rows = Number(v.Height);
    if (!Number.isInteger(cols) || !Number.isInteger(rows) || cols <= 0 || rows <= 0 || cols > 65535 || rows > 65535) return undefined;
    return { rows, cols };
  } catch {
    return undefined;
  }
}
