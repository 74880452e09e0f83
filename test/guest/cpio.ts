// Writes an initramfs: a cpio archive in the kernel's "newc" format, built in memory.
// Written here rather than with cpio(1) for two reasons: the host needs no cpio package, and every
// entry gets owner root and any mode we like, including the /dev/console device node, which an
// unprivileged build could not create with mknod.

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Buffer; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'chardev'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

/** The archive, uncompressed: the kernel unpacks it without a decompression step, which TCG would slow. */
export function newcArchive(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of [...entries, { type: 'file', path: 'TRAILER!!!', data: Buffer.alloc(0), mode: 0 } as const]) {
    const { mode, data, rdev } = describe(e);
    const name = Buffer.from(`${e.path.replace(/^\/+/, '')}\0`);
    const isTrailer = e.path === 'TRAILER!!!';
    const fields = [
      isTrailer ? 0 : ino++, mode, 0, 0, // ino, mode, uid, gid
      e.type === 'dir' ? 2 : 1, 0, data.length, // nlink, mtime (0: reproducible), filesize
      0, 0, rdev[0], rdev[1], // dev major/minor, rdev major/minor
      name.length, 0, // namesize (with NUL), check
    ];
    parts.push(Buffer.from(`070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}`), name);
    parts.push(pad(110 + name.length), data, pad(data.length));
  }
  return Buffer.concat(parts);
}

function describe(e: CpioEntry): { mode: number; data: Buffer; rdev: [number, number] } {
  switch (e.type) {
    case 'dir':
      return { mode: S_IFDIR | (e.mode ?? 0o755), data: Buffer.alloc(0), rdev: [0, 0] };
    case 'file':
      return { mode: S_IFREG | (e.mode ?? 0o644), data: e.data, rdev: [0, 0] };
    case 'symlink':
      return { mode: S_IFLNK | 0o777, data: Buffer.from(e.target), rdev: [0, 0] };
    case 'chardev':
      return { mode: S_IFCHR | (e.mode ?? 0o600), data: Buffer.alloc(0), rdev: [e.major, e.minor] };
  }
}

// newc aligns both the header+name and the file data to 4 bytes.
function pad(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}
