// How a decoding error crosses a worker-thread boundary intact (reason, offset, expected and actual
// values), for the threads that decode disk chunks (images/store/chunk-writer.ts).
import { AppleLz4Error, type AppleLz4Reason } from './format.ts';
import { DecodedMismatchError } from './digest.ts';

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
