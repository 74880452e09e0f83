// Logs of a pod whose container has no command (the VM itself is the container): the guest's serial
// console, which the driver captures to a file. Lines carry no times, so sinceTime and timestamps do not
// apply; tailLines, limitBytes and follow do.
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { PassThrough, type Readable } from 'node:stream';
import type { ContainerLogOptions } from '../../kubelet/provider.ts';

const FOLLOW_POLL_MS = 250;

/** Byte offset where the last `lines` lines of `buf` start. */
export function tailOffset(buf: Buffer, lines: number): number {
  if (lines <= 0) return buf.length;
  let end = buf.length;
  if (end > 0 && buf[end - 1] === 0x0a) end--; // a final newline ends the last line, it does not start one
  let seen = 0;
  for (let i = end - 1; i >= 0; i--) {
    if (buf[i] === 0x0a && ++seen === lines) return i + 1;
  }
  return 0;
}

export async function consoleLog(file: string, opts: ContainerLogOptions): Promise<Readable> {
  const out = new PassThrough();
  let limit = opts.limitBytes ?? Infinity;
  const size = (await stat(file).catch(() => undefined))?.size ?? 0;
  let start = 0;
  if (opts.tailLines !== undefined) {
    // The tail is found in the last 1 MiB at most: a console log can be large, a tail is small.
    const from = Math.max(0, size - 1024 * 1024);
    const fh = await open(file, 'r');
    try {
      const buf = Buffer.alloc(size - from);
      await fh.read(buf, 0, buf.length, from);
      start = from + tailOffset(buf, opts.tailLines);
    } finally {
      await fh.close();
    }
  }
  let pos = start;
  const push = (chunk: Buffer): boolean => {
    const part = chunk.length > limit ? chunk.subarray(0, limit) : chunk;
    limit -= part.length;
    pos += chunk.length;
    out.write(part);
    if (limit <= 0) {
      out.end();
      return false;
    }
    return true;
  };
  const copy = async (): Promise<boolean> => {
    const now = (await stat(file).catch(() => undefined))?.size ?? 0;
    if (now < pos) pos = 0; // the file was truncated: start over
    if (now === pos) return true;
    for await (const chunk of createReadStream(file, { start: pos, end: now - 1 })) {
      if (out.destroyed || !push(chunk as Buffer)) return false;
    }
    return true;
  };
  void (async () => {
    try {
      if (!(await copy())) return;
      if (!opts.follow) return void out.end();
      while (!out.destroyed && !out.writableEnded) {
        await new Promise((r) => setTimeout(r, FOLLOW_POLL_MS));
        if (!(await copy())) return;
      }
    } catch (err) {
      out.destroy(err as Error);
    }
  })();
  return out;
}
