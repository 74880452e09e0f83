// Unpacks the ELF vmlinux from a bzImage (what extract-vmlinux does), so QEMU can start the kernel at
// its PVH entry point: under TCG that skips ~0.5 s of firmware work and in-guest decompression per boot.
// Only the LZ4 "legacy" stream that Debian's x86 kernels use is handled; for anything else this returns
// undefined and the guest boots the bzImage.

const LZ4_LEGACY_MAGIC = 0x184c2102;

export function extractVmlinux(bzImage: Buffer): Buffer | undefined {
  // Linux boot protocol (>= 2.08): setup_sects at 0x1f1, and the compressed payload's offset (from the
  // start of the protected-mode code) and length at 0x248 / 0x24c.
  if (bzImage.toString('latin1', 0x202, 0x206) !== 'HdrS') throw new Error('not a bzImage (no HdrS header)');
  const setupSects = bzImage[0x1f1] || 4;
  const start = (setupSects + 1) * 512 + bzImage.readUInt32LE(0x248);
  const payload = bzImage.subarray(start, start + bzImage.readUInt32LE(0x24c));
  if (payload.readUInt32LE(0) !== LZ4_LEGACY_MAGIC) return undefined;
  // Kbuild appends the uncompressed size as 4 little-endian bytes after every compressed kernel.
  const out = Buffer.alloc(payload.readUInt32LE(payload.length - 4));
  let at = 4;
  let written = 0;
  while (at < payload.length - 4) {
    const size = payload.readUInt32LE(at);
    at += 4;
    if (size === LZ4_LEGACY_MAGIC) continue; // lz4 -l may concatenate streams
    written = lz4Block(payload.subarray(at, at + size), out, written);
    at += size;
  }
  if (written !== out.length || out.readUInt32BE(0) !== 0x7f454c46) throw new Error('bzImage payload did not unpack to an ELF vmlinux');
  return out;
}

/** Decodes one LZ4 block into out at position o; returns the new end position. */
function lz4Block(src: Buffer, out: Buffer, o: number): number {
  let i = 0;
  const length = (n: number): number => {
    if (n !== 15) return n;
    for (let b = 255; b === 255; n += b) b = src[i++]!;
    return n;
  };
  while (i < src.length) {
    const token = src[i++]!;
    const literals = length(token >> 4);
    o += src.copy(out, o, i, i + literals);
    i += literals;
    if (i >= src.length) break; // the last sequence has literals only
    const offset = src[i]! | (src[i + 1]! << 8);
    i += 2;
    const matchLength = length(token & 15) + 4;
    // A match may overlap what it produces (offset < length), e.g. a run of one repeated byte.
    if (offset >= matchLength) out.copyWithin(o, o - offset, o - offset + matchLength);
    else for (let k = 0; k < matchLength; k++) out[o + k] = out[o - offset + k]!;
    o += matchLength;
  }
  return o;
}
