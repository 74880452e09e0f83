// What a Mac offers the vz driver: the helper binary (where it is, whether it is signed with the
// virtualization entitlement) and the macOS version. Shell only; what the answers mean is decided by the
// caller (probe.ts, `vmlet doctor`).
import { execFile } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const HELPER_NAME = 'vmlet-vz';
export const VIRTUALIZATION_ENTITLEMENT = 'com.apple.security.virtualization';

/** Where the helper is looked for: $VMLET_VZ_HELPER, the package's own build, then next to node, then PATH. */
export function helperCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
  const fromPath = (env.PATH ?? '').split(path.delimiter).filter(Boolean).map((d) => path.join(d, HELPER_NAME));
  return [
    ...(env.VMLET_VZ_HELPER ? [env.VMLET_VZ_HELPER] : []),
    path.join(root, 'native/vz/.build/release', HELPER_NAME),
    path.join(root, 'bin', HELPER_NAME),
    ...fromPath,
  ];
}

export async function findHelper(candidates: string[] = helperCandidates()): Promise<string | undefined> {
  for (const c of candidates) {
    try {
      await access(c, constants.X_OK);
      return c;
    } catch {
      // next
    }
  }
  return undefined;
}

/** Does this entitlements plist (codesign's XML) grant the key as true? Pure. */
export function hasEntitlement(plistXml: string, key: string = VIRTUALIZATION_ENTITLEMENT): boolean {
  const escaped = key.replace(/\./g, '\\.');
  return new RegExp(`<key>\\s*${escaped}\\s*</key>\\s*<true\\s*/>`).test(plistXml);
}

export type SignatureCheck = { signed: true; entitled: boolean } | { signed: false; why: string };

/** `codesign -d --entitlements - --xml BINARY`: is it signed, and with the virtualization entitlement? */
export async function checkSignature(binary: string): Promise<SignatureCheck> {
  try {
    const { stdout } = await run('codesign', ['-d', '--entitlements', '-', '--xml', binary], { timeout: 10_000 });
    return { signed: true, entitled: hasEntitlement(stdout) };
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') return { signed: false, why: 'codesign is not installed (xcode-select --install)' };
    return { signed: false, why: String(e.stderr || e.message).trim().split('\n')[0] ?? 'codesign failed' };
  }
}

/** "14.5" from `sw_vers -productVersion`; undefined off macOS. */
export async function macOSVersion(): Promise<string | undefined> {
  try {
    return (await run('sw_vers', ['-productVersion'], { timeout: 5000 })).stdout.trim() || undefined;
  } catch {
    return undefined;
  }
}

/** The major version of "14.5" (14); 0 when unknown. */
export function majorVersion(version: string | undefined): number {
  return Number(/^(\d+)/.exec(version ?? '')?.[1] ?? 0);
}
