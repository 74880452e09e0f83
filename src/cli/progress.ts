// Progress for long work in a terminal: cli-progress bars (one per layer plus a total, with bytes, rate
// and ETA) on a TTY, and a plain line every few seconds otherwise (CI logs, pipes).
import cliProgress from 'cli-progress';

export interface Progress {
  update(key: string, bytes: number, total: number): void;
  stop(): void;
}

const MiB = 1024 * 1024;

export function createProgress(stream: NodeJS.WriteStream = process.stderr): Progress {
  if (stream.isTTY) return new BarProgress(stream);
  return new LineProgress(stream);
}

class BarProgress implements Progress {
  private readonly multi: cliProgress.MultiBar;
  private readonly bars = new Map<string, cliProgress.SingleBar>();

  constructor(stream: NodeJS.WriteStream) {
    this.multi = new cliProgress.MultiBar(
      {
        stream,
        clearOnComplete: false,
        hideCursor: true,
        format: '{key} |{bar}| {percentage}% {done}/{size} MiB {rate} MiB/s ETA {eta_formatted}',
        autopadding: true,
      },
      cliProgress.Presets.shades_classic,
    );
  }

  update(key: string, bytes: number, total: number): void {
    let bar = this.bars.get(key);
    if (!bar) {
      bar = this.multi.create(total, 0, { key: key.padEnd(12), done: '0', size: (total / MiB).toFixed(0), rate: '0' });
      bar.start(total, 0);
      this.bars.set(key, bar);
    }
    const elapsed = (Date.now() - ((bar as unknown as { startTime: number }).startTime ?? Date.now())) / 1000;
    bar.setTotal(total);
    bar.update(bytes, {
      key: key.padEnd(12),
      done: (bytes / MiB).toFixed(0),
      size: (total / MiB).toFixed(0),
      rate: elapsed > 0 ? (bytes / MiB / elapsed).toFixed(1) : '0',
    });
  }

  stop(): void {
    this.multi.stop();
  }
}

class LineProgress implements Progress {
  private last = 0;
  private readonly started = Date.now();

  constructor(private readonly stream: NodeJS.WriteStream) {}

  update(key: string, bytes: number, total: number): void {
    if (key !== 'total') return;
    const now = Date.now();
    if (now - this.last < 5000 && bytes < total) return;
    this.last = now;
    const seconds = (now - this.started) / 1000;
    const rate = seconds > 0 ? bytes / MiB / seconds : 0;
    const pct = total > 0 ? ((100 * bytes) / total).toFixed(0) : '100';
    this.stream.write(`${pct}% ${(bytes / MiB).toFixed(0)}/${(total / MiB).toFixed(0)} MiB, ${rate.toFixed(1)} MiB/s\n`);
  }

  stop(): void {}
}
