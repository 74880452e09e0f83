// Blob reads: HEAD (exists? how big?), and a verified, resumable download. The download yields chunks
// as they arrive and checks size and digest at the end: it returns normally only when every byte it
// yielded is proven, so a store commits the file after the loop and never before.
import type { Hash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { repositoryScope } from './auth.ts';
import { hashFor, parseDigest } from './digest.ts';
import { errorFromNetwork, RegistryError, type ErrorContext } from './errors.ts';
import type { ImageRef } from './reference.ts';
import { RetryState } from './retry.ts';
import { discard, header, type CallResponse, type Session } from './session.ts';

export interface BlobInfo {
  digest: string;
  size: number;
}

export interface DownloadOptions {
  /**
   * Resume a download the caller kept (e.g. across a restart): bytes [0, offset) are already on its
   * side, and `hash` has been fed exactly those bytes.
   */
  offset?: number;
  hash?: Hash;
  /**
   * Check the digest here (default true). False: the caller hashes every byte yielded itself (the chunk
   * writers do, on their own thread, so the download's thread does not) and must check the result with
   * checkBlobDigest before it trusts them; the size, retries and resuming are still done here.
   */
  verify?: boolean;
  /** Called with the number of bytes received so far (offset included) after each chunk. */
  onProgress?: (bytes: number) => void;
  signal?: AbortSignal;
  /** Scopes to ask for; default pull on the reference's repository. */
  scopes?: string[];
}

/** The blob's size, or undefined when the repository does not have it. */
export async function headBlob(session: Session, ref: ImageRef, digest: string, opts: { signal?: AbortSignal; scopes?: string[] } = {}): Promise<BlobInfo | undefined> {
  const res = await session.call({
    method: 'HEAD',
    ref,
    path: `/v2/${ref.repository}/blobs/${digest}`,
    scopes: opts.scopes ?? [repositoryScope(ref.repository, ['pull'])],
    ok: [200, 404],
    followRedirects: true,
    retry: true,
    context: { operation: 'check', image: ref.toString(), digest },
    signal: opts.signal,
  });
  await res.body.dump();
  if (res.status === 404) return undefined;
  return { digest, size: Number(header(res.headers, 'content-length') ?? NaN) };
}

/**
 * Streams a blob: redirects followed (without credentials to other origins), transient failures and
 * stalls retried, a broken transfer resumed with Range from the last byte received. Throws
 * DigestMismatch / SizeMismatch after the last chunk when the content is not the descriptor's.
 */
export async function* downloadBlob(session: Session, ref: ImageRef, blob: BlobInfo, opts: DownloadOptions = {}): AsyncGenerator<Buffer, void, undefined> {
  const context: ErrorContext = { operation: 'pull', image: ref.toString(), digest: blob.digest };
  const fail = (reason: 'SizeMismatch' | 'BadResponse' | 'Unsupported', detail: string, retryable = false): RegistryError =>
    new RegistryError({ reason, detail, context, retryable });
  const algorithm = parseDigest(blob.digest)?.algorithm;
  if (!algorithm) throw fail('Unsupported', `cannot verify digest ${blob.digest}`);
  let offset = opts.offset ?? 0;
  const verify = opts.verify ?? true;
  if (offset > 0 && verify && !opts.hash) throw new TypeError('downloadBlob: resuming at an offset needs the hash of the bytes before it');
  if (offset > blob.size) throw fail('SizeMismatch', `resume offset ${offset} is past the blob's size ${blob.size}`);
  const hash = verify ? (opts.hash ?? hashFor(blob.digest)) : undefined;
  const retry = new RetryState(session.retryPolicy);
  const stallMs = session.transport.stallTimeoutMs;
  while (offset < blob.size) {
    try {
      const res = await session.call({
        method: 'GET',
        ref,
        path: `/v2/${ref.repository}/blobs/${blob.digest}`,
        scopes: opts.scopes ?? [repositoryScope(ref.repository, ['pull'])],
        headers: offset > 0 ? { range: `bytes=${offset}-` } : {},
        ok: [200, 206],
        followRedirects: true,
        // This loop retries, resuming from the last byte; the session must not restart from zero.
        retry: false,
        context,
        signal: opts.signal,
        // The watchdog below times only the waits for the network, not the time the consumer takes.
        bodyTimeoutMs: 0,
      });
      let skip: number;
      try {
        skip = startOffset(res, offset, blob.size, fail);
      } catch (err) {
        discard(res.body);
        throw err;
      }
      if (res.status === 200 && offset > 0) session.logger?.info({ image: context.image, digest: blob.digest, offset }, 'registry ignored Range; skipping bytes already held');
      for await (const chunk of watched(res.body, stallMs, () => `no data for ${stallMs} ms after ${offset} of ${blob.size} bytes`, context)) {
        let piece = chunk;
        if (skip > 0) {
          if (piece.length <= skip) {
            skip -= piece.length;
            continue;
          }
          piece = piece.subarray(skip);
          skip = 0;
        }
        if (offset + piece.length > blob.size) throw fail('SizeMismatch', `the registry sent more than the descriptor's ${blob.size} bytes`);
        hash?.update(piece);
        offset += piece.length;
        retry.progressed();
        opts.onProgress?.(offset);
        yield piece;
      }
      if (offset < blob.size) throw fail('BadResponse', `the response ended after ${offset} of ${blob.size} bytes`, true);
    } catch (err) {
      const e = errorFromNetwork(err, context, `download after ${offset} of ${blob.size} bytes`);
      await retry.failed(e, opts.signal, (delayMs) =>
        session.logger?.warn({ image: context.image, digest: blob.digest, offset, reason: e.reason, delayMs }, `blob download interrupted, resuming: ${e.message}`),
      );
    }
  }
  if (hash) checkBlobDigest(ref, blob, `${algorithm}:${hash.digest('hex')}`);
}

/** Throws DigestMismatch, naming image and blob, when `got` (all of the blob's bytes hashed) is not its digest. */
export function checkBlobDigest(ref: ImageRef, blob: BlobInfo, got: string): void {
  if (got === blob.digest) return;
  throw new RegistryError({
    reason: 'DigestMismatch',
    detail: `content has digest ${got} (${blob.size} bytes received)`,
    context: { operation: 'pull', image: ref.toString(), digest: blob.digest },
  });
}

/**
 * Where the response starts relative to what we hold: 206 must start at (or before) our offset; a 200
 * means the server ignored Range and sends everything again. Either way its total must be the blob's size.
 */
function startOffset(
  res: CallResponse,
  offset: number,
  size: number,
  fail: (reason: 'SizeMismatch' | 'BadResponse', detail: string, retryable?: boolean) => RegistryError,
): number {
  if (res.status === 206) {
    const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header(res.headers, 'content-range') ?? '');
    if (!range) throw fail('BadResponse', `206 without a usable Content-Range (${header(res.headers, 'content-range') ?? 'none'})`);
    const start = Number(range[1]);
    if (range[3] !== '*' && Number(range[3]) !== size) {
      throw fail('SizeMismatch', `the registry has ${range[3]} bytes, the descriptor says ${size}`);
    }
    if (start > offset) throw fail('BadResponse', `asked for bytes from ${offset}, got a range starting at ${start}`);
    return offset - start;
  }
  const length = header(res.headers, 'content-length');
  if (length !== undefined && Number(length) !== size) {
    throw fail('SizeMismatch', `the registry has ${length} bytes, the descriptor says ${size}`);
  }
  return offset;
}

/** A body's chunks, failing with Stalled when the network gives nothing for stallMs. */
async function* watched(body: Readable, stallMs: number, what: () => string, context: ErrorContext): AsyncGenerator<Buffer> {
  const it = (body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  try {
    for (;;) {
      let timer: NodeJS.Timeout | undefined;
      const stalled = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new RegistryError({ reason: 'Stalled', detail: what(), context, retryable: true })), stallMs);
      });
      let next: IteratorResult<Buffer>;
      try {
        next = await Promise.race([it.next(), stalled]);
      } finally {
        clearTimeout(timer);
      }
      if (next.done) return;
      yield next.value;
    }
  } finally {
    // Also on a stall or an early return by the consumer: free the connection.
    discard(body);
  }
}

/** A whole (small) blob in memory, verified: configs and the like. */
export async function readBlob(session: Session, ref: ImageRef, blob: BlobInfo, opts: { maxBytes: number; signal?: AbortSignal }): Promise<Buffer> {
  if (blob.size > opts.maxBytes) {
    throw new RegistryError({
      reason: 'SizeMismatch',
      detail: `blob of ${blob.size} bytes is over the ${opts.maxBytes}-byte limit for reading into memory`,
      context: { operation: 'pull', image: ref.toString(), digest: blob.digest },
    });
  }
  const chunks: Buffer[] = [];
  for await (const chunk of downloadBlob(session, ref, blob, { signal: opts.signal })) chunks.push(chunk);
  return Buffer.concat(chunks);
}
