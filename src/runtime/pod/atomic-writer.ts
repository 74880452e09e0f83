// The kubelet's AtomicWriter layout for configMap, secret, downwardAPI and projected volumes, so that a
// process in the VM never reads half of an update:
//
//   <dir>/..2026_12_03_17_20_01.123456789/<files>   this version's files, with their modes
//   <dir>/..data -> ..2026_12_03_17_20_01.123456789  swapped by one rename(2)
//   <dir>/<top-level name> -> ..data/<top-level name>
//
// The guest sees the directory through virtiofs; the symlinks are relative, so they resolve inside the
// guest's mount. Writing the same content again changes nothing (and returns false).
import { chmod, lstat, mkdir, readdir, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { VolumeFile } from './volumes.ts';

const DATA = '..data';

/** Writes `files` as the volume's new content; false when it already holds exactly these files. */
export async function writeVolumeAtomically(dir: string, files: VolumeFile[]): Promise<boolean> {
  await mkdir(dir, { recursive: true });
  for (const f of files) {
    const normal = path.posix.normalize(f.path);
    if (path.posix.isAbsolute(normal) || normal.startsWith('..') || normal === '.') throw new Error(`path ${f.path} leaves the volume`);
  }
  const current = await readlink(path.join(dir, DATA)).catch(() => undefined);
  if (current && (await sameContent(path.join(dir, current), files))) return false;

  const version = `..${timestamp()}`;
  const versionDir = path.join(dir, version);
  for (const f of files) {
    const file = path.join(versionDir, f.path);
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, f.data, { mode: f.mode });
    await chmod(file, f.mode);
  }
  await mkdir(versionDir, { recursive: true });
  const tmp = path.join(dir, `${DATA}_tmp`);
  await rm(tmp, { force: true });
  await symlink(version, tmp);
  await rename(tmp, path.join(dir, DATA));

  const top = new Set(files.map((f) => path.posix.normalize(f.path).split('/')[0]!));
  for (const name of top) {
    const link = path.join(dir, name);
    const st = await lstat(link).catch(() => undefined);
    if (st?.isSymbolicLink()) continue;
    if (st) await rm(link, { recursive: true, force: true });
    await symlink(path.posix.join(DATA, name), link);
  }
  // What the new version no longer has, and the old versions.
  for (const entry of await readdir(dir)) {
    if (entry === DATA || entry === version) continue;
    if (entry.startsWith('..') || !top.has(entry)) await rm(path.join(dir, entry), { recursive: true, force: true });
  }
  return true;
}

async function sameContent(versionDir: string, files: VolumeFile[]): Promise<boolean> {
  const found = await listFiles(versionDir);
  if (found.length !== files.length) return false;
  for (const f of files) {
    const file = path.join(versionDir, f.path);
    const st = await lstat(file).catch(() => undefined);
    if (!st?.isFile() || (st.mode & 0o7777) !== f.mode) return false;
    if ((await readFile(file, 'utf8')) !== f.data) return false;
  }
  return true;
}

async function listFiles(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await listFiles(path.join(dir, e.name), rel)));
    else out.push(rel);
  }
  return out;
}

/** "2026_12_03_17_20_01.123456789"-like, as the kubelet names versions, plus a counter against clashes. */
let counter = 0;
function timestamp(): string {
  const d = new Date();
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  counter = (counter + 1) % 1_000_000;
  return `${d.getUTCFullYear()}_${p(d.getUTCMonth() + 1)}_${p(d.getUTCDate())}_${p(d.getUTCHours())}_${p(d.getUTCMinutes())}_${p(d.getUTCSeconds())}.${p(d.getUTCMilliseconds(), 3)}${p(counter, 6)}`;
}
