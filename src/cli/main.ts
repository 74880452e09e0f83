// The `vmlet` command: parses the command line and runs a subcommand. Errors the user can fix end as one
// line on stderr ("vmlet: ...") and a non-zero exit: 2 for bad configuration, 1 for everything else.
import { Command, Option } from 'commander';
import { ConfigError, SETTINGS, loadConfig } from '../config/load.ts';
import { KubeconfigError } from '../kube/errors.ts';
import { createLogger } from '../observability/log.ts';
import { addAgentCommands } from './agent.ts';
import { addDoctorCommand } from './doctor.ts';
import { addServiceCommands } from './service.ts';
import { isUserFacing } from './errors.ts';
import { addImageCommands } from './image.ts';
import { addLocalCommands } from './local.ts';
import { addVmCommands } from './vm.ts';
import { KUBELET_VERSION, VMLET_VERSION } from '../version.ts';

const STOP_TIMEOUT_MS = 15_000;

export function buildProgram(): Command {
  const program = new Command('vmlet')
    .description('A Kubernetes node agent that runs pods as virtual machines.')
    .version(`vmlet ${VMLET_VERSION} (kubelet ${KUBELET_VERSION})`, '-v, --version')
    .showHelpAfterError()
    // Program options (-v) only before the subcommand, so `vm run -v` is a volume and `vm run IMAGE CMD -x`
    // passes -x to CMD.
    .enablePositionalOptions()
    .configureOutput({ outputError: (text, write) => write(text) });

  const run = program
    .command('run')
    .description('Join the cluster as a Node and run its pods as VMs; with --pod-manifest-path and no kubeconfig, run the static pods of that directory without an API server')
    .option('-c, --config <file>', 'YAML configuration file (settings in docs/CONFIGURATION.md)');
  for (const setting of SETTINGS) {
    const repeatable = setting.kind === 'labels' || setting.kind === 'taints' || setting.kind === 'list';
    const option = new Option(`--${setting.flag} ${setting.kind === 'bool' ? '[value]' : '<value>'}`, `${setting.help} [env ${setting.env}]`);
    if (repeatable) option.argParser((value: string, previous: string[] | undefined) => [...(previous ?? []), value]);
    run.addOption(option);
  }
  run.option('--no-taint', 'register the Node without taints (same as --register-with-taint none)');
  run.action(async (opts: Record<string, unknown>) => {
    const flags = { ...opts };
    if (opts.taint === false) flags.registerWithTaint = ['none'];
    process.exitCode = await runDaemon(opts.config as string | undefined, flags);
  });

  addImageCommands(program);
  addVmCommands(program);
  addAgentCommands(program);
  addLocalCommands(program);
  addDoctorCommand(program);
  addServiceCommands(program);

  program
    .command('version')
    .description('Print the version')
    .action(() => console.log(`vmlet ${VMLET_VERSION} (kubelet ${KUBELET_VERSION})`));
  return program;
}

async function runDaemon(configFile: string | undefined, flags: Record<string, unknown>): Promise<number> {
  const config = loadConfig({ file: configFile, env: process.env, flags });
  const log = createLogger(config.logLevel, { node: config.nodeName });
  // Loaded here, not at the top: the daemon brings the Kubernetes client and the kubelet server (about
  // 0.5 s of module loading), which `vmlet image`, `vm`, `ps` and the other commands do not need.
  const { Daemon } = await import('../daemon.ts');
  const daemon = new Daemon(config, log);

  let stopping = false;
  const stopped = new Promise<number>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        log.warn({ signal }, 'second signal: exiting at once');
        process.exit(1);
      }
      stopping = true;
      log.info({ signal }, 'stopping');
      const force = setTimeout(() => {
        log.error('stop took too long; exiting');
        resolve(1);
      }, STOP_TIMEOUT_MS);
      force.unref();
      daemon.stop().then(
        () => {
          clearTimeout(force);
          log.info('stopped');
          resolve(0);
        },
        (err: unknown) => {
          log.error({ err }, 'error while stopping');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });

  try {
    await daemon.start();
  } catch (err) {
    await daemon.stop().catch(() => undefined);
    throw err;
  }
  return stopped;
}

/** Entry point: runs the program and maps known errors to one-line messages and exit codes. */
export async function main(argv: string[] = process.argv): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    // StartupError (daemon.ts) by name: importing the class would load the daemon for every command.
    const known = err instanceof ConfigError || err instanceof KubeconfigError || (err instanceof Error && err.name === 'StartupError') || isUserFacing(err);
    const text = known ? (err as Error).message : err instanceof Error ? (err.stack ?? err.message) : String(err);
    process.stderr.write(`vmlet: ${text}\n`);
    process.exitCode = err instanceof ConfigError ? 2 : 1;
  }
  // Timers of a stopped daemon are unref'd or cleared; exit explicitly so a stray handle cannot hold us.
  if (process.exitCode !== undefined) setImmediate(() => process.exit(process.exitCode));
}
