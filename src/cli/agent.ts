// `vmlet agent build`: the guest agent as one self-contained executable (a Node single executable
// application, src/agent/sea.ts) for guests without Node. Prints the path of the cached binary, or
// copies it to --out. A darwin binary made off a Mac must be ad-hoc signed on a Mac before it runs.
import type { Command } from 'commander';
import { copyFile, rename, stat } from 'node:fs/promises';
import { checkRunnableHere, ensureAgentBinary, needsSigningOnMac, parseSeaTarget, SIGN_COMMAND, targetName } from '../agent/sea.ts';

interface BuildFlags {
  platform?: string;
  out?: string;
  nodeVersion?: string;
  runnable?: boolean;
  verbose?: boolean;
}

export function addAgentCommands(program: Command): void {
  const agent = program.command('agent').description('The guest agent (vmlet-agent)');
  agent
    .command('build')
    .description('Build vmlet-agent as a self-contained executable (Node SEA) for guests without Node')
    .option('--platform <os/arch>', 'linux/amd64, linux/arm64, darwin/arm64 or darwin/amd64 (default: this host)')
    .option('--out <file>', 'copy the binary here (default: print the path of the cached one)')
    .option('--node-version <version>', 'Node release to build on (default: this host\'s, else the newest of its major on npm)')
    .option('--runnable', 'fail unless the result runs as it is (a darwin binary built off a Mac needs signing first)')
    .option('--verbose', 'say what happens, on stderr')
    .action(async (flags: BuildFlags) => {
      process.exitCode = await build(flags).catch((err: unknown) => {
        process.stderr.write(`vmlet: ${err instanceof Error ? err.message : String(err)}\n`);
        return 1;
      });
    });
}

async function build(flags: BuildFlags): Promise<number> {
  const target = flags.platform ? parseSeaTarget(flags.platform) : parseSeaTarget(`${process.platform}/${process.arch}`);
  if (flags.runnable) checkRunnableHere(target);
  const built = await ensureAgentBinary({
    ...target,
    ...(flags.nodeVersion ? { nodeVersion: flags.nodeVersion } : {}),
    ...(flags.verbose ? { log: (m: string) => process.stderr.write(`${m}\n`) } : {}),
  });
  let path = built;
  if (flags.out) {
    const tmp = `${flags.out}.tmp-${process.pid}`;
    await copyFile(built, tmp);
    await rename(tmp, flags.out);
    path = flags.out;
  }
  const size = (await stat(path)).size;
  console.log(path);
  process.stderr.write(`vmlet-agent for ${targetName(target)}: ${(size / 2 ** 20).toFixed(1)} MiB\n`);
  if (needsSigningOnMac(target)) process.stderr.write(`not signed: run \`${SIGN_COMMAND} ${path}\` on a Mac before it runs (the SSH installer does this on the guest)\n`);
  return 0;
}
