// Messages between chunk-writer.ts (main thread) and chunk-writer-entry.ts (the writing thread).
import type { DecodeExpectation } from '../lz4/digest.ts';
import type { WireError } from '../lz4/protocol.ts';

export type ChunkToWorker =
  | { type: 'start'; id: number; file: string; offset: number; sparse: boolean; direct: boolean; expect: DecodeExpectation }
  | { type: 'data'; id: number; chunk: ArrayBuffer }
  | { type: 'end'; id: number };

export type ChunkFromWorker =
  | { type: 'consumed'; id: number; bytes: number; decoded: number }
  | { type: 'done'; id: number; digest: string; size: number; written: number }
  | { type: 'error'; id: number; error: WireError };
