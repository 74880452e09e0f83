import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ImageFormatError, vmImageLayout } from '../../../src/images/formats/layout.ts';
import { ANNOTATION, MEDIA, type ImageManifest } from '../../../src/images/oci.ts';

const d = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}`;
const disk = (n: number, size: number, extra: Record<string, string> = {}) => ({
  mediaType: MEDIA.tartDisk,
  digest: d(n),
  size: 100,
  annotations: { [ANNOTATION.tartUncompressedSize]: String(size), [ANNOTATION.tartUncompressedDigest]: d(1000 + n), ...extra },
});
const tart = (layers: ImageManifest['layers'], annotations?: Record<string, string>): ImageManifest => ({
  schemaVersion: 2,
  mediaType: MEDIA.ociManifest,
  config: { mediaType: MEDIA.ociConfig, digest: d(1), size: 2 },
  layers,
  ...(annotations ? { annotations } : {}),
});
const config = { mediaType: MEDIA.tartConfig, digest: d(2), size: 10 };
const nvram = { mediaType: MEDIA.tartNvram, digest: d(3), size: 10 };

test("Tart disk chunks are laid end to end at their uncompressed sizes", () => {
  const layout = vmImageLayout(tart([config, disk(10, 512), disk(11, 512), disk(12, 100), nvram], { [ANNOTATION.tartDiskSize]: '1124' }), 'img');
  assert.equal(layout.format, 'tart');
  assert.deepEqual(layout.chunks.map((c) => [c.index, c.offset, c.size, c.digest]), [
    [1, 0, 512, d(1010)],
    [2, 512, 512, d(1011)],
    [3, 1024, 100, d(1012)],
  ]);
  assert.equal(layout.diskSize, 1124);
  assert.equal(layout.nvram?.digest, d(3));
});

test('manifests that are not valid VM images are refused with the reason', () => {
  const refuse = (m: ImageManifest, pattern: RegExp) =>
    assert.throws(() => vmImageLayout(m, 'reg/x:1'), (e: Error) => e instanceof ImageFormatError && pattern.test(e.message));
  refuse(tart([]), /has no layers/);
  refuse(tart([{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: d(5), size: 1 }]), /is not a VM image \(layer media types: application\/vnd\.oci\.image\.layer\.v1\.tar\)/);
  // A container image (docker build/push) is named as one, with what to do instead.
  const hint = /: it is a container image, and vmlet runs VM images only \(build one with `vmlet image import` or Tart, or run this image on a node with a container runtime\)$/;
  refuse({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: d(1), size: 1 }, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: d(5), size: 1 }] }, hint);
  refuse({ schemaVersion: 2, mediaType: 'application/vnd.docker.distribution.manifest.v2+json', config: { mediaType: 'application/vnd.docker.container.image.v1+json', digest: d(1), size: 1 }, layers: [{ mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', digest: d(5), size: 1 }] }, hint);
  assert.throws(() => vmImageLayout(tart([{ mediaType: 'application/x-unknown', digest: d(5), size: 1 }]), 'reg/x:1'), (e: Error) => !/container image/.test(e.message));
  refuse(tart([config, config, disk(10, 1)]), /2 Tart config layers/);
  refuse(tart([config]), /no disk layers/);
  refuse(tart([config, { ...disk(10, 1), annotations: {} }]), /lacks a valid org\.cirruslabs\.tart\.uncompressed-size/);
  refuse(tart([config, disk(10, 1, { [ANNOTATION.tartUncompressedDigest]: 'md5:x' })]), /uncompressed-content-digest/);
  refuse(tart([config, disk(10, 10)], { [ANNOTATION.tartDiskSize]: '11' }), /add up to 10 bytes but the manifest says 11/);
  refuse(tart([config, disk(10, 10), { mediaType: 'application/x-unknown', digest: d(9), size: 1 }]), /unknown media type application\/x-unknown/);
  refuse(tart([config, { ...disk(10, 10), mediaType: MEDIA.tartDiskV1 }].filter((l) => l.mediaType !== MEDIA.tartConfig)), /legacy disk\.v1/);
  refuse(tart([config, { ...disk(10, 10), size: -1 }]), /invalid size/);
});

test("Agoda's artifact is read as one gzip disk and a gzip aux image", () => {
  const a = (mediaType: string, n: number, size?: number) => {
    const annotations: Record<string, string> =
      size === undefined ? {} : { [ANNOTATION.agodaUncompressedSize]: String(size), [ANNOTATION.agodaUncompressedDigest]: d(2000 + n) };
    return { mediaType, digest: d(n), size: 50, annotations };
  };
  const layout = vmImageLayout(
    { ...tart([a(MEDIA.agodaDisk, 1, 4096), a(MEDIA.agodaAux, 2, 64), a(MEDIA.agodaConfig, 3)]), artifactType: MEDIA.agodaArtifact },
    'agoda:1',
  );
  assert.equal(layout.format, 'agoda');
  assert.deepEqual(layout.chunks.map((c) => [c.encoding, c.offset, c.size]), [['gzip', 0, 4096]]);
  assert.deepEqual([layout.nvram?.gzip, layout.nvram?.size], [true, 64]);
});
