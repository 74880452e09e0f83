// Image references as docker and containerd read them ("distribution/reference"): an optional registry
// host, a repository path, an optional tag and an optional digest. "ubuntu" is Docker Hub's
// "library/ubuntu:latest", fetched from registry-1.docker.io.
import { RegistryError } from './errors.ts';
import { parseDigest } from './digest.ts';

/** Docker Hub as people write it, and the host its registry API is actually served from. */
export const DOCKER_HUB_DOMAIN = 'docker.io';
export const DOCKER_HUB_REGISTRY = 'registry-1.docker.io';
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com']);

export interface ImageRef {
  /** host[:port] the registry API is served from, e.g. "registry-1.docker.io", "127.0.0.1:5000". */
  readonly registry: string;
  /** The repository path, e.g. "library/ubuntu", "cirruslabs/macos-sequoia-base". */
  readonly repository: string;
  /** Absent only when a digest is given. */
  readonly tag?: string;
  readonly digest?: string;
  /** What a manifest request names: the digest when there is one, else the tag. */
  readonly reference: string;
  /** registry/repository[:tag][@digest], with "docker.io" for Docker Hub. */
  toString(): string;
}

// The grammar of distribution/reference (regexp.go).
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:]+\\])(?::[0-9]+)?$`);
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$/;
const NAME_MAX = 255;

function invalid(text: string, why: string): RegistryError {
  return new RegistryError({ reason: 'InvalidReference', detail: `invalid image reference "${text}": ${why}` });
}

/** Reads an image reference; throws a RegistryError (InvalidReference) saying what is wrong. */
export function parseImageRef(text: string): ImageRef {
  const input = text.trim();
  if (input === '') throw invalid(text, 'empty');
  if (/^[a-f0-9]{64}$/.test(input)) {
    throw invalid(text, 'a 64-character hex string is an image ID, not a reference; write sha256:… after @');
  }
  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw invalid(text, `malformed digest "${digest}"`);
    if (digest.startsWith('sha256:') && !parseDigest(digest)) {
      throw invalid(text, `a sha256 digest is 64 lowercase hex characters (got "${digest}")`);
    }
  }
  // A tag follows the last ':' after the last '/'; a ':' before it belongs to a host:port.
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw invalid(text, `malformed tag "${tag}" (letters, digits, _ . -; at most 128)`);
  }
  const { domain, path } = splitDomain(rest);
  if (domain !== undefined && !DOMAIN.test(domain)) throw invalid(text, `malformed registry host "${domain}"`);
  if (path === '') throw invalid(text, 'no repository name');
  if (path !== path.toLowerCase()) throw invalid(text, 'repository name must be lowercase');
  for (const component of path.split('/')) {
    if (!PATH_COMPONENT.test(component)) {
      throw invalid(text, `malformed repository path component "${component}" (lowercase letters, digits, separators . _ __ -)`);
    }
  }
  const hub = domain === undefined || DOCKER_HUB_ALIASES.has(domain.toLowerCase());
  const repository = hub && !path.includes('/') ? `library/${path}` : path;
  const displayDomain = hub ? DOCKER_HUB_DOMAIN : domain;
  if (`${displayDomain}/${repository}`.length > NAME_MAX) throw invalid(text, `name longer than ${NAME_MAX} characters`);
  return makeImageRef(hub ? DOCKER_HUB_REGISTRY : domain, repository, {
    tag: tag ?? (digest ? undefined : 'latest'),
    digest,
  });
}

/** Docker's rule: the first component is a host when it has a '.' or ':', is "localhost", or has capitals. */
function splitDomain(name: string): { domain?: string; path: string } {
  const slash = name.indexOf('/');
  if (slash < 0) return { path: name };
  const first = name.slice(0, slash);
  if (!/[.:]/.test(first) && first !== 'localhost' && first.toLowerCase() === first) return { path: name };
  return { domain: first, path: name.slice(slash + 1) };
}

/** Builds a reference from parts (registry as it is connected to), without re-parsing. */
export function makeImageRef(registry: string, repository: string, at: { tag?: string; digest?: string } = {}): ImageRef {
  const { tag, digest } = at;
  const domain = registry === DOCKER_HUB_REGISTRY ? DOCKER_HUB_DOMAIN : registry;
  const text = `${domain}/${repository}${tag ? `:${tag}` : ''}${digest ? `@${digest}` : ''}`;
  return {
    registry,
    repository,
    ...(tag !== undefined && { tag }),
    ...(digest !== undefined && { digest }),
    reference: digest ?? tag ?? 'latest',
    toString: () => text,
  };
}

/** The same repository at a digest (the tag is kept for messages). */
export function withDigest(ref: ImageRef, digest: string): ImageRef {
  return makeImageRef(ref.registry, ref.repository, { tag: ref.tag, digest });
}

export function isDockerHub(registry: string): boolean {
  return DOCKER_HUB_ALIASES.has(registry.toLowerCase());
}
