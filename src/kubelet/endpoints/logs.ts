// /containerLogs/{namespace}/{pod}/{container}: what `kubectl logs` reaches through the API server.
// The query as the kubelet reads it (PodLogOptions): follow, tailLines, sinceSeconds | sinceTime,
// timestamps, limitBytes, previous, stream. The body streams as the log is read; with follow it stays
// open until the client goes away or the container's log ends.
import type { ServerResponse } from 'node:http';
import { KubeletError, type ContainerLogOptions } from '../provider.ts';
import { podOf, type StreamingContext } from './streaming.ts';

/** The query's log options, checked as the API server checks PodLogOptions; a bad value is a 400. */
export function parseLogOptions(q: URLSearchParams, now = new Date()): ContainerLogOptions {
  const bool = (k: string) => {
    const v = q.get(k);
    if (v === null || v === '' || v === 'false' || v === '0') return false;
    if (v === 'true' || v === '1') return true;
    throw new KubeletError(400, 'BadRequest', `${k}: "${v}" is not a boolean`);
  };
  const int = (k: string, min: number) => {
    const v = q.get(k);
    if (v === null || v === '') return undefined;
    if (!/^-?\d+$/.test(v)) throw new KubeletError(400, 'BadRequest', `${k}: "${v}" is not an integer`);
    const n = Number(v);
    if (n < min) throw new KubeletError(400, 'BadRequest', `${k}: must be at least ${min} (got ${n})`);
    return n;
  };
  const opts: ContainerLogOptions = {};
  if (bool('follow')) opts.follow = true;
  if (bool('timestamps')) opts.timestamps = true;
  if (bool('previous')) opts.previous = true;
  const tail = int('tailLines', 0);
  if (tail !== undefined) opts.tailLines = tail;
  const limit = int('limitBytes', 1);
  if (limit !== undefined) opts.limitBytes = limit;
  const sinceSeconds = int('sinceSeconds', 1);
  const sinceTime = q.get('sinceTime');
  if (sinceSeconds !== undefined && sinceTime) throw new KubeletError(400, 'BadRequest', 'at most one of sinceTime or sinceSeconds may be specified');
  if (sinceSeconds !== undefined) opts.sinceTime = new Date(now.getTime() - sinceSeconds * 1000);
  if (sinceTime) {
    const t = new Date(sinceTime);
    if (Number.isNaN(t.getTime())) throw new KubeletError(400, 'BadRequest', `sinceTime: "${sinceTime}" is not an RFC 3339 time`);
    opts.sinceTime = t;
  }
  const stream = q.get('stream');
  if (stream) {
    if (stream !== 'All' && stream !== 'Stdout' && stream !== 'Stderr') throw new KubeletError(400, 'BadRequest', `stream: must be All, Stdout or Stderr (got "${stream}")`);
    if (stream !== 'All' && opts.tailLines !== undefined) throw new KubeletError(400, 'BadRequest', 'tailLines cannot be combined with a stream other than All');
    opts.stream = stream;
  }
  return opts;
}

export async function serveContainerLogs(ctx: StreamingContext, res: ServerResponse): Promise<void> {
  const opts = parseLogOptions(ctx.url.searchParams);
  const pod = podOf(ctx);
  const log = await ctx.provider.logs(pod, ctx.params.container ?? '', opts);
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  if (opts.follow) res.flushHeaders();
  let left = opts.limitBytes ?? Infinity;
  const stop = () => log.destroy();
  res.once('close', stop);
  await new Promise<void>((resolve) => {
    log.on('data', (chunk: Buffer) => {
      const part = chunk.length > left ? chunk.subarray(0, left) : chunk;
      left -= part.length;
      if (!res.write(part)) {
        log.pause();
        res.once('drain', () => log.resume());
      }
      if (left <= 0) log.destroy();
    });
    log.once('close', resolve);
    log.once('end', resolve);
    log.once('error', (err) => {
      ctx.log.warn({ err: err.message }, 'reading a container log failed');
      resolve();
    });
  });
  res.off('close', stop);
  res.end();
}
