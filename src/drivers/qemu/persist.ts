// vm.json on disk, written atomically (src/host/files.ts), so a crash at any moment leaves either the old
// record or the new one, never half of one.
import { readFileIfExists, writeFileAtomic } from '../../host/files.ts';
import { parseRecord, serializeRecord, type VmRecord } from './state.ts';

export async function writeRecord(file: string, record: VmRecord): Promise<void> {
  await writeFileAtomic(file, serializeRecord(record));
}

/** The record in file; undefined when there is none; throws StateError when it is not one. */
export async function readRecord(file: string): Promise<VmRecord | undefined> {
  const text = await readFileIfExists(file);
  return text === undefined ? undefined : parseRecord(text, file);
}
