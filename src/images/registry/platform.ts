// Platforms (os/architecture/variant) as containerd normalizes and matches them, to pick the manifest
// of an image index that this host can run.
import type { Descriptor, ImageIndex, Platform } from './types.ts';

// Architecture spellings (uname, Go, Debian) → the OCI/Go name, with the variant a name implies.
const ARCHITECTURES: Record<string, { architecture: string; variant?: string }> = {
  x86_64: { architecture: 'amd64' },
  'x86-64': { architecture: 'amd64' },
  amd64: { architecture: 'amd64' },
  i386: { architecture: '386' },
  i686: { architecture: '386' },
  aarch64: { architecture: 'arm64' },
  arm64: { architecture: 'arm64' },
  armhf: { architecture: 'arm', variant: 'v7' },
  armel: { architecture: 'arm', variant: 'v6' },
};

/** Lowercase os, Go architecture names, "v8" as arm64's implicit variant and "v7" as arm's. */
export function normalizePlatform(p: Platform): Platform {
  const os = p.os.toLowerCase() === 'macos' ? 'darwin' : p.os.toLowerCase();
  const known = ARCHITECTURES[p.architecture.toLowerCase()];
  const architecture = known?.architecture ?? p.architecture.toLowerCase();
  let variant = p.variant?.toLowerCase() || known?.variant;
  if (variant && /^\d+$/.test(variant)) variant = `v${variant}`;
  if (architecture === 'arm64' && !variant) variant = 'v8';
  if (architecture === 'arm' && !variant) variant = 'v7';
  return { ...p, os, architecture, ...(variant ? { variant } : { variant: undefined }) };
}

/** Whether an index entry's platform is the wanted one (a wanted variant must match exactly). */
export function platformMatches(want: Platform, have: Platform | undefined): boolean {
  if (!have) return false;
  const w = normalizePlatform(want);
  const h = normalizePlatform(have);
  if (w.os !== h.os || w.architecture !== h.architecture) return false;
  return !want.variant || w.variant === h.variant;
}

/** The index entry for the platform: an exact variant match first, then the first os/architecture match. */
export function selectManifest(index: ImageIndex, want: Platform): Descriptor | undefined {
  const candidates = index.manifests.filter((d) => platformMatches(want, d.platform));
  const w = normalizePlatform(want);
  return candidates.find((d) => normalizePlatform(d.platform!).variant === w.variant) ?? candidates[0];
}

export function formatPlatform(p: Platform | undefined): string {
  if (!p) return 'unknown';
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

/** This machine's platform in OCI terms (darwin/arm64, linux/amd64, …). */
export function hostPlatform(): Platform {
  const architecture = process.arch === 'x64' ? 'amd64' : process.arch === 'ia32' ? '386' : process.arch;
  return normalizePlatform({ os: process.platform, architecture });
}
