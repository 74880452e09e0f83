// The registry client's public surface: import from here, not from the files behind it.
export { RegistryClient, DEFAULT_MAX_MANIFEST_BYTES, type RegistryClientOptions } from './client.ts';
export { parseImageRef, makeImageRef, withDigest, type ImageRef } from './reference.ts';
export {
  CredentialStore,
  DOCKER_CFG_TYPE,
  DOCKER_CONFIG_JSON_TYPE,
  type CredentialProvider,
  type CredentialStoreOptions,
  type Credentials,
  type PullSecret,
} from './credentials.ts';
export { RegistryError, type RegistryErrorReason, type ErrorContext, type RegistryErrorEntry } from './errors.ts';
export { MediaType, MANIFEST_ACCEPT, isIndexMediaType, isImageManifestMediaType } from './media-types.ts';
export type { Descriptor, ImageIndex, ImageManifest, Platform } from './types.ts';
export { hostPlatform, formatPlatform, platformMatches, selectManifest, normalizePlatform } from './platform.ts';
export { bufferSource, fileSource, type BlobSource } from './sources.ts';
export { digestOf, hashFor, parseDigest } from './digest.ts';
export type { BlobInfo, DownloadOptions } from './blobs.ts';
export type { Manifest, ResolvedImage } from './manifests.ts';
export type { PushBlobOptions, PushBlobResult } from './upload.ts';
export type { RetryPolicy } from './retry.ts';
export type { TransportOptions } from './transport.ts';
