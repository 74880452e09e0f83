// A lock between processes on one host: a directory created atomically (mkdir), with its owner's PID
// inside. A lock whose owner is gone (kill -9) is stale and taken over, so a crash never blocks the next
// holder; a lock without a PID file is either being taken right now or was left by a process that died
// between mkdir and writing its PID, and only its age tells which.
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const NO_PID_STALE_MS = 30_000;

/** Takes the lock if it is free or stale; false if a live process holds it. */
export async function tryDirLock(dir: string): Promise<boolean> {
  await mkdir(path.dirname(dir), { recursive: true });
  try {
    await mkdir(dir);
    await writeFile(path.join(dir, 'pid'), String(process.pid));
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const pidText = await readFile(path.join(dir, 'pid'), 'utf8').catch(() => undefined);
  const stale =
    pidText === undefined
      ? Date.now() - (await stat(dir).catch(() => ({ mtimeMs: Date.now() }))).mtimeMs > NO_PID_STALE_MS
      : !alive(Number(pidText));
  if (!stale) return false;
  await rm(dir, { recursive: true, force: true });
  return tryDirLock(dir);
}

/** Runs `fn` holding the lock, waiting for it as long as a live process holds it. */
export async function withDirLock<T>(dir: string, fn: () => Promise<T>, pollMs = 200): Promise<T> {
  while (!(await tryDirLock(dir))) await sleep(pollMs);
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
