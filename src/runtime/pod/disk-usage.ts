// Bytes a directory tree takes on disk (allocated blocks, like `du`), for emptyDir sizeLimit. Symlinks are
// counted, not followed; a file that vanishes while walking is skipped.
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';

export async function diskUsage(dir: string): Promise<number> {
  const st = await lstat(dir).catch(() => undefined);
  if (!st) return 0;
  let total = st.blocks * 512;
  if (!st.isDirectory()) return total;
  for (const name of await readdir(dir).catch(() => [] as string[])) total += await diskUsage(path.join(dir, name));
  return total;
}
