// vm.json on disk: written atomically (a temp file, fsync, rename, fsync of the dir), so a crash at any
// moment leaves either the old record or the new one, never half of one.
import { open, readFile, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { parseRecord, serializeRecord, type VmRecord } from './state.ts';

export async function writeRecord(file: string, record: VmRecord): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  const handle = await open(tmp, 'w', 0o600);
  try {
    await handle.writeFile(serializeRecord(record));
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

/** The record in file; undefined when there is none; throws StateError when it is not one. */
export async function readRecord(file: string): Promise<VmRecord | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return parseRecord(text, file);
}
