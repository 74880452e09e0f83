// Reads an image manifest as a VM image: which format it is (Tart, Agoda, vmlet's Linux variant of
// Tart), where each disk chunk goes in the disk file, and what else the VM needs. Pure and strict: a
// manifest that is not a VM image, or whose annotations do not add up, is refused with a reason before a
// single byte of disk is downloaded.
import { ANNOTATION, MEDIA, type Descriptor, type ImageManifest } from '../oci.ts';

export type VmImageFormat = 'tart' | 'agoda';
export type DiskEncoding = 'apple-lz4' | 'gzip';

export interface DiskChunk {
  /** Position of the layer in the manifest. */
  index: number;
  descriptor: Descriptor;
  encoding: DiskEncoding;
  /** Where the chunk's uncompressed bytes start in the disk file. */
  offset: number;
  size: number;
  /** sha256 of the uncompressed bytes. */
  digest: string;
}

export interface VmImageLayout {
  format: VmImageFormat;
  /** The VM configuration blob (Tart's VMConfig JSON, or Agoda's config.json). */
  config: Descriptor;
  chunks: DiskChunk[];
  diskSize: number;
  /** Tart's NVRAM, or Agoda's aux image (gzip, with its own uncompressed size and digest). */
  nvram?: { descriptor: Descriptor; gzip: boolean; size: number; digest: string };
  kernel?: Descriptor;
  initrd?: Descriptor;
}

export class ImageFormatError extends Error {
  override name = 'ImageFormatError';
  readonly reason = 'UnsupportedImage';
}

const DIGEST = /^sha256:[a-f0-9]{64}$/;

/** Classifies and validates a manifest as a VM image. `image` names it in errors. */
export function vmImageLayout(manifest: ImageManifest, image: string): VmImageLayout {
  if (!Array.isArray(manifest.layers) || manifest.layers.length === 0) {
    throw new ImageFormatError(`${image} has no layers: it is not a VM image`);
  }
  const types = new Set(manifest.layers.map((l) => l.mediaType));
  if (manifest.artifactType === MEDIA.agodaArtifact || types.has(MEDIA.agodaDisk)) return agodaLayout(manifest, image);
  if (types.has(MEDIA.tartConfig)) return tartLayout(manifest, image);
  if (types.has(MEDIA.tartDiskV1)) {
    throw new ImageFormatError(`${image} uses Tart's legacy disk.v1 layers, which Tart itself no longer pulls: push it again with a current Tart or vmlet`);
  }
  const known = [...types].slice(0, 3).join(', ');
  // The usual case: a container image (docker build/push), which needs a container runtime, not a VM.
  const container = [...types].every((t) => /^application\/vnd\.(oci\.image\.layer\.|docker\.image\.rootfs\.)/.test(t));
  const hint = container ? ': it is a container image, and vmlet runs VM images only (build one with `vmlet image import` or Tart, or run this image on a node with a container runtime)' : '';
  throw new ImageFormatError(`${image} is not a VM image (layer media types: ${known}); expected Tart (${MEDIA.tartConfig}) or Agoda (${MEDIA.agodaArtifact}) layers${hint}`);
}

function tartLayout(manifest: ImageManifest, image: string): VmImageLayout {
  const layers = manifest.layers;
  const configs = layers.filter((l) => l.mediaType === MEDIA.tartConfig);
  if (configs.length !== 1) throw new ImageFormatError(`${image} has ${configs.length} Tart config layers; exactly one is required`);
  const nvrams = layers.filter((l) => l.mediaType === MEDIA.tartNvram);
  if (nvrams.length > 1) throw new ImageFormatError(`${image} has ${nvrams.length} NVRAM layers; at most one is allowed`);
  const known = new Set<string>([MEDIA.tartConfig, MEDIA.tartDisk, MEDIA.tartNvram, MEDIA.vmletKernel, MEDIA.vmletInitrd]);
  const unknown = layers.find((l) => !known.has(l.mediaType));
  if (unknown) throw new ImageFormatError(`${image}: layer ${unknown.digest} has unknown media type ${unknown.mediaType}`);

  let offset = 0;
  const chunks: DiskChunk[] = [];
  layers.forEach((layer, index) => {
    if (layer.mediaType !== MEDIA.tartDisk) return;
    checkDescriptor(layer, image);
    const size = annotatedSize(layer, ANNOTATION.tartUncompressedSize, image);
    const digest = layer.annotations?.[ANNOTATION.tartUncompressedDigest];
    if (!digest || !DIGEST.test(digest)) {
      throw new ImageFormatError(`${image}: disk layer ${layer.digest} lacks a valid ${ANNOTATION.tartUncompressedDigest} annotation`);
    }
    chunks.push({ index, descriptor: layer, encoding: 'apple-lz4', offset, size, digest });
    offset += size;
  });
  if (chunks.length === 0) throw new ImageFormatError(`${image} has no disk layers (${MEDIA.tartDisk})`);
  const declared = manifest.annotations?.[ANNOTATION.tartDiskSize];
  if (declared !== undefined && Number(declared) !== offset) {
    throw new ImageFormatError(`${image}: disk layers add up to ${offset} bytes but the manifest says ${declared} (${ANNOTATION.tartDiskSize})`);
  }
  const nvram = nvrams[0];
  const kernel = layers.find((l) => l.mediaType === MEDIA.vmletKernel);
  const initrd = layers.find((l) => l.mediaType === MEDIA.vmletInitrd);
  for (const d of [configs[0]!, nvram, kernel, initrd]) if (d) checkDescriptor(d, image);
  return {
    format: 'tart',
    config: configs[0]!,
    chunks,
    diskSize: offset,
    ...(nvram ? { nvram: { descriptor: nvram, gzip: false, size: nvram.size, digest: nvram.digest } } : {}),
    ...(kernel ? { kernel } : {}),
    ...(initrd ? { initrd } : {}),
  };
}

function agodaLayout(manifest: ImageManifest, image: string): VmImageLayout {
  const one = (type: string, what: string) => {
    const found = manifest.layers.filter((l) => l.mediaType === type);
    if (found.length !== 1) throw new ImageFormatError(`${image} has ${found.length} Agoda ${what} layers; exactly one is required`);
    checkDescriptor(found[0]!, image);
    return found[0]!;
  };
  const disk = one(MEDIA.agodaDisk, 'disk');
  const aux = one(MEDIA.agodaAux, 'aux (NVRAM)');
  const config = one(MEDIA.agodaConfig, 'config');
  const size = annotatedSize(disk, ANNOTATION.agodaUncompressedSize, image);
  const digest = disk.annotations?.[ANNOTATION.agodaUncompressedDigest];
  if (!digest || !DIGEST.test(digest)) throw new ImageFormatError(`${image}: disk layer ${disk.digest} lacks ${ANNOTATION.agodaUncompressedDigest}`);
  const auxSize = annotatedSize(aux, ANNOTATION.agodaUncompressedSize, image);
  const auxDigest = aux.annotations?.[ANNOTATION.agodaUncompressedDigest];
  if (!auxDigest || !DIGEST.test(auxDigest)) throw new ImageFormatError(`${image}: aux layer ${aux.digest} lacks ${ANNOTATION.agodaUncompressedDigest}`);
  return {
    format: 'agoda',
    config,
    chunks: [{ index: manifest.layers.indexOf(disk), descriptor: disk, encoding: 'gzip', offset: 0, size, digest }],
    diskSize: size,
    nvram: { descriptor: aux, gzip: true, size: auxSize, digest: auxDigest },
  };
}

function checkDescriptor(d: Descriptor, image: string): void {
  if (typeof d.digest !== 'string' || !DIGEST.test(d.digest)) throw new ImageFormatError(`${image}: a layer has an invalid digest "${String(d.digest)}"`);
  if (!Number.isSafeInteger(d.size) || d.size < 0) throw new ImageFormatError(`${image}: layer ${d.digest} has an invalid size ${String(d.size)}`);
}

function annotatedSize(layer: Descriptor, key: string, image: string): number {
  const text = layer.annotations?.[key];
  const n = Number(text);
  if (text === undefined || !/^\d+$/.test(text) || !Number.isSafeInteger(n)) {
    throw new ImageFormatError(`${image}: layer ${layer.digest} lacks a valid ${key} annotation`);
  }
  return n;
}
