// A lock between processes on one machine: a directory created atomically, holding its owner's PID.
// A lock whose owner is gone (kill -9) is stale and taken over, so a crash never blocks the next pull.
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export async function withDirLock<T>(dir: string, fn: () => Promise<T>, pollMs = 200): Promise<T> {
  await mkdir(path.dirname(dir), { recursive: true });
  for (;;) {
    try {
      await mkdir(dir);
      await writeFile(path.join(dir, 'pid'), String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = Number(await readFile(path.join(dir, 'pid'), 'utf8').catch(() => '0'));
      if (owner && !alive(owner)) {
        await rm(dir, { recursive: true, force: true });
        continue;
      }
      await sleep(pollMs);
    }
  }
  try {
    return await fn();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
