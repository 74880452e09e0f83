// vm.json on disk, written atomically (src/host/files.ts) as the QEMU driver does, so a crash leaves the
// old record or the new one, never half of one.
import { readFileIfExists, writeFileAtomic } from '../../host/files.ts';
import { parseVzRecord, serializeVzRecord, type VzRecord } from './state.ts';

export async function writeVzRecord(file: string, record: VzRecord): Promise<void> {
  await writeFileAtomic(file, serializeVzRecord(record));
}

/** The vz record in file; undefined when there is none or it is another driver's; throws VzStateError when broken. */
export async function readVzRecord(file: string): Promise<VzRecord | undefined> {
  const text = await readFileIfExists(file);
  return text === undefined ? undefined : parseVzRecord(text, file);
}
