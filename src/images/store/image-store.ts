// The image store: one directory holding content-addressed blobs (ContentStore) and unpacked VM images.
//   content/...                 manifests, configs, NVRAM and other small blobs (content-store.ts)
//   images/<manifest-hex>/      a complete image: manifest.json, config.json, disk.img (sparse),
//                               nvram.bin, kernel, initrd — only ever created by an atomic rename
//   images/.partial-<hex>/      a pull in progress; state.json records finished disk chunks (resume)
//   refs.json                   names (registry/repo:tag) → manifest digest, written atomically
//   in-use/<hex>/<holder>       an image in use by a VM: never collected
//   locks/<hex>                 one pull of an image at a time across processes
// Nothing half-written is ever visible under images/<hex>: a crash leaves a .partial dir to resume.
import { mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ContentStore } from './content-store.ts';
import { vmImageLayout, type VmImageLayout } from '../formats/layout.ts';
import { bootId } from '../../host/facts.ts';
import { validChunks } from './verify.ts';
import type { ImageManifest } from '../oci.ts';

export interface StoredImage {
  /** sha256:<hex> of the manifest. */
  digest: string;
  /** Names pointing at it. */
  names: string[];
  dir: string;
  layout: VmImageLayout;
  manifest: ImageManifest;
  /** Bytes the image takes on disk (allocated blocks, so sparse holes do not count). */
  diskUsage: number;
  usedAt: Date;
  inUse: boolean;
}

export const DISK_FILE = 'disk.img';
export const NVRAM_FILE = 'nvram.bin';
export const CONFIG_FILE = 'config.json';
export const MANIFEST_FILE = 'manifest.json';
export const KERNEL_FILE = 'kernel';
export const INITRD_FILE = 'initrd';

export class ImageStore {
  readonly content: ContentStore;

  /**
   * @param options.directIo pulls into this store write disks with O_DIRECT where they can (default true;
   *   the `directIo` setting)
   */
  constructor(readonly root: string, readonly options: { directIo?: boolean } = {}) {
    this.content = new ContentStore(path.join(root, 'content'));
  }

  async init(): Promise<void> {
    await Promise.all([
      this.content.init(),
      mkdir(path.join(this.root, 'images'), { recursive: true }),
      mkdir(path.join(this.root, 'in-use'), { recursive: true }),
      mkdir(path.join(this.root, 'locks'), { recursive: true }),
    ]);
  }

  imageDir(digest: string): string {
    return path.join(this.root, 'images', hexOf(digest));
  }

  partialDir(digest: string): string {
    return path.join(this.root, 'images', `.partial-${hexOf(digest)}`);
  }

  async has(digest: string): Promise<boolean> {
    return (await stat(path.join(this.imageDir(digest), MANIFEST_FILE)).catch(() => undefined)) !== undefined;
  }

  /** Makes a finished partial dir the image, atomically. */
  async publish(digest: string): Promise<void> {
    const target = this.imageDir(digest);
    if (await this.has(digest)) {
      await rm(this.partialDir(digest), { recursive: true, force: true });
      return;
    }
    await rename(this.partialDir(digest), target);
  }

  async refs(): Promise<Record<string, string>> {
    try {
      return JSON.parse(await readFile(path.join(this.root, 'refs.json'), 'utf8')) as Record<string, string>;
    } catch {
      return {};
    }
  }

  /** Points `name` at `digest` (replacing what it pointed at). */
  async tag(name: string, digest: string): Promise<void> {
    await this.updateRefs((refs) => {
      refs[name] = digest;
    });
  }

  async untag(name: string): Promise<boolean> {
    let found = false;
    await this.updateRefs((refs) => {
      found = name in refs;
      delete refs[name];
    });
    return found;
  }

  /** A name or a digest (or a unique digest prefix) to the manifest digest of a stored image. */
  async resolve(nameOrDigest: string): Promise<string | undefined> {
    const refs = await this.refs();
    if (refs[nameOrDigest]) return refs[nameOrDigest];
    const withLatest = !/[:@]/.test(nameOrDigest.split('/').pop() ?? '') ? `${nameOrDigest}:latest` : undefined;
    const byName = Object.entries(refs).find(([name]) => name === withLatest || name.endsWith(`/${nameOrDigest}`));
    if (byName) return byName[1];
    const hex = nameOrDigest.replace(/^sha256:/, '');
    if (/^[a-f0-9]{6,64}$/.test(hex)) {
      const matches = (await this.digests()).filter((d) => d.slice(7).startsWith(hex));
      if (matches.length === 1) return matches[0];
    }
    return undefined;
  }

  async get(digest: string): Promise<StoredImage | undefined> {
    const dir = this.imageDir(digest);
    let manifest: ImageManifest;
    try {
      manifest = JSON.parse(await readFile(path.join(dir, MANIFEST_FILE), 'utf8')) as ImageManifest;
    } catch {
      return undefined;
    }
    const refs = await this.refs();
    const names = Object.entries(refs).filter(([, d]) => d === digest).map(([n]) => n).sort();
    let diskUsage = 0;
    let usedAt = new Date(0);
    for (const file of await readdir(dir)) {
      const s = await stat(path.join(dir, file));
      diskUsage += s.blocks * 512;
      if (s.atime > usedAt) usedAt = s.atime;
      if (s.mtime > usedAt) usedAt = s.mtime;
    }
    const holders = await readdir(path.join(this.root, 'in-use', hexOf(digest))).catch(() => []);
    return { digest, names, dir, layout: vmImageLayout(manifest, names[0] ?? digest), manifest, diskUsage, usedAt, inUse: holders.length > 0 };
  }

  async list(): Promise<StoredImage[]> {
    const out: StoredImage[] = [];
    for (const digest of await this.digests()) {
      const image = await this.get(digest);
      if (image) out.push(image);
    }
    return out.sort((a, b) => b.usedAt.getTime() - a.usedAt.getTime());
  }

  /**
   * Marks an image as used by `holder` (a VM) so that collection leaves it alone. An image pulled on an
   * earlier boot is verified first: pulls do not fsync, so a crash may have lost some of its data. An
   * image that fails is removed, with an error saying to pull it again.
   */
  async acquire(digest: string, holder: string): Promise<void> {
    await this.verifyAfterReboot(digest);
    const dir = path.join(this.root, 'in-use', hexOf(digest));
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, safeName(holder)), `${process.pid}\n`);
    await touch(path.join(this.imageDir(digest), MANIFEST_FILE));
  }

  private async verifyAfterReboot(digest: string): Promise<void> {
    const dir = this.imageDir(digest);
    const statePath = path.join(dir, 'state.json');
    const state = await readFile(statePath, 'utf8').then((t) => JSON.parse(t) as { bootId?: string }).catch(() => undefined);
    const boot = await bootId();
    if (!state?.bootId || state.bootId === boot) return;
    const image = await this.get(digest);
    if (!image) throw new Error(`image ${digest} is not in the store`);
    const valid = await validChunks(path.join(dir, DISK_FILE), image.layout.chunks);
    const bad = image.layout.chunks.find((c) => !valid.includes(c.index));
    if (bad) {
      await this.remove(digest);
      throw new ImageCorruptError(`image ${image.names[0] ?? digest} lost data in a crash (disk chunk ${bad.digest} does not match); it was removed: pull it again`);
    }
    // Read back after a reboot, the data is on disk: the image counts as written by this boot now.
    await writeFile(statePath, JSON.stringify({ ...state, bootId: boot }));
  }

  async release(digest: string, holder: string): Promise<void> {
    await rm(path.join(this.root, 'in-use', hexOf(digest), safeName(holder)), { force: true });
  }

  /** Removes an image and its names. Refuses one in use. */
  async remove(digest: string): Promise<void> {
    const image = await this.get(digest);
    if (!image) return;
    if (image.inUse) throw new Error(`image ${image.names[0] ?? digest} is in use by a VM`);
    await this.updateRefs((refs) => {
      for (const [name, d] of Object.entries(refs)) if (d === digest) delete refs[name];
    });
    // Rename first so that a crash mid-delete never leaves a half image under its real name.
    const doomed = path.join(this.root, 'images', `.deleting-${hexOf(digest)}-${Date.now()}`);
    await rename(image.dir, doomed);
    await rm(doomed, { recursive: true, force: true });
  }

  /**
   * Frees space down to `budgetBytes` of images, least recently used first, never touching an image in
   * use or named in `keep`. Also clears abandoned deletions. Returns what was removed.
   */
  async prune(budgetBytes: number, keep: string[] = []): Promise<StoredImage[]> {
    for (const entry of await readdir(path.join(this.root, 'images'))) {
      if (entry.startsWith('.deleting-')) await rm(path.join(this.root, 'images', entry), { recursive: true, force: true });
    }
    const images = await this.list();
    let total = images.reduce((n, i) => n + i.diskUsage, 0);
    const removed: StoredImage[] = [];
    for (const image of [...images].sort((a, b) => a.usedAt.getTime() - b.usedAt.getTime())) {
      if (total <= budgetBytes) break;
      if (image.inUse || keep.includes(image.digest)) continue;
      await this.remove(image.digest);
      total -= image.diskUsage;
      removed.push(image);
    }
    return removed;
  }

  /**
   * A finished disk chunk with this uncompressed digest in any complete image: its file and offset. Each
   * image's chunks are read from its manifest once and kept (an image's content never changes); the
   * listing of images is read on every call, so a removed image is never offered.
   */
  async findChunk(uncompressedDigest: string): Promise<{ file: string; offset: number; size: number } | undefined> {
    const digests = await this.digests();
    const present = new Set(digests);
    for (const known of this.chunkIndex.keys()) if (!present.has(known)) this.chunkIndex.delete(known);
    for (const digest of digests) {
      let chunks = this.chunkIndex.get(digest);
      if (!chunks) {
        try {
          const manifest = JSON.parse(await readFile(path.join(this.imageDir(digest), MANIFEST_FILE), 'utf8')) as ImageManifest;
          chunks = new Map(vmImageLayout(manifest, digest).chunks.map((c) => [c.digest, { offset: c.offset, size: c.size }]));
        } catch {
          continue; // not a readable image: skipped, and read again next time
        }
        this.chunkIndex.set(digest, chunks);
      }
      const chunk = chunks.get(uncompressedDigest);
      if (chunk) return { file: path.join(this.imageDir(digest), DISK_FILE), ...chunk };
    }
    return undefined;
  }

  /** Image digest -> its chunks by uncompressed digest (see findChunk). */
  private readonly chunkIndex = new Map<string, Map<string, { offset: number; size: number }>>();

  private async digests(): Promise<string[]> {
    const entries = await readdir(path.join(this.root, 'images')).catch(() => []);
    return entries.filter((e) => /^[a-f0-9]{64}$/.test(e)).map((hex) => `sha256:${hex}`);
  }

  private refsLock: Promise<void> = Promise.resolve();

  private updateRefs(change: (refs: Record<string, string>) => void): Promise<void> {
    const next = this.refsLock.then(async () => {
      const refs = await this.refs();
      change(refs);
      const file = path.join(this.root, 'refs.json');
      const tmp = `${file}.${process.pid}.tmp`;
      await writeFile(tmp, JSON.stringify(refs, null, 2) + '\n');
      await rename(tmp, file);
    });
    this.refsLock = next.catch(() => undefined);
    return next;
  }
}

export class ImageCorruptError extends Error {
  override name = 'ImageCorruptError';
  readonly reason = 'ImageCorrupt';
}

export function hexOf(digest: string): string {
  const m = /^sha256:([a-f0-9]{64})$/.exec(digest);
  if (!m) throw new Error(`"${digest}" is not a sha256 digest`);
  return m[1]!;
}

function safeName(text: string): string {
  return text.replace(/[^A-Za-z0-9._-]/g, '_');
}

async function touch(file: string): Promise<void> {
  const { utimes } = await import('node:fs/promises');
  const now = new Date();
  await utimes(file, now, now).catch(() => undefined);
}
