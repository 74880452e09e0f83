// Making and publishing VM images in Tart's format: `importImage` turns a Tart VM directory (config.json,
// disk.img, nvram.bin) or a raw disk plus a config (and NVRAM, or a kernel and initrd for a Linux guest)
// into a stored image; `pushImage` sends a stored image to a registry. Disk chunks are LZ4-framed one at a
// time into the content store's ingest area, so memory stays bounded whatever the disk size.
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { copyFile, mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ANNOTATION, MEDIA, type Descriptor, type ImageManifest } from './oci.ts';
import { AppleLz4Writer } from './lz4/writer.ts';
import type { RegistryClient } from './registry/client.ts';
import { parseImageRef } from './registry/reference.ts';
import { fileSource } from './registry/sources.ts';
import { CONFIG_FILE, DISK_FILE, INITRD_FILE, KERNEL_FILE, MANIFEST_FILE, NVRAM_FILE, type ImageStore, type StoredImage } from './store/image-store.ts';
import { SparseFile } from './store/sparse-file.ts';

/**
 * Uncompressed bytes per disk layer. Tart uses 512 MiB; vmlet defaults to 32 MiB: still valid Tart
 * layers, and a disk that changed in a few places re-pulls only the chunks around the changes (4
 * rewritten regions of 50 MiB touch ~10 chunks: ~8% of a 4 GiB disk instead of ~50% with 512 MiB
 * chunks), at the cost of more blobs (32 per GiB) and requests. See docs/IMAGE-FORMAT.md.
 */
export const DEFAULT_CHUNK_SIZE = 32 * 1024 * 1024;

export interface ImportSource {
  disk: string;
  /** Tart VMConfig JSON (file path or object). */
  config: string | Record<string, unknown>;
  nvram?: string;
  kernel?: string;
  initrd?: string;
}

export interface ImportOptions {
  store: ImageStore;
  name: string;
  source: ImportSource;
  chunkSize?: number;
  onProgress?: (bytes: number, total: number) => void;
}

export class ImportError extends Error {
  override name = 'ImportError';
}

/** A Tart VM directory as an ImportSource (config.json, disk.img, nvram.bin). */
export function tartVmDirectory(dir: string): ImportSource {
  return { disk: path.join(dir, 'disk.img'), config: path.join(dir, 'config.json'), nvram: path.join(dir, 'nvram.bin') };
}

export async function importImage(opts: ImportOptions): Promise<StoredImage> {
  const { store, source } = opts;
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 1024 * 1024) throw new ImportError(`chunk size ${chunkSize} is below 1 MiB`);
  const config = await readConfig(source.config);
  const diskSize = (await stat(source.disk).catch(() => {
    throw new ImportError(`disk ${source.disk} cannot be read`);
  })).size;
  if (diskSize === 0) throw new ImportError(`disk ${source.disk} is empty`);

  const staging = path.join(store.root, 'images', `.import-${process.pid}-${Date.now()}`);
  await mkdir(staging, { recursive: true });
  try {
    const layers: Descriptor[] = [];
    const configBytes = Buffer.from(JSON.stringify(config));
    layers.push({ mediaType: MEDIA.tartConfig, ...(await putBlob(store, configBytes)) });
    const disk = await SparseFile.open(path.join(staging, DISK_FILE), diskSize);
    try {
      for (let offset = 0; offset < diskSize; offset += chunkSize) {
        layers.push(await encodeChunk(store, source.disk, offset, Math.min(chunkSize, diskSize - offset), disk));
        opts.onProgress?.(Math.min(offset + chunkSize, diskSize), diskSize);
      }
      await disk.sync();
    } finally {
      await disk.close();
    }
    for (const [file, media, target] of [
      [source.nvram, MEDIA.tartNvram, NVRAM_FILE],
      [source.kernel, MEDIA.vmletKernel, KERNEL_FILE],
      [source.initrd, MEDIA.vmletInitrd, INITRD_FILE],
    ] as const) {
      if (!file) continue;
      const bytes = await readFile(file).catch(() => {
        throw new ImportError(`${target} ${file} cannot be read`);
      });
      layers.push({ mediaType: media, ...(await putBlob(store, bytes)) });
      await writeFile(path.join(staging, target), bytes);
    }
    // Tart's stub OCI config, "for Docker Hub compatibility": what the image is for, nothing more.
    const ociConfig = Buffer.from(JSON.stringify({ architecture: config.arch, os: config.os }));
    const manifest: ImageManifest = {
      schemaVersion: 2,
      mediaType: MEDIA.ociManifest,
      config: { mediaType: MEDIA.ociConfig, ...(await putBlob(store, ociConfig)) },
      layers,
      annotations: { [ANNOTATION.tartDiskSize]: String(diskSize), [ANNOTATION.tartUploadTime]: new Date().toISOString() },
    };
    const manifestBytes = Buffer.from(JSON.stringify(manifest));
    const digest = await store.content.put(manifestBytes);
    await writeFile(path.join(staging, CONFIG_FILE), configBytes);
    await writeFile(path.join(staging, MANIFEST_FILE), manifestBytes);
    await rm(store.partialDir(digest), { recursive: true, force: true });
    await rename(staging, store.partialDir(digest));
    await store.publish(digest);
    await store.tag(parseImageRef(opts.name).toString(), digest);
    return (await store.get(digest))!;
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/** LZ4-frames one chunk of a disk into the content store, and copies it (sparsely) into `copy` if given. */
async function encodeChunk(store: ImageStore, diskPath: string, offset: number, size: number, copy?: SparseFile): Promise<Descriptor> {
  const input = await open(diskPath, 'r');
  const plainHash = createHash('sha256');
  const writer = await store.content.writer(`import-${diskPath}-${offset}-${size}-${Date.now()}`);
  await writer.restart();
  const lz4 = new AppleLz4Writer();
  try {
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (let done = 0; done < size; ) {
      const { bytesRead } = await input.read(buf, 0, Math.min(buf.length, size - done), offset + done);
      if (bytesRead === 0) throw new ImportError(`disk ${diskPath} ended early at ${offset + done}`);
      const part = buf.subarray(0, bytesRead);
      plainHash.update(part);
      await copy?.write(offset + done, part, true);
      for (const frame of lz4.push(part)) await writer.write(frame);
      done += bytesRead;
    }
    for (const frame of lz4.end()) await writer.write(frame);
    const digest = `sha256:${writer.hashState().digest('hex')}`;
    const compressedSize = writer.offset;
    if (await store.content.has(digest)) await writer.abandon();
    else await writer.commit(compressedSize, digest);
    return {
      mediaType: MEDIA.tartDisk,
      digest,
      size: compressedSize,
      annotations: {
        [ANNOTATION.tartUncompressedSize]: String(size),
        [ANNOTATION.tartUncompressedDigest]: `sha256:${plainHash.digest('hex')}`,
      },
    };
  } catch (err) {
    await writer.abandon();
    throw err;
  } finally {
    await input.close();
  }
}

async function putBlob(store: ImageStore, bytes: Buffer): Promise<{ digest: string; size: number }> {
  return { digest: await store.content.put(bytes), size: bytes.length };
}

async function readConfig(config: ImportSource['config']): Promise<Record<string, unknown>> {
  let parsed: unknown = config;
  if (typeof config === 'string') {
    const text = await readFile(config, 'utf8').catch(() => {
      throw new ImportError(`VM config ${config} cannot be read`);
    });
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new ImportError(`VM config ${config} is not JSON`);
    }
  }
  const c = parsed as Record<string, unknown>;
  if (typeof c !== 'object' || c === null) throw new ImportError('VM config must be a JSON object');
  for (const key of ['os', 'arch', 'cpuCount', 'memorySize']) {
    if (c[key] === undefined) throw new ImportError(`VM config lacks "${key}" (Tart's VMConfig: version, os, arch, cpuCountMin, cpuCount, memorySizeMin, memorySize, macAddress, display)`);
  }
  if (c.os === 'darwin' && (!c.hardwareModel || !c.ecid)) throw new ImportError('a macOS VM config needs "hardwareModel" and "ecid"');
  return c;
}

export interface PushOptions {
  store: ImageStore;
  registry: RegistryClient;
  /** Local name or digest of the image. */
  image: string;
  /** Where to push: registry/repository:tag. */
  target: string;
  extraTags?: string[];
  onProgress?: (bytes: number, total: number) => void;
  signal?: AbortSignal;
}

/**
 * Pushes a stored image. Blobs the content store holds are sent as they are; disk chunks of a pulled
 * image (whose compressed layers were not kept) are framed again first. Blobs the registry has are
 * skipped (HEAD), and blobs of another repository of the same registry are mounted.
 */
export async function pushImage(opts: PushOptions): Promise<{ digest: string; uploaded: number; skipped: number }> {
  const { store, registry } = opts;
  const digest = await store.resolve(opts.image);
  const image = digest ? await store.get(digest) : undefined;
  if (!image) throw new ImportError(`image ${opts.image} is not in the store`);
  const target = parseImageRef(opts.target);
  const total = image.manifest.layers.reduce((n, l) => n + l.size, 0) + image.manifest.config.size;
  let sent = 0;
  let uploaded = 0;
  let skipped = 0;
  const layers: Descriptor[] = [];
  for (const layer of [image.manifest.config, ...image.manifest.layers]) {
    let descriptor = layer;
    if (!(await store.content.has(layer.digest))) {
      const chunk = image.layout.chunks.find((c) => c.descriptor.digest === layer.digest);
      if (!chunk) throw new ImportError(`blob ${layer.digest} of ${opts.image} is missing from the store`);
      descriptor = await encodeChunk(store, path.join(image.dir, DISK_FILE), chunk.offset, chunk.size);
      if (descriptor.annotations?.[ANNOTATION.tartUncompressedDigest] !== chunk.digest) {
        throw new ImportError(`disk of ${opts.image} no longer matches chunk ${chunk.digest}: the image is corrupt`);
      }
    }
    const result = await registry.pushBlob(target, fileSource(store.content.path(descriptor.digest), descriptor.digest, descriptor.size), { signal: opts.signal });
    if (result.outcome === 'uploaded') uploaded += descriptor.size;
    else skipped += descriptor.size;
    sent += descriptor.size;
    opts.onProgress?.(sent, total);
    if (layer !== image.manifest.config) layers.push(descriptor);
  }
  const manifest: ImageManifest = { ...image.manifest, layers };
  const bytes = Buffer.from(JSON.stringify(manifest));
  const pushed = await registry.putManifest(target, bytes, MEDIA.ociManifest, opts.extraTags ?? [], { signal: opts.signal });
  return { digest: pushed.digest, uploaded, skipped };
}

/** Writes a stored image out as a Tart VM directory (config.json, disk.img, nvram.bin). */
export async function exportImage(store: ImageStore, image: string, dir: string): Promise<void> {
  const digest = await store.resolve(image);
  const stored = digest ? await store.get(digest) : undefined;
  if (!stored) throw new ImportError(`image ${image} is not in the store`);
  await mkdir(dir, { recursive: true });
  for (const file of [CONFIG_FILE, DISK_FILE, NVRAM_FILE, KERNEL_FILE, INITRD_FILE]) {
    // FICLONE where the filesystem can (btrfs, xfs, APFS), a plain copy elsewhere.
    await copyFile(path.join(stored.dir, file), path.join(dir, file), constants.COPYFILE_FICLONE).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
}

