// Blob push (distribution-spec "Pushing blobs"): skip a blob the repository has, mount it from another
// repository of the same registry, else upload it in one PUT (monolithic) or in PATCH chunks that
// resume from the registry's own account of what it holds after a failure.
import { Readable } from 'node:stream';
import { repositoryScope } from './auth.ts';
import { headBlob } from './blobs.ts';
import { errorFromNetwork, RegistryError, type ErrorContext } from './errors.ts';
import { MediaType } from './media-types.ts';
import type { ImageRef } from './reference.ts';
import { RetryState } from './retry.ts';
import { header, type CallResponse, type Session } from './session.ts';
import { ChunkReader, type BlobSource } from './sources.ts';

export interface PushBlobOptions {
  /** Repositories of the same registry that may hold the blob already: tried as mount sources first. */
  mountFrom?: string[];
  /** 'auto' (default): one PUT up to chunkSize, PATCH chunks above it. */
  mode?: 'auto' | 'monolithic' | 'chunked';
  /** Chunk size; raised to the registry's OCI-Chunk-Min-Length. Default 32 MiB. */
  chunkSize?: number;
  /** Bytes the registry has confirmed (chunked) or that were sent (monolithic). */
  onProgress?: (bytes: number) => void;
  signal?: AbortSignal;
}

export interface PushBlobResult {
  digest: string;
  size: number;
  outcome: 'exists' | 'mounted' | 'uploaded';
}

export const DEFAULT_CHUNK_SIZE = 32 * 1024 * 1024;

interface Upload {
  /** Where the next request of this upload session goes (every answer may move it). */
  location: URL;
  /** OCI-Chunk-Min-Length: chunks (but the last) must be at least this long. */
  minChunk: number;
}

interface Ctx {
  session: Session;
  ref: ImageRef;
  source: BlobSource;
  context: ErrorContext;
  opts: PushBlobOptions;
}

export async function pushBlob(session: Session, ref: ImageRef, source: BlobSource, opts: PushBlobOptions = {}): Promise<PushBlobResult> {
  const ctx: Ctx = { session, ref, source, opts, context: { operation: 'push', image: ref.toString(), digest: source.digest } };
  const result = (outcome: PushBlobResult['outcome']): PushBlobResult => ({ digest: source.digest, size: source.size, outcome });
  const pushScope = repositoryScope(ref.repository, ['pull', 'push']);
  if (await headBlob(session, ref, source.digest, { scopes: [pushScope], signal: opts.signal })) return result('exists');

  let upload: Upload | undefined;
  const sources = (opts.mountFrom ?? []).filter((r) => r !== ref.repository);
  for (const [i, from] of sources.entries()) {
    const started = await startUpload(ctx, from);
    if (started === 'mounted') {
      session.logger?.debug({ image: ctx.context.image, digest: source.digest, from }, 'blob mounted');
      return result('mounted');
    }
    // 202: the registry would not mount (no such blob there, or no access) and opened an upload instead.
    if (i < sources.length - 1) await cancelUpload(ctx, started);
    else upload = started;
  }

  // A session the registry lost (unknown) or gave up on (invalid: e.g. distribution cancels one whose
  // stored size no longer matches its state after a broken PATCH) is replaced by a fresh one.
  const retry = new RetryState(session.retryPolicy, (e) => e.retryable || e.reason === 'BlobUploadUnknown' || e.reason === 'BlobUploadInvalid');
  for (;;) {
    try {
      const started = upload ?? (await startUpload(ctx));
      if (started === 'mounted') return result('mounted');
      const chunkSize = Math.max(opts.chunkSize ?? DEFAULT_CHUNK_SIZE, started.minChunk, 1);
      const mode = opts.mode ?? 'auto';
      const chunked = mode === 'chunked' || (mode === 'auto' && source.size > chunkSize);
      const done = chunked ? await uploadChunks(ctx, started, chunkSize) : await uploadWhole(ctx, started);
      await done.body.dump();
      const stored = header(done.headers, 'docker-content-digest');
      if (stored && stored !== source.digest) {
        throw new RegistryError({ reason: 'DigestMismatch', detail: `the registry stored the blob as ${stored}`, context: ctx.context });
      }
      return result('uploaded');
    } catch (err) {
      // Whatever state that upload session is in, the next attempt starts a fresh one.
      upload = undefined;
      const e = errorFromNetwork(err, ctx.context, 'upload');
      await retry.failed(e, opts.signal, (delayMs) =>
        session.logger?.warn({ image: ctx.context.image, digest: source.digest, reason: e.reason, delayMs }, `blob upload failed, starting again: ${e.message}`),
      );
    }
  }
}

/** POST …/blobs/uploads/ (with ?mount=&from= to mount): 201 mounted, 202 an upload session. */
async function startUpload(ctx: Ctx, mountFrom?: string): Promise<Upload | 'mounted'> {
  const { ref, source } = ctx;
  const query = mountFrom ? `?mount=${encodeURIComponent(source.digest)}&from=${encodeURIComponent(mountFrom)}` : '';
  const res = await ctx.session.call({
    method: 'POST',
    ref,
    path: `/v2/${ref.repository}/blobs/uploads/${query}`,
    // A mount also needs pull on the repository the blob comes from.
    scopes: [repositoryScope(ref.repository, ['pull', 'push']), ...(mountFrom ? [repositoryScope(mountFrom, ['pull'])] : [])],
    headers: { 'content-length': '0' },
    ok: [201, 202],
    retry: true,
    context: ctx.context,
    signal: ctx.opts.signal,
  });
  await res.body.dump();
  if (res.status === 201) return 'mounted';
  return { location: nextLocation(res, undefined, ctx.context), minChunk: Number(header(res.headers, 'oci-chunk-min-length') ?? 0) || 0 };
}

/** Monolithic: the whole blob in one PUT <location>?digest=. */
async function uploadWhole(ctx: Ctx, upload: Upload): Promise<CallResponse> {
  const { source, opts } = ctx;
  const readers: ChunkReader[] = [];
  try {
    return await ctx.session.call({
      method: 'PUT',
      ref: ctx.ref,
      path: withDigest(upload.location, source.digest),
      scopes: [repositoryScope(ctx.ref.repository, ['pull', 'push'])],
      headers: { 'content-type': MediaType.OctetStream, 'content-length': String(source.size) },
      body: () => {
        const reader = new ChunkReader(source.open(0), 0, source.size, ctx.context);
        readers.push(reader);
        return Readable.from(counting(reader.take(source.size), opts.onProgress), { objectMode: false });
      },
      ok: [201],
      context: ctx.context,
      signal: opts.signal,
    });
  } finally {
    // The source (a file) is closed whether the PUT went through or broke half-way.
    for (const reader of readers) reader.close();
  }
}

/** Chunked: PATCH with Content-Range "<start>-<end>" (inclusive, no "bytes="), then PUT ?digest=. */
async function uploadChunks(ctx: Ctx, upload: Upload, chunkSize: number): Promise<CallResponse> {
  const { session, ref, source, opts, context } = ctx;
  const scopes = [repositoryScope(ref.repository, ['pull', 'push'])];
  const retry = new RetryState(session.retryPolicy, (e) => e.retryable || e.reason === 'RangeInvalid');
  let location = upload.location;
  let offset = 0;
  let reader: ChunkReader | undefined;
  const reopen = (at: number): ChunkReader => {
    reader?.close();
    reader = new ChunkReader(source.open(at), at, source.size, context);
    return reader;
  };
  try {
    while (offset < source.size) {
      const start = offset;
      const n = Math.min(chunkSize, source.size - start);
      try {
        let sent = false;
        const res = await session.call({
          method: 'PATCH',
          ref,
          path: location.href,
          scopes,
          headers: { 'content-type': MediaType.OctetStream, 'content-range': `${start}-${start + n - 1}`, 'content-length': String(n) },
          // A second call (a retry after a 401) must send this chunk again from its first byte.
          body: () => {
            const r = sent || !reader ? reopen(start) : reader;
            sent = true;
            return Readable.from(r.take(n), { objectMode: false });
          },
          ok: [202],
          context,
          signal: opts.signal,
        });
        await res.body.dump();
        location = nextLocation(res, location, context);
        offset = start + n;
        const held = rangeEnd(header(res.headers, 'range'));
        if (held !== undefined && held !== offset) {
          // Trust the registry's count over ours, and continue from there.
          session.logger?.warn({ image: context.image, digest: source.digest, expected: offset, held }, 'registry holds a different amount than sent');
          offset = held;
          reader?.close();
          reader = undefined;
        }
        // A registry that keeps not advancing would loop here for ever: make that a failure.
        if (offset <= start) throw new RegistryError({ reason: 'BadResponse', detail: `the registry holds ${offset} bytes after a chunk at ${start}`, context, retryable: true });
        retry.progressed();
        opts.onProgress?.(offset);
      } catch (err) {
        reader?.close();
        reader = undefined;
        const e = errorFromNetwork(err, context, `upload of bytes ${start}-${start + n - 1}`);
        await retry.failed(e, opts.signal, (delayMs) =>
          session.logger?.warn({ image: context.image, digest: source.digest, offset: start, reason: e.reason, delayMs }, `chunk upload failed, resuming: ${e.message}`),
        );
        ({ location, offset } = await uploadStatus(ctx, location));
      }
    }
  } finally {
    reader?.close();
  }
  return session.call({
    method: 'PUT',
    ref,
    path: withDigest(location, source.digest),
    scopes,
    headers: { 'content-length': '0' },
    ok: [201],
    context,
    signal: opts.signal,
  });
}

/** GET <location>: 204 with Range "0-<last byte held>" tells where to resume. */
async function uploadStatus(ctx: Ctx, location: URL): Promise<{ location: URL; offset: number }> {
  const res = await ctx.session.call({
    method: 'GET',
    ref: ctx.ref,
    path: location.href,
    scopes: [repositoryScope(ctx.ref.repository, ['pull', 'push'])],
    ok: [204],
    retry: true,
    context: ctx.context,
    signal: ctx.opts.signal,
  });
  await res.body.dump();
  return { location: nextLocation(res, location, ctx.context), offset: rangeEnd(header(res.headers, 'range')) ?? 0 };
}

async function cancelUpload(ctx: Ctx, upload: Upload): Promise<void> {
  try {
    const res = await ctx.session.call({
      method: 'DELETE',
      ref: ctx.ref,
      path: upload.location.href,
      scopes: [repositoryScope(ctx.ref.repository, ['pull', 'push'])],
      ok: [204, 404],
      context: ctx.context,
      signal: ctx.opts.signal,
    });
    await res.body.dump();
  } catch (err) {
    // An abandoned upload session expires on the registry's side; not worth failing the push for.
    ctx.session.logger?.debug({ err }, 'could not cancel an upload session');
  }
}

/** The bytes held according to a Range header "0-<end>": end + 1. distribution sends "0-0" for nothing. */
function rangeEnd(range: string | undefined): number | undefined {
  const m = /^(?:bytes=)?0-(\d+)$/.exec(range?.trim() ?? '');
  if (!m) return undefined;
  const end = Number(m[1]);
  return end === 0 ? 0 : end + 1;
}

/** Location of an upload answer, resolved against the URL that answered (it may be relative). */
function nextLocation(res: CallResponse, previous: URL | undefined, context: ErrorContext): URL {
  const location = header(res.headers, 'location');
  if (location) return new URL(location, res.url);
  if (previous) return previous;
  throw new RegistryError({ reason: 'BadResponse', detail: `upload answer ${res.status} without a Location`, context });
}

/** The location with digest=<digest> added to whatever query the registry put there (its upload state). */
function withDigest(location: URL, digest: string): string {
  return `${location.href}${location.search ? '&' : '?'}digest=${encodeURIComponent(digest)}`;
}

async function* counting(chunks: AsyncIterable<Buffer>, onProgress?: (bytes: number) => void): AsyncGenerator<Buffer> {
  let sent = 0;
  for await (const chunk of chunks) {
    yield chunk;
    sent += chunk.length;
    onProgress?.(sent);
  }
}
