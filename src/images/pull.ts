// Pulling a VM image into the store: resolve the reference, read the manifest as a VM image, then fill
// the disk file chunk by chunk — each chunk either copied from an image already in the store that has a
// chunk with the same uncompressed digest, or downloaded (resumed with Range) and verified and
// decompressed on worker threads while the next bytes arrive. Every chunk is checked against its
// uncompressed digest before it counts as done; state.json records finished chunks so that a pull killed
// at any moment resumes where it stopped; the image appears under its digest only once complete.
import { createHash } from 'node:crypto';
import { mkdir, open, readFile, rename, statfs, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { createGunzip, gunzipSync } from 'node:zlib';
import type { Logger } from 'pino';
import { vmImageLayout, type DiskChunk, type VmImageLayout } from './formats/layout.ts';
import type { RegistryClient } from './registry/client.ts';
import { parseImageRef, type ImageRef } from './registry/reference.ts';
import type { ImageManifest, Platform } from './registry/types.ts';
import {
  CONFIG_FILE,
  DISK_FILE,
  hexOf,
  INITRD_FILE,
  KERNEL_FILE,
  MANIFEST_FILE,
  NVRAM_FILE,
  type ImageStore,
  type StoredImage,
} from './store/image-store.ts';
import { BlobDigestMismatch, ChunkWriterPool } from './store/chunk-writer.ts';
import { checkBlobDigest } from './registry/blobs.ts';
import { SparseFile } from './store/sparse-file.ts';
import { validChunks } from './store/verify.ts';
import { bootId } from '../host/facts.ts';
import { withDirLock } from '../host/dir-lock.ts';

export interface PullProgress {
  /** Chunk index in the manifest, or 'image' for totals. */
  layer: number | 'image';
  phase: 'resolved' | 'reused' | 'downloading' | 'done';
  bytes: number;
  total: number;
}

export interface PullOptions {
  store: ImageStore;
  registry: RegistryClient;
  image: string;
  platform?: Platform;
  /** Threads that decode and write disk chunks; default: a pool of defaultWriters() for this pull. */
  writers?: ChunkWriterPool;
  /** Chunks fetched at once (default: one more than the writer threads, so that none waits for a download). */
  concurrency?: number;
  onProgress?: (p: PullProgress) => void;
  signal?: AbortSignal;
  log?: Logger;
  /** Bytes the store may hold; least recently used images are removed first to make room. */
  budgetBytes?: number;
}

export interface PullResult {
  image: StoredImage;
  /** Bytes downloaded for disk chunks, and bytes taken from images already in the store. */
  downloaded: number;
  reused: number;
  alreadyPresent: boolean;
}

/** A pull that fails names the image, the layer and the cause. */
export class PullError extends Error {
  override name = 'PullError';
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

interface PullState {
  /** The host boot that wrote `done`: after a reboot, chunks recorded as done are verified again. */
  bootId?: string;
  done: number[];
  /** Chunks a previous attempt wrote into: rewritten whole (zeros included) on retry. */
  touched: number[];
}

/**
 * Writer threads of a pull: one per core, at least 2 (a pull's decoding and hashing is where its CPU
 * goes) and at most 4 (each thread adds its own memory: the 300 MB bound in BENCHMARKS.md is measured
 * with 2). On this project's 2-core machines that is 2; larger Macs get more, not measurable here.
 */
export function defaultWriters(): number {
  return Math.max(2, Math.min(4, availableParallelism()));
}

// Two pulls of one image in this process share one download.
const inflight = new Map<string, Promise<PullResult>>();

export async function pullImage(opts: PullOptions): Promise<PullResult> {
  const ref = parseImageRef(opts.image);
  const name = ref.toString();
  const resolved = await opts.registry.resolveImage(ref, opts.platform, { signal: opts.signal });
  const digest = resolved.raw.digest;
  const layout = vmImageLayout(resolved.manifest, name);
  if (await opts.store.has(digest)) {
    await opts.store.tag(name, digest);
    return { image: (await opts.store.get(digest))!, downloaded: 0, reused: 0, alreadyPresent: true };
  }
  await makeRoom(opts, layout, digest);
  const key = `${opts.store.root}\0${digest}`;
  let pending = inflight.get(key);
  if (!pending) {
    pending = withDirLock(path.join(opts.store.root, 'locks', hexOf(digest)), () =>
      fillImage(opts, resolved.ref, digest, resolved.raw.bytes, resolved.manifest, layout),
    ).finally(() => inflight.delete(key));
    inflight.set(key, pending);
  }
  const result = await pending;
  await opts.store.tag(name, digest);
  return { ...result, image: (await opts.store.get(digest))! };
}

async function fillImage(opts: PullOptions, ref: ImageRef, digest: string, manifestBytes: Buffer, manifest: ImageManifest, layout: VmImageLayout): Promise<PullResult> {
  const { store, registry, signal } = opts;
  if (await store.has(digest)) return { image: (await store.get(digest))!, downloaded: 0, reused: 0, alreadyPresent: true };
  const name = ref.toString();
  const dir = store.partialDir(digest);
  await mkdir(dir, { recursive: true });
  const statePath = path.join(dir, 'state.json');
  const state: PullState = await readFile(statePath, 'utf8')
    .then((t) => JSON.parse(t) as PullState)
    .catch(() => ({ done: [], touched: [] }));
  // Saves are serialised: concurrent chunk workers must not interleave the write-then-rename.
  let saving = Promise.resolve();
  const boot = await bootId();
  if (state.bootId !== undefined && state.bootId !== boot && state.done.length > 0) {
    // Chunks are not fsynced one by one, so what a crashed boot recorded as done may not be on disk.
    state.done = await validChunks(path.join(dir, DISK_FILE), layout.chunks.filter((c) => state.done.includes(c.index)));
  }
  state.bootId = boot;
  const saveState = () => {
    saving = saving.then(async () => {
      await writeFile(`${statePath}.tmp`, JSON.stringify(state));
      await rename(`${statePath}.tmp`, statePath);
    });
    return saving;
  };
  const total = layout.diskSize;
  const progress = new Map<number, number>();
  const report = (layer: number, phase: PullProgress['phase'], bytes: number, size: number) => {
    progress.set(layer, bytes);
    opts.onProgress?.({ layer, phase, bytes, total: size });
    opts.onProgress?.({ layer: 'image', phase: 'downloading', bytes: [...progress.values()].reduce((a, b) => a + b, 0), total });
  };

  const ownPool = opts.writers ? undefined : new ChunkWriterPool(defaultWriters());
  const writers = opts.writers ?? ownPool!;
  const disk = await SparseFile.open(path.join(dir, DISK_FILE), layout.diskSize);
  let downloaded = 0;
  let reused = 0;
  try {
    // Small parts first: a config or NVRAM that does not match fails the pull before the disk is fetched.
    // Small blobs are kept in the content store too, so that the image can be pushed again as it is.
    await store.content.put(await registry.readBlob(ref, manifest.config, { signal }), manifest.config.digest);
    const configBytes = await registry.readBlob(ref, layout.config, { signal });
    await store.content.put(configBytes, layout.config.digest);
    await writeFile(path.join(dir, CONFIG_FILE), configBytes);
    if (layout.nvram) await fetchNvram(opts, ref, layout.nvram, path.join(dir, NVRAM_FILE));
    for (const [desc, file] of [[layout.kernel, KERNEL_FILE], [layout.initrd, INITRD_FILE]] as const) {
      if (!desc) continue;
      const bytes = await registry.readBlob(ref, desc, { signal, maxBytes: 512 * 1024 * 1024 });
      await store.content.put(bytes, desc.digest);
      await writeFile(path.join(dir, file), bytes);
    }

    const todo = layout.chunks.filter((c) => !state.done.includes(c.index));
    for (const c of layout.chunks) if (state.done.includes(c.index)) report(c.index, 'done', c.size, c.size);
    const queue = [...todo];
    const workers = Array.from({ length: Math.min(opts.concurrency ?? writers.size + 1, queue.length) }, async () => {
      for (let chunk = queue.shift(); chunk; chunk = queue.shift()) {
        signal?.throwIfAborted();
        const sparse = !state.touched.includes(chunk.index);
        if (sparse) {
          state.touched.push(chunk.index);
          await saveState();
        }
        const source = await store.findChunk(chunk.digest);
        if (source) {
          await copyChunk(source, chunk, disk, sparse);
          reused += chunk.size;
          report(chunk.index, 'reused', chunk.size, chunk.size);
        } else {
          await downloadChunk(opts, writers, ref, chunk, path.join(dir, DISK_FILE), disk, sparse, (bytes) => report(chunk.index, 'downloading', bytes, chunk.size));
          downloaded += chunk.descriptor.size;
          report(chunk.index, 'done', chunk.size, chunk.size);
        }
        state.done.push(chunk.index);
        await saveState();
      }
    });
    // No fsync: writing the disk durably would make the pull wait for the disk (BENCHMARKS.md). The
    // image keeps the boot that wrote it in state.json, and ImageStore.acquire re-verifies it before
    // handing it to a VM after a reboot, when unsynced data could have been lost.
    await Promise.all(workers);
  } catch (err) {
    throw asPullError(err, name);
  } finally {
    await disk.close();
    await ownPool?.close();
  }
  // The manifest goes in last: its presence is what makes images/<hex> an image.
  await store.content.put(manifestBytes, digest);
  await writeFile(path.join(dir, MANIFEST_FILE), manifestBytes);
  await store.publish(digest);
  return { image: (await store.get(digest))!, downloaded, reused, alreadyPresent: false };
}

async function downloadChunk(
  opts: PullOptions,
  writers: ChunkWriterPool,
  ref: ImageRef,
  chunk: DiskChunk,
  file: string,
  disk: SparseFile,
  sparse: boolean,
  onBytes: (uncompressed: number) => void,
): Promise<void> {
  if (chunk.encoding === 'apple-lz4') {
    // Hashed, decoded, hashed again and written on a worker thread: both digests are checked there, the
    // compressed one first, and both must pass for the chunk to count. The download's thread only
    // receives and hands on (it was the busiest thread of a pull while it hashed too).
    const compressed = opts.registry.downloadBlob(ref, chunk.descriptor, { signal: opts.signal, verify: false });
    try {
      await writers.write({ file, offset: chunk.offset, sparse, direct: opts.store.options.directIo ?? true, expect: { size: chunk.size, digest: chunk.digest }, blobDigest: chunk.descriptor.digest, source: compressed, onProgress: onBytes });
    } catch (err) {
      if (err instanceof BlobDigestMismatch) checkBlobDigest(ref, chunk.descriptor, err.actual);
      throw err;
    }
    return;
  }
  const compressed = opts.registry.downloadBlob(ref, chunk.descriptor, { signal: opts.signal });
  let position = chunk.offset;
  // Agoda's gzip disk: zlib inflates on libuv's thread pool, so it too runs beside the download.
  const gunzip = createGunzip();
  const hash = createHash('sha256');
  const feeding = (async () => {
    for await (const buf of compressed) if (!gunzip.write(buf)) await new Promise((r) => gunzip.once('drain', r));
    gunzip.end();
  })().catch((err: Error) => gunzip.destroy(err));
  for await (const out of gunzip as AsyncIterable<Buffer>) {
    hash.update(out);
    await disk.write(position, out, sparse);
    position += out.length;
    onBytes(position - chunk.offset);
  }
  await feeding;
  const actual = `sha256:${hash.digest('hex')}`;
  if (position - chunk.offset !== chunk.size || actual !== chunk.digest) {
    throw new PullError('DigestMismatch', `layer ${chunk.descriptor.digest} decompresses to ${position - chunk.offset} bytes with digest ${actual}, but its annotations say ${chunk.size} bytes with ${chunk.digest}`);
  }
}

/**
 * Before a pull that would not fit — in the store's budget, or on its volume — removes least recently
 * used images (never one in use, never the one being pulled) until it does. The disk may need up to its
 * uncompressed size (sparse files take less), plus 128 MiB of slack for the small blobs.
 */
async function makeRoom(opts: PullOptions, layout: VmImageLayout, digest: string): Promise<void> {
  const need = layout.diskSize + 128 * 1024 * 1024;
  const images = await opts.store.list();
  const used = images.reduce((n, i) => n + i.diskUsage, 0);
  let budget = Infinity;
  if (opts.budgetBytes !== undefined) budget = opts.budgetBytes - need;
  const fs = await statfs(opts.store.root).catch(() => undefined);
  if (fs) budget = Math.min(budget, used + fs.bavail * fs.bsize - need);
  if (used <= budget) return;
  const removed = await opts.store.prune(Math.max(0, budget), [digest]);
  if (removed.length) opts.log?.info({ removed: removed.map((i) => i.names[0] ?? i.digest) }, 'removed least recently used images to make room');
}

/** Copies a chunk from another image's disk; its digest is checked again, as that file could have changed. */
async function copyChunk(source: { file: string; offset: number }, chunk: DiskChunk, disk: SparseFile, sparse: boolean): Promise<void> {
  const handle = await open(source.file, 'r');
  const hash = createHash('sha256');
  try {
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (let done = 0; done < chunk.size; ) {
      const want = Math.min(buf.length, chunk.size - done);
      const { bytesRead } = await handle.read(buf, 0, want, source.offset + done);
      if (bytesRead === 0) throw new PullError('ReuseFailed', `reused chunk ${chunk.digest} ended early in ${source.file}`);
      const part = buf.subarray(0, bytesRead);
      hash.update(part);
      await disk.write(chunk.offset + done, part, sparse);
      done += bytesRead;
    }
  } finally {
    await handle.close();
  }
  if (`sha256:${hash.digest('hex')}` !== chunk.digest) throw new PullError('ReuseFailed', `chunk ${chunk.digest} in ${source.file} no longer matches its digest`);
}

async function fetchNvram(opts: PullOptions, ref: ImageRef, nvram: NonNullable<VmImageLayout['nvram']>, file: string): Promise<void> {
  const bytes = await opts.registry.readBlob(ref, nvram.descriptor, { signal: opts.signal, maxBytes: 256 * 1024 * 1024 });
  if (!nvram.gzip) await opts.store.content.put(bytes, nvram.descriptor.digest);
  const plain = nvram.gzip ? gunzipSync(bytes) : bytes;
  const digest = `sha256:${createHash('sha256').update(plain).digest('hex')}`;
  if (plain.length !== nvram.size || digest !== nvram.digest) {
    throw new PullError('DigestMismatch', `NVRAM layer ${nvram.descriptor.digest} holds ${plain.length} bytes with digest ${digest}, expected ${nvram.size} bytes with ${nvram.digest}`);
  }
  await writeFile(file, plain);
}

function asPullError(err: unknown, image: string): Error {
  if (err instanceof PullError) return new PullError(err.reason, `pull ${image}: ${err.message}`);
  const e = err as { reason?: string; message?: string; name?: string };
  const reason = e?.reason ?? (e?.name === 'DecodedMismatchError' ? 'DigestMismatch' : e?.name === 'AbortError' ? 'Aborted' : 'PullFailed');
  const message = String(e?.message ?? err).split('\n')[0]!;
  return new PullError(reason, message.includes(image) ? message : `pull ${image}: ${message}`);
}
