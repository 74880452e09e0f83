// Messages between worker-stream.ts (main thread) and worker-entry.ts (the decoding thread), and how errors
// cross the thread boundary intact. Flow control is credit-based in both directions:
// - main sends compressed chunks; the worker answers `consumed` once a chunk is decoded, and main keeps
//   at most `maxInputInFlight` unanswered bytes (the writable side waits beyond that);
// - the worker sends decoded chunks (ArrayBuffers, transferred) and stops decoding while `outputWindow`
//   bytes are unacknowledged; main acknowledges them with `credit` once its reader has taken them.
import { AppleLz4Error, type AppleLz4Reason } from './format.ts';
import { DecodedMismatchError, type DecodeExpectation, type DecodedDigest } from './digest.ts';

export type ToWorker =
  | { type: 'start'; id: number; maxBlockSize?: number; expect?: DecodeExpectation; outputWindow: number }
  | { type: 'data'; id: number; chunk: ArrayBuffer }
  | { type: 'end'; id: number }
  | { type: 'credit'; id: number; bytes: number };

export type FromWorker =
  | { type: 'out'; id: number; chunks: ArrayBuffer[]; bytes: number }
  | { type: 'consumed'; id: number; bytes: number }
  | { type: 'done'; id: number; result: DecodedDigest }
  | { type: 'error'; id: number; error: WireError };

export type WireError =
  | { kind: 'lz4'; reason: AppleLz4Reason; offset: number; detail: string }
  | { kind: 'mismatch'; field: 'size' | 'digest'; expected: string | number; actual: string | number }
  | { kind: 'other'; name: string; message: string };

export function toWire(err: unknown): WireError {
  if (err instanceof AppleLz4Error) return { kind: 'lz4', reason: err.reason, offset: err.offset, detail: err.detail };
  if (err instanceof DecodedMismatchError) {
    return { kind: 'mismatch', field: err.field, expected: err.expected, actual: err.actual };
  }
  const e = err instanceof Error ? err : new Error(String(err));
  return { kind: 'other', name: e.name, message: e.message };
}

export function fromWire(wire: WireError): Error {
  if (wire.kind === 'lz4') return new AppleLz4Error(wire.reason, wire.offset, wire.detail);
  if (wire.kind === 'mismatch') return new DecodedMismatchError(wire.field, wire.expected, wire.actual);
  const err = new Error(wire.message);
  err.name = wire.name;
  return err;
}
