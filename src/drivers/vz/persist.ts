// vm.json on disk, written atomically (a temp file, fsync, rename, fsync of the dir) as the QEMU driver
// does, so a crash leaves the old record or the new one, never half of one.
import { open, readFile, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { parseVzRecord, serializeVzRecord, type VzRecord } from './state.ts';

export async function writeVzRecord(file: string, record: VzRecord): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  const handle = await open(tmp, 'w', 0o600);
  try {
    await handle.writeFile(serializeVzRecord(record));
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  const dir = await open(dirname(file), 'r').catch(() => undefined);
  await dir?.sync().catch(() => {});
  await dir?.close();
}

/** The vz record in file; undefined when there is none or it is another driver's; throws VzStateError when broken. */
export async function readVzRecord(file: string): Promise<VzRecord | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return parseVzRecord(text, file);
}
