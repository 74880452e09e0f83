// The guest agent as one CommonJS file that Node runs in the guest (Node builtins only; CommonJS because
// it starts ~0.4 s sooner than an ES module under TCG). From an installed vmlet (running from dist/) it is
// dist/agent/vmlet-agent.cjs, made by `npm run build`; from the TypeScript sources it is built with
// esbuild into ~/.cache/vmlet/agent-<hash of the sources>/, so an edited agent is never a stale one.
//
// As a script: `node dist/agent/bundle.js [OUT]` (what `npm run build` runs) writes the bundle to OUT.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
/** The package root: src/agent/ and dist/agent/ are both two levels below it. */
const ROOT = resolve(HERE, '..', '..');
const SOURCE_DIRS = [join(ROOT, 'src', 'agent', 'guest'), join(ROOT, 'src', 'agent', 'protocol')];
const ENTRY = join(ROOT, 'src', 'agent', 'guest', 'main.ts');
export const BUNDLE_NAME = 'vmlet-agent.cjs';

/** The path of the agent bundle for this vmlet, building it first when running from the sources. */
export async function ensureAgentBundle(): Promise<string> {
  const runningFromDist = relative(join(ROOT, 'dist'), HERE).startsWith('..') === false;
  const built = join(ROOT, 'dist', 'agent', BUNDLE_NAME);
  if (runningFromDist) {
    if (!existsSync(built)) throw new Error(`${built} is missing: this vmlet was built without its agent (npm run build makes it)`);
    return built;
  }
  const hash = await agentSourceHash();
  const out = join(cacheDir(), `agent-${hash}`, BUNDLE_NAME);
  if (!existsSync(out)) await buildAgentBundle(out);
  return out;
}

/** sha256 (16 hex digits) of the agent's sources, the version and esbuild's: the cache key of a bundle. */
export async function agentSourceHash(): Promise<string> {
  const hash = createHash('sha256');
  const files = (await Promise.all(SOURCE_DIRS.map(listTs))).flat().sort();
  files.push(join(ROOT, 'src', 'agent', 'bundle.ts')); // how it is bundled
  for (const file of files) hash.update(`${relative(ROOT, file)}\0`).update(await readFile(file));
  hash.update(await agentVersion());
  return hash.digest('hex').slice(0, 16);
}

/** Bundles the agent into `out` (written next to it, then renamed: no half bundle is ever seen). */
export async function buildAgentBundle(out: string): Promise<void> {
  const esbuild = await import('esbuild').catch(() => {
    throw new Error('cannot build the agent: esbuild is not installed (it is a devDependency; an installed vmlet ships dist/agent/vmlet-agent.cjs)');
  });
  await mkdir(dirname(out), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  try {
    await esbuild.build({
      entryPoints: [ENTRY],
      outfile: tmp,
      bundle: true,
      platform: 'node',
      format: 'cjs',
      target: 'node20',
      minifySyntax: true,
      legalComments: 'none',
      define: { VMLET_AGENT_VERSION: JSON.stringify(await agentVersion()) },
      logLevel: 'silent',
    });
    await rename(tmp, out);
  } finally {
    await rm(tmp, { force: true });
  }
}

async function agentVersion(): Promise<string> {
  const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

function cacheDir(): string {
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'vmlet');
}

async function listTs(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.filter((e) => e.isFile() && e.name.endsWith('.ts')).map((e) => join(e.parentPath, e.name));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const out = resolve(process.argv[2] ?? join(ROOT, 'dist', 'agent', BUNDLE_NAME));
  buildAgentBundle(out).then(
    () => console.log(`vmlet-agent bundle: ${out}`),
    (err: unknown) => {
      console.error(`vmlet-agent bundle: ${err instanceof Error ? err.message : String(err)}`);
      process.exit(1);
    },
  );
}
