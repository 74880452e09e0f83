// Messages between chunk-writer.ts (main thread) and chunk-writer-entry.ts (the writing thread).
import type { DecodeExpectation } from '../lz4/digest.ts';
import type { WireError } from '../lz4/protocol.ts';

export type ChunkToWorker =
  /** `blobDigest`: hash the compressed bytes too, and answer 'blob-mismatch' at the end if they are not this. */
  | { type: 'start'; id: number; file: string; offset: number; sparse: boolean; direct: boolean; expect: DecodeExpectation; blobDigest?: string }
  /** `chunk` holds `length` compressed bytes (from its start); it comes back with 'consumed'. */
  | { type: 'data'; id: number; chunk: ArrayBuffer; length: number }
  | { type: 'end'; id: number };

export type ChunkFromWorker =
  /** `chunk` is the buffer of the 'data' message consumed, handed back to be filled again. */
  | { type: 'consumed'; id: number; bytes: number; decoded: number; chunk: ArrayBuffer }
  | { type: 'done'; id: number; digest: string; size: number; written: number }
  | { type: 'error'; id: number; error: WireError }
  /** The compressed bytes were not the blob (checked before anything decoded is): `digest` is what they were. */
  | { type: 'blob-mismatch'; id: number; digest: string };
