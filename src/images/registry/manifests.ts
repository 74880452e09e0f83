// Manifests: fetch (Accept for OCI and Docker schema 2, a size limit, the digest verified or computed
// over the exact bytes), parse, resolve an index to one platform's manifest, and push under tags.
import type { Readable } from 'node:stream';
import { digestOf, parseDigest } from './digest.ts';
import { RegistryError, type ErrorContext } from './errors.ts';
import { isImageManifestMediaType, isIndexMediaType, isSupportedManifestMediaType, MANIFEST_ACCEPT, MediaType } from './media-types.ts';
import { formatPlatform, selectManifest } from './platform.ts';
import { withDigest, type ImageRef } from './reference.ts';
import { discard, header, type Session } from './session.ts';
import { repositoryScope } from './auth.ts';
import { imageIndexSchema, imageManifestSchema, type ImageIndex, type ImageManifest, type Platform } from './types.ts';

/** A manifest as served: keep `bytes` as they are, the digest is over them. */
export interface Manifest {
  bytes: Buffer;
  mediaType: string;
  digest: string;
  size: number;
}

export type ParsedManifest = { kind: 'index'; index: ImageIndex } | { kind: 'manifest'; manifest: ImageManifest };

export interface ResolvedImage {
  /** The reference pinned to the platform manifest's digest. */
  ref: ImageRef;
  manifest: ImageManifest;
  raw: Manifest;
  /** The index the manifest was picked from, when the reference named one. */
  index?: { raw: Manifest; index: ImageIndex };
  /** The chosen index entry's platform. */
  platform?: Platform;
}

export interface ManifestOptions {
  maxBytes: number;
  signal?: AbortSignal;
}

const MAX_INDEX_DEPTH = 2;

export async function getManifest(session: Session, ref: ImageRef, opts: ManifestOptions): Promise<Manifest> {
  const context: ErrorContext = { operation: 'pull', image: ref.toString() };
  const res = await session.call({
    method: 'GET',
    ref,
    path: `/v2/${ref.repository}/manifests/${ref.reference}`,
    scopes: [repositoryScope(ref.repository, ['pull'])],
    headers: { accept: MANIFEST_ACCEPT },
    ok: [200],
    followRedirects: true,
    retry: true,
    context,
    signal: opts.signal,
  });
  const bytes = await readManifestBody(res.body, Number(header(res.headers, 'content-length') ?? NaN), opts.maxBytes, context);
  const digest = verifyDigest(ref, bytes, header(res.headers, 'docker-content-digest'), context);
  const mediaType = manifestMediaType(header(res.headers, 'content-type'), bytes, context);
  return { bytes, mediaType, digest, size: bytes.length };
}

async function readManifestBody(body: Readable, declared: number, maxBytes: number, context: ErrorContext): Promise<Buffer> {
  const tooLarge = (size: string): RegistryError =>
    new RegistryError({ reason: 'ManifestTooLarge', detail: `manifest of ${size} bytes is over the ${maxBytes}-byte limit`, context });
  if (declared > maxBytes) {
    discard(body);
    throw tooLarge(String(declared));
  }
  const chunks: Buffer[] = [];
  let length = 0;
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      length += chunk.length;
      if (length > maxBytes) throw tooLarge(`more than ${maxBytes}`);
      chunks.push(chunk);
    }
  } finally {
    discard(body);
  }
  return Buffer.concat(chunks);
}

function verifyDigest(ref: ImageRef, bytes: Buffer, served: string | undefined, context: ErrorContext): string {
  if (ref.digest) {
    const parsed = parseDigest(ref.digest);
    if (!parsed) throw new RegistryError({ reason: 'Unsupported', detail: `cannot verify digest ${ref.digest}`, context });
    const got = digestOf(bytes, parsed.algorithm);
    if (got !== ref.digest) {
      throw new RegistryError({ reason: 'DigestMismatch', detail: `manifest content has digest ${got}, not ${ref.digest}`, context });
    }
    return got;
  }
  const got = digestOf(bytes);
  // A tag has no digest to check against, but the registry's own claim must agree with the bytes.
  if (served?.startsWith('sha256:') && served !== got) {
    throw new RegistryError({ reason: 'DigestMismatch', detail: `manifest content has digest ${got}, the registry said ${served}`, context });
  }
  return got;
}

/** Content-Type, or the manifest's own mediaType (or its shape) when a registry sends a generic type. */
function manifestMediaType(contentType: string | undefined, bytes: Buffer, context: ErrorContext): string {
  const served = contentType?.split(';')[0]!.trim().toLowerCase() ?? '';
  let declared: string | undefined;
  let shape: string | undefined;
  let schemaVersion: unknown;
  try {
    const doc = JSON.parse(bytes.toString('utf8')) as { mediaType?: unknown; manifests?: unknown; config?: unknown; schemaVersion?: unknown };
    declared = typeof doc.mediaType === 'string' ? doc.mediaType : undefined;
    shape = Array.isArray(doc.manifests) ? MediaType.OciIndex : doc.config ? MediaType.OciManifest : undefined;
    schemaVersion = doc.schemaVersion;
  } catch {
    throw new RegistryError({ reason: 'ManifestInvalid', detail: 'manifest is not JSON', context });
  }
  const mediaType = isSupportedManifestMediaType(served) ? served : (declared ?? (schemaVersion === 2 ? shape : undefined) ?? served);
  if (!isSupportedManifestMediaType(mediaType)) {
    throw new RegistryError({
      reason: 'UnsupportedMediaType',
      detail: `manifest media type "${mediaType || 'none'}" is not an OCI or Docker schema 2 manifest or index`,
      context,
    });
  }
  // image-spec: a mediaType inside the manifest must agree with the one it was served as.
  if (declared && declared !== mediaType) {
    throw new RegistryError({ reason: 'ManifestInvalid', detail: `manifest says it is ${declared} but was served as ${mediaType}`, context });
  }
  return mediaType;
}

/** Parses and checks the structure of a fetched manifest or index. */
export function parseManifest(m: Manifest, context: ErrorContext): ParsedManifest {
  const doc: unknown = JSON.parse(m.bytes.toString('utf8'));
  const schema = isIndexMediaType(m.mediaType) ? imageIndexSchema : imageManifestSchema;
  const parsed = schema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue?.path.join('.') || 'document';
    throw new RegistryError({ reason: 'ManifestInvalid', detail: `${m.mediaType} ${m.digest} is malformed: ${where}: ${issue?.message}`, context });
  }
  return isIndexMediaType(m.mediaType)
    ? { kind: 'index', index: parsed.data as ImageIndex }
    : { kind: 'manifest', manifest: parsed.data as ImageManifest };
}

/**
 * The image manifest for a platform: follows an index (or manifest list) to the entry that matches.
 * A reference that names an image manifest directly is returned as it is: its platform is only in its
 * config blob, which is the caller's to read.
 */
export async function resolveImage(session: Session, ref: ImageRef, platform: Platform, opts: ManifestOptions): Promise<ResolvedImage> {
  const context: ErrorContext = { operation: 'resolve', image: ref.toString() };
  let current = ref;
  let raw = await getManifest(session, current, opts);
  let index: ResolvedImage['index'];
  let chosen: Platform | undefined;
  for (let depth = 0; ; depth++) {
    const parsed = parseManifest(raw, context);
    if (parsed.kind === 'manifest') {
      if (!isImageManifestMediaType(raw.mediaType)) throw new RegistryError({ reason: 'UnsupportedMediaType', detail: raw.mediaType, context });
      return { ref: withDigest(current, raw.digest), manifest: parsed.manifest, raw, index, platform: chosen };
    }
    if (depth >= MAX_INDEX_DEPTH) {
      throw new RegistryError({ reason: 'ManifestInvalid', detail: `indexes nested more than ${MAX_INDEX_DEPTH} deep`, context });
    }
    const entry = selectManifest(parsed.index, platform);
    if (!entry) {
      const available = parsed.index.manifests.map((d) => formatPlatform(d.platform)).join(', ');
      throw new RegistryError({
        reason: 'PlatformNotFound',
        detail: `no manifest for ${formatPlatform(platform)} in index ${raw.digest} (it has: ${available || 'none'})`,
        context,
      });
    }
    index ??= { raw, index: parsed.index };
    chosen = entry.platform;
    current = withDigest(current, entry.digest);
    raw = await getManifest(session, current, opts);
    if (raw.size !== entry.size) {
      throw new RegistryError({ reason: 'SizeMismatch', detail: `manifest ${entry.digest} is ${raw.size} bytes, the index says ${entry.size}`, context });
    }
  }
}

/** Pushes a manifest under each tag (by digest when there is none); returns its digest. */
export async function putManifest(
  session: Session,
  ref: ImageRef,
  bytes: Buffer,
  mediaType: string,
  tags: readonly string[],
  opts: ManifestOptions,
): Promise<{ digest: string; size: number }> {
  const digest = digestOf(bytes);
  const context: ErrorContext = { operation: 'push', image: ref.toString(), digest, kind: 'manifest' };
  if (bytes.length > opts.maxBytes) {
    throw new RegistryError({ reason: 'ManifestTooLarge', detail: `manifest of ${bytes.length} bytes is over the ${opts.maxBytes}-byte limit`, context });
  }
  const targets = [...new Set([...(ref.tag && !ref.digest ? [ref.tag] : []), ...tags])];
  for (const target of targets.length ? targets : [digest]) {
    const res = await session.call({
      method: 'PUT',
      ref,
      path: `/v2/${ref.repository}/manifests/${target}`,
      scopes: [repositoryScope(ref.repository, ['pull', 'push'])],
      headers: { 'content-type': mediaType, 'content-length': String(bytes.length) },
      body: () => bytes,
      ok: [201],
      retry: true,
      context,
      signal: opts.signal,
    });
    await res.body.dump();
    const stored = header(res.headers, 'docker-content-digest');
    if (stored && stored !== digest) {
      throw new RegistryError({ reason: 'DigestMismatch', detail: `the registry stored the manifest as ${stored}, not ${digest}`, context });
    }
  }
  return { digest, size: bytes.length };
}
