// RegistryClient: the OCI distribution client vmlet pulls and pushes VM images with. It wires the
// transport (undici Agent, TLS, plain-HTTP registries), authentication and retries, and exposes the
// operations; the protocol steps live in manifests.ts, blobs.ts and upload.ts.
import type { Logger } from 'pino';
import { Authenticator } from './auth.ts';
import { downloadBlob, headBlob, readBlob, type BlobInfo, type DownloadOptions } from './blobs.ts';
import type { CredentialProvider } from './credentials.ts';
import { getManifest, putManifest, resolveImage, type Manifest, type ResolvedImage } from './manifests.ts';
import { hostPlatform } from './platform.ts';
import { parseImageRef, type ImageRef } from './reference.ts';
import { DEFAULT_RETRY, type RetryPolicy } from './retry.ts';
import { Session } from './session.ts';
import type { BlobSource } from './sources.ts';
import { Transport, type TransportOptions } from './transport.ts';
import type { Platform } from './types.ts';
import { pushBlob, type PushBlobOptions, type PushBlobResult } from './upload.ts';

export interface RegistryClientOptions extends TransportOptions {
  /** Asked for a login when a registry challenges; anonymous without. */
  credentials?: CredentialProvider;
  retry?: Partial<RetryPolicy>;
  /** Manifests (and indexes) larger than this are refused. Default 4 MiB, as containerd. */
  maxManifestBytes?: number;
  logger?: Logger;
}

export const DEFAULT_MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

interface CallOptions {
  signal?: AbortSignal;
}

export class RegistryClient {
  private readonly session: Session;
  private readonly maxManifestBytes: number;
  private readonly opts: RegistryClientOptions;
  /** Whether close() closes the connections: not for a client made by withCredentials, which borrows them. */
  private readonly ownsTransport: boolean;

  /** `transport` is withCredentials' way to share connections; callers leave it out. */
  constructor(opts: RegistryClientOptions = {}, transport?: Transport) {
    const logger = opts.logger?.child({ component: 'registry' });
    this.ownsTransport = transport === undefined;
    const t = transport ?? new Transport({ ...opts, logger });
    const auth = new Authenticator({ transport: t, credentials: opts.credentials, logger });
    this.session = new Session(t, auth, { ...DEFAULT_RETRY, ...opts.retry }, logger);
    this.maxManifestBytes = opts.maxManifestBytes ?? DEFAULT_MAX_MANIFEST_BYTES;
    this.opts = opts;
  }

  /** A client with other credentials (e.g. a pod's pull secrets) sharing this one's connections; tokens are its own. */
  withCredentials(credentials: CredentialProvider | undefined): RegistryClient {
    return new RegistryClient({ ...this.opts, credentials }, this.session.transport);
  }

  /** The manifest or index a reference names, as served (bytes, media type, verified digest). */
  getManifest(ref: ImageRef | string, opts: CallOptions = {}): Promise<Manifest> {
    return getManifest(this.session, toRef(ref), { maxBytes: this.maxManifestBytes, signal: opts.signal });
  }

  /** The image manifest for platform (default: this host's), following an index if the reference names one. */
  resolveImage(ref: ImageRef | string, platform: Platform = hostPlatform(), opts: CallOptions = {}): Promise<ResolvedImage> {
    return resolveImage(this.session, toRef(ref), platform, { maxBytes: this.maxManifestBytes, signal: opts.signal });
  }

  /** Pushes a manifest (its blobs, or for an index its manifests, must be there) under the reference's tag and tags. */
  putManifest(ref: ImageRef | string, bytes: Buffer, mediaType: string, tags: readonly string[] = [], opts: CallOptions = {}): Promise<{ digest: string; size: number }> {
    return putManifest(this.session, toRef(ref), bytes, mediaType, tags, { maxBytes: this.maxManifestBytes, signal: opts.signal });
  }

  /** The blob's size, or undefined when the repository does not have it. */
  headBlob(ref: ImageRef | string, digest: string, opts: CallOptions = {}): Promise<BlobInfo | undefined> {
    return headBlob(this.session, toRef(ref), digest, opts);
  }

  /**
   * Streams a blob, verified: the iteration ends normally only after size and digest have been checked,
   * so nothing it yielded may be treated as good before then. Resumes with Range after failures; see
   * DownloadOptions to resume a download kept across restarts.
   */
  downloadBlob(ref: ImageRef | string, blob: BlobInfo, opts: DownloadOptions = {}): AsyncGenerator<Buffer, void, undefined> {
    return downloadBlob(this.session, toRef(ref), blob, opts);
  }

  /** A small blob (a config) in memory, verified. */
  readBlob(ref: ImageRef | string, blob: BlobInfo, opts: CallOptions & { maxBytes?: number } = {}): Promise<Buffer> {
    return readBlob(this.session, toRef(ref), blob, { maxBytes: opts.maxBytes ?? this.maxManifestBytes, signal: opts.signal });
  }

  /** Pushes a blob unless the repository has it: mount, else monolithic or chunked upload. */
  pushBlob(ref: ImageRef | string, source: BlobSource, opts: PushBlobOptions = {}): Promise<PushBlobResult> {
    return pushBlob(this.session, toRef(ref), source, opts);
  }

  /** Closes the connections, when this client made them (a client from withCredentials borrows its parent's). */
  async close(): Promise<void> {
    if (this.ownsTransport) await this.session.transport.close();
  }
}

function toRef(ref: ImageRef | string): ImageRef {
  return typeof ref === 'string' ? parseImageRef(ref) : ref;
}
