// Kernel modules of an extracted kernel package: finds them, reads each one's dependencies from its own
// .modinfo section, and orders a set of wanted modules with their dependencies for insmod.
// Debian's package ships no modules.dep (depmod writes it at install time, as root), and the host may
// have no kmod, so the dependencies come straight from the .ko files.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

/** Module name (as the kernel spells it: underscores) -> .ko path. */
export async function findModules(modulesDir: string): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  for (const entry of await readdir(modulesDir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile() && entry.name.endsWith('.ko')) {
      found.set(entry.name.slice(0, -3).replaceAll('-', '_'), join(entry.parentPath, entry.name));
    }
  }
  return found;
}

/**
 * The wanted modules and everything they depend on, dependencies first: the order insmod needs,
 * since insmod (unlike modprobe) loads exactly one file. Built-in modules are not in `available`
 * and are skipped when something depends on them.
 */
export async function moduleLoadOrder(wanted: string[], available: Map<string, string>): Promise<string[]> {
  const order: string[] = [];
  const visiting = new Set<string>();
  const visit = async (name: string, wantedBy: string | undefined): Promise<void> => {
    if (order.includes(name)) return;
    const path = available.get(name);
    if (!path) {
      if (wantedBy) return; // a dependency that is built into the kernel
      throw new Error(`kernel module ${name} is neither in the kernel package nor built in`);
    }
    if (visiting.has(name)) throw new Error(`kernel module dependency cycle through ${name}`);
    visiting.add(name);
    for (const dep of modinfo(await readFile(path)).get('depends') ?? []) await visit(dep, name);
    visiting.delete(name);
    order.push(name);
  };
  for (const name of wanted) await visit(name, undefined);
  return order;
}

/** The key=value strings of an ELF64 module's .modinfo section; "depends" is split on commas. */
export function modinfo(ko: Buffer): Map<string, string[]> {
  if (ko.readUInt32BE(0) !== 0x7f454c46 || ko[4] !== 2 || ko[5] !== 1) {
    throw new Error('not a little-endian ELF64 kernel module');
  }
  const shoff = Number(ko.readBigUInt64LE(0x28));
  const shentsize = ko.readUInt16LE(0x3a);
  const shnum = ko.readUInt16LE(0x3c);
  const section = (i: number): { name: number; offset: number; size: number } => {
    const at = shoff + i * shentsize;
    return { name: ko.readUInt32LE(at), offset: Number(ko.readBigUInt64LE(at + 0x18)), size: Number(ko.readBigUInt64LE(at + 0x20)) };
  };
  const names = section(ko.readUInt16LE(0x3e));
  const info = new Map<string, string[]>();
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    const nameEnd = ko.indexOf(0, names.offset + s.name);
    if (ko.toString('latin1', names.offset + s.name, nameEnd) !== '.modinfo') continue;
    for (const pair of ko.toString('latin1', s.offset, s.offset + s.size).split('\0')) {
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const key = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      info.set(key, key === 'depends' ? value.split(',').filter(Boolean) : [...(info.get(key) ?? []), value]);
    }
  }
  return info;
}
