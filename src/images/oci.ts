// Media types and annotations of the VM image formats vmlet reads and writes (docs/IMAGE-FORMAT.md):
// Tart's, Agoda's macOS-vz-kubelet's, and vmlet's Linux additions. The OCI structures themselves are
// the registry client's (registry/types.ts).
export type { Descriptor, ImageIndex, ImageManifest, Platform } from './registry/types.ts';

export const MEDIA = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',

  tartConfig: 'application/vnd.cirruslabs.tart.config.v1',
  tartDiskV1: 'application/vnd.cirruslabs.tart.disk.v1',
  tartDisk: 'application/vnd.cirruslabs.tart.disk.v2',
  tartNvram: 'application/vnd.cirruslabs.tart.nvram.v1',

  agodaArtifact: 'application/vnd.agoda.macosvz.artifact',
  agodaDisk: 'application/vnd.agoda.macosvz.disk.image.v1',
  agodaAux: 'application/vnd.agoda.macosvz.aux.image.v1',
  agodaConfig: 'application/vnd.agoda.macosvz.config.v1+json',

  /** vmlet's own: what QEMU needs to boot a Linux guest directly. */
  vmletKernel: 'application/vnd.vmlet.linux.kernel.v1',
  vmletInitrd: 'application/vnd.vmlet.linux.initrd.v1',
} as const;

export const ANNOTATION = {
  tartUncompressedSize: 'org.cirruslabs.tart.uncompressed-size',
  tartUncompressedDigest: 'org.cirruslabs.tart.uncompressed-content-digest',
  tartDiskSize: 'org.cirruslabs.tart.uncompressed-disk-size',
  tartUploadTime: 'org.cirruslabs.tart.upload-time',
  agodaUncompressedSize: 'com.agoda.macosvz.content.uncompressed-size',
  agodaUncompressedDigest: 'com.agoda.macosvz.content.uncompressed-digest',
  title: 'org.opencontainers.image.title',
} as const;
