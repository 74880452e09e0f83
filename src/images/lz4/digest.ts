// sha256 and size of decoded output, checked against what a layer promises: Tart annotates each disk
// layer with org.cirruslabs.tart.uncompressed-size and ...uncompressed-content-digest. Shared by the
// in-thread stream (decode-stream.ts) and the worker (worker-entry.ts).
import { createHash, type Hash } from 'node:crypto';

/** What the decoded bytes were. `digest` is `sha256:<hex>`, as in OCI descriptors and Tart's annotation. */
export interface DecodedDigest {
  sha256: string;
  digest: string;
  size: number;
}

/** What the decoded bytes must be; either field may be left out. `digest` may omit its `sha256:`. */
export interface DecodeExpectation {
  size?: number;
  digest?: string;
}

/** Why decoded output was refused: it is valid Apple LZ4, but not the bytes the layer promised. */
export class DecodedMismatchError extends Error {
  override name = 'DecodedMismatchError';
  constructor(
    readonly field: 'size' | 'digest',
    readonly expected: string | number,
    readonly actual: string | number,
  ) {
    super(
      `apple-lz4: decoded ${field} is ${actual} but the layer's annotation says ${expected}: the layer is corrupt or was annotated wrongly`,
    );
  }
}

export class DigestTracker {
  private readonly hash: Hash = createHash('sha256');
  private size = 0;
  private readonly expectedSize: number | undefined;
  private readonly expectedHex: string | undefined;

  constructor(expect: DecodeExpectation = {}) {
    this.expectedSize = expect.size;
    this.expectedHex = expect.digest === undefined ? undefined : normalise(expect.digest);
  }

  /** Adds decoded bytes; refuses them as soon as they exceed the expected size (no point decoding on). */
  update(out: Uint8Array): void {
    this.hash.update(out);
    this.size += out.length;
    if (this.expectedSize !== undefined && this.size > this.expectedSize) {
      throw new DecodedMismatchError('size', this.expectedSize, `more than ${this.expectedSize}`);
    }
  }

  /** The final digest, after checking it against the expectation. */
  finish(): DecodedDigest {
    const sha256 = this.hash.digest('hex');
    if (this.expectedSize !== undefined && this.size !== this.expectedSize) {
      throw new DecodedMismatchError('size', this.expectedSize, this.size);
    }
    if (this.expectedHex !== undefined && sha256 !== this.expectedHex) {
      throw new DecodedMismatchError('digest', `sha256:${this.expectedHex}`, `sha256:${sha256}`);
    }
    return { sha256, digest: `sha256:${sha256}`, size: this.size };
  }
}

function normalise(digest: string): string {
  const hex = digest.startsWith('sha256:') ? digest.slice(7) : digest;
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new TypeError(`apple-lz4: expected digest "${digest}" is not sha256:<64 hex>`);
  return hex;
}
