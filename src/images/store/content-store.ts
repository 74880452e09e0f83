// Content-addressed blobs with containerd's commit rule: a blob is written through a Writer named by a
// ref, is invisible until `commit(size, digest)` has verified it, and is then found only by its digest.
// An unfinished write survives a crash or kill -9 and is resumed by its ref; nothing half-written is
// ever returned by `path()`/`read()`. Layout under `root`:
//   blobs/sha256/<hex>        committed content (read-only by convention)
//   ingest/<ref-hash>/data    bytes written so far for one ref
//   ingest/<ref-hash>/ref     the ref, for status listings
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readFile, readdir, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';

export const DIGEST = /^sha256:[a-f0-9]{64}$/;

export class ContentError extends Error {
  override name = 'ContentError';
  constructor(
    readonly reason: 'DigestMismatch' | 'SizeMismatch' | 'InvalidDigest' | 'NotFound',
    message: string,
  ) {
    super(message);
  }
}

export interface BlobInfo {
  digest: string;
  size: number;
  /** Last access (reads touch it), for least-recently-used collection. */
  usedAt: Date;
}

export interface IngestStatus {
  ref: string;
  offset: number;
}

export class ContentStore {
  constructor(readonly root: string) {}

  async init(): Promise<void> {
    await mkdir(path.join(this.root, 'blobs', 'sha256'), { recursive: true });
    await mkdir(path.join(this.root, 'ingest'), { recursive: true });
  }

  /** Where a committed blob lives (whether or not it exists). */
  path(digest: string): string {
    assertDigest(digest);
    return path.join(this.root, 'blobs', 'sha256', digest.slice(7));
  }

  async info(digest: string): Promise<BlobInfo | undefined> {
    try {
      const s = await stat(this.path(digest));
      return { digest, size: s.size, usedAt: s.atime > s.mtime ? s.atime : s.mtime };
    } catch {
      return undefined;
    }
  }

  async has(digest: string): Promise<boolean> {
    return (await this.info(digest)) !== undefined;
  }

  /** A committed blob, whole (for manifests and configs, which are small). */
  async read(digest: string): Promise<Buffer> {
    try {
      return await readFile(this.path(digest));
    } catch {
      throw new ContentError('NotFound', `blob ${digest} is not in the store`);
    }
  }

  /** Writes a small blob in one go; returns its digest. */
  async put(data: Buffer, expectedDigest?: string): Promise<string> {
    const digest = expectedDigest ?? `sha256:${createHash('sha256').update(data).digest('hex')}`;
    if (await this.has(digest)) return digest;
    const w = await this.writer(`put-${digest}`);
    await w.restart();
    await w.write(data);
    await w.commit(data.length, digest);
    return digest;
  }

  createReadStream(digest: string) {
    return createReadStream(this.path(digest));
  }

  /**
   * Opens (or resumes) the write of `ref`. The writer starts at the bytes already written under that ref,
   * with its hash fed with them, so a download can continue where a killed process left off.
   */
  async writer(ref: string): Promise<ContentWriter> {
    const dir = path.join(this.root, 'ingest', refKey(ref));
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'ref'), ref);
    const data = path.join(dir, 'data');
    const handle = await open(data, 'a+');
    const hash = createHash('sha256');
    let offset = 0;
    // Re-hash what is there: a hash state cannot be saved across processes.
    for await (const chunk of createReadStream(data)) {
      hash.update(chunk as Buffer);
      offset += (chunk as Buffer).length;
    }
    return new ContentWriter(this, dir, handle, hash, offset);
  }

  /** In-flight writes, with how far each got. */
  async ingests(): Promise<IngestStatus[]> {
    const dir = path.join(this.root, 'ingest');
    const out: IngestStatus[] = [];
    for (const key of await readdir(dir).catch(() => [])) {
      const ref = await readFile(path.join(dir, key, 'ref'), 'utf8').catch(() => undefined);
      const size = (await stat(path.join(dir, key, 'data')).catch(() => undefined))?.size;
      if (ref !== undefined && size !== undefined) out.push({ ref, offset: size });
    }
    return out;
  }

  async abort(ref: string): Promise<void> {
    await rm(path.join(this.root, 'ingest', refKey(ref)), { recursive: true, force: true });
  }

  async delete(digest: string): Promise<void> {
    await rm(this.path(digest), { force: true });
  }

  async list(): Promise<BlobInfo[]> {
    const dir = path.join(this.root, 'blobs', 'sha256');
    const out: BlobInfo[] = [];
    for (const hex of await readdir(dir).catch(() => [])) {
      if (!/^[a-f0-9]{64}$/.test(hex)) continue;
      const info = await this.info(`sha256:${hex}`);
      if (info) out.push(info);
    }
    return out;
  }
}

/** One in-flight write. Append with `write`; nothing is visible until `commit` verifies it. */
export class ContentWriter {
  private closed = false;

  constructor(
    private readonly store: ContentStore,
    private readonly dir: string,
    private handle: FileHandle,
    private hash: Hash,
    private written: number,
  ) {}

  /** Bytes written so far (including those of an earlier, interrupted process). */
  get offset(): number {
    return this.written;
  }

  /** A copy of the hash state over the bytes written so far, to continue a verified download. */
  hashState(): Hash {
    return this.hash.copy();
  }

  /** Throws away what was written and starts again at 0. */
  async restart(): Promise<void> {
    await this.handle.truncate(0);
    this.hash = createHash('sha256');
    this.written = 0;
  }

  async write(chunk: Buffer): Promise<void> {
    await this.handle.write(chunk);
    this.hash.update(chunk);
    this.written += chunk.length;
  }

  /**
   * Verifies size and digest, makes the data durable, and moves it into place atomically. On a
   * mismatch the ingest is discarded (its bytes are wrong, resuming them would only fail again).
   */
  async commit(size: number, digest: string): Promise<void> {
    assertDigest(digest);
    const actual = `sha256:${this.hash.copy().digest('hex')}`;
    if (this.written !== size || actual !== digest) {
      await this.abandon();
      const reason = this.written !== size ? 'SizeMismatch' : 'DigestMismatch';
      throw new ContentError(reason, `content for ${digest} is ${this.written} bytes with digest ${actual}, expected ${size} bytes`);
    }
    await this.handle.sync();
    await this.close();
    const target = this.store.path(digest);
    await rename(path.join(this.dir, 'data'), target);
    await rm(this.dir, { recursive: true, force: true });
  }

  /** Closes the file, keeping what was written for a later resume. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }

  /** Closes and deletes the in-flight data. */
  async abandon(): Promise<void> {
    await this.close();
    await rm(this.dir, { recursive: true, force: true });
  }
}

function refKey(ref: string): string {
  return createHash('sha256').update(ref).digest('hex').slice(0, 32);
}

function assertDigest(digest: string): void {
  if (!DIGEST.test(digest)) throw new ContentError('InvalidDigest', `"${digest}" is not a sha256 digest`);
}
