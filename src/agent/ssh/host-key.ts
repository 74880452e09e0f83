// Trust on first use for a VM's SSH host key. The first connection to a VM pins its key's fingerprint
// in a file the caller names (one per VM, in the VM's dir); every later connection must offer the same
// key. Agoda's vz-kubelet checks no host key at all. Fingerprints are OpenSSH's: "SHA256:" + unpadded
// base64 of the SHA-256 of the key blob, so they can be compared with `ssh-keygen -lf`.
import { createHash } from 'node:crypto';
import { rename, writeFile } from 'node:fs/promises';
import { readFileIfExists } from '../../host/files.ts';

export interface PinnedHostKey {
  fingerprint: string;
  /** e.g. "ssh-ed25519". */
  keyType: string;
  /** host:port of the first connection, for the reader of the file. */
  address: string;
  pinnedAt: string;
}

export type HostKeyCheck =
  | { ok: true; fingerprint: string; keyType: string; newlyPinned: boolean }
  | { ok: false; fingerprint: string; keyType: string; pinned: PinnedHostKey };

/** OpenSSH's SHA-256 fingerprint of a public key blob (SSH wire format). */
export function fingerprint(keyBlob: Buffer): string {
  return `SHA256:${createHash('sha256').update(keyBlob).digest('base64').replace(/=+$/, '')}`;
}

/** The key type named at the start of an SSH public key blob. */
export function keyType(keyBlob: Buffer): string {
  if (keyBlob.length < 4) return 'unknown';
  const len = keyBlob.readUInt32BE(0);
  return len > 0 && 4 + len <= keyBlob.length ? keyBlob.subarray(4, 4 + len).toString('latin1') : 'unknown';
}

/** What the pin file holds, or undefined if there is none yet. A file that is not a pin is an error. */
export async function readPin(file: string): Promise<PinnedHostKey | undefined> {
  const text = await readFileIfExists(file);
  if (text === undefined) return undefined;
  const pin = JSON.parse(text) as Partial<PinnedHostKey>;
  if (typeof pin.fingerprint !== 'string' || !pin.fingerprint.startsWith('SHA256:')) {
    throw new Error(`${file} holds no pinned SSH host key fingerprint`);
  }
  return { fingerprint: pin.fingerprint, keyType: pin.keyType ?? 'unknown', address: pin.address ?? '', pinnedAt: pin.pinnedAt ?? '' };
}

/**
 * Compares the offered key with the pin in `file`; with no pin yet, pins it (written to a temporary
 * name and renamed, so a crash never leaves half a pin that would refuse the VM forever).
 */
export async function checkHostKey(file: string, keyBlob: Buffer, address: string): Promise<HostKeyCheck> {
  const offered = { fingerprint: fingerprint(keyBlob), keyType: keyType(keyBlob) };
  const pinned = await readPin(file);
  if (pinned) return pinned.fingerprint === offered.fingerprint ? { ok: true, ...offered, newlyPinned: false } : { ok: false, ...offered, pinned };
  const pin: PinnedHostKey = { ...offered, address, pinnedAt: new Date().toISOString() };
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, `${JSON.stringify(pin, null, 2)}\n`);
  await rename(tmp, file);
  return { ok: true, ...offered, newlyPinned: true };
}
