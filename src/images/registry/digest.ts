// Content digests (image-spec descriptor.md): parsing, computing, and the hash a verifier feeds.
// sha256 is what every registry uses; sha512 is registered in the spec and costs nothing to accept.
import { createHash, type Hash } from 'node:crypto';

const ALGORITHMS = { sha256: 64, sha512: 128 } as const;
export type DigestAlgorithm = keyof typeof ALGORITHMS;

export interface ParsedDigest {
  algorithm: DigestAlgorithm;
  hex: string;
}

/** Splits and checks a digest we can verify ("sha256:<64 lowercase hex>"); undefined when it is not one. */
export function parseDigest(digest: string): ParsedDigest | undefined {
  const colon = digest.indexOf(':');
  const algorithm = digest.slice(0, colon);
  const hex = digest.slice(colon + 1);
  if (!(algorithm in ALGORITHMS)) return undefined;
  const length = ALGORITHMS[algorithm as DigestAlgorithm];
  if (hex.length !== length || !/^[a-f0-9]+$/.test(hex)) return undefined;
  return { algorithm: algorithm as DigestAlgorithm, hex };
}

export function isVerifiableDigest(digest: string): boolean {
  return parseDigest(digest) !== undefined;
}

/** A fresh hash of the digest's algorithm; throws for a digest that cannot be verified. */
export function hashFor(digest: string): Hash {
  const parsed = parseDigest(digest);
  if (!parsed) throw new Error(`unsupported or malformed digest "${digest}"`);
  return createHash(parsed.algorithm);
}

/** "<algorithm>:<hex>" of the bytes. */
export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
}
