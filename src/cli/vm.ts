// `vmlet vm run IMAGE -- CMD...`: a VM with no cluster. Pull the image (unless it is in the store), clone
// its disk, boot it, run CMD through the guest agent with stdin/stdout/stderr and the exit code passed
// through (as `docker run` does), then stop the VM and remove everything it left. The smallest path from
// an image to a process in a VM, and the one the pod runtime builds on.
import type { Command } from 'commander';
import path from 'node:path';
import { ConfigError, loadConfig } from '../config/load.ts';
import type { PortForward, ShareSpec } from '../drivers/hypervisor.ts';
import type { StoredImage } from '../images/store/image-store.ts';
import type { VmInstance } from '../runtime/vm-instance.ts';
import { isUserFacing } from './errors.ts';
import { open, quantity, storeOptions, type CommonFlags } from './image.ts';
import { createProgress } from './progress.ts';

const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

interface RunFlags extends CommonFlags {
  cpus?: string;
  memory?: string;
  tty?: boolean;
  interactive?: boolean;
  env?: string[];
  workdir?: string;
  user?: string;
  publish?: string[];
  volume?: string[];
  pull: string;
  bootTimeout: string;
  stopTimeout: string;
  vmDir?: string;
  verbose?: boolean;
  append?: string;
  sshUser?: string;
  sshPassword?: string;
  sshKey?: string;
}

/** Exit code of `vm run` itself failing (not the command's): 125, as `docker run` uses. */
export const VM_RUN_FAILED = 125;

export function addVmCommands(program: Command): void {
  const vm = program.command('vm').description('Run VMs locally, without a cluster');
  storeOptions(vm.command('run <image> [command...]'))
    .description('Boot a VM from an image, run a command in it through the guest agent, then stop and remove the VM')
    // Options after IMAGE belong to the command: `vmlet vm run IMAGE ls -l` as with `docker run`.
    .passThroughOptions()
    .option('--cpus <n>', 'virtual CPUs (default: the image\'s cpuCount)')
    .option('--memory <bytes>', 'memory, e.g. 1Gi (default: the image\'s memorySize)')
    .option('-i, --interactive', 'keep stdin open and pass it to the command')
    .option('-t, --tty', 'give the command a terminal')
    .option('-e, --env <NAME=value>', 'environment variable for the command (repeatable)', collect)
    .option('-w, --workdir <dir>', 'working directory in the guest')
    .option('-u, --user <user>', 'user in the guest: name, uid or uid:gid')
    .option('-p, --publish <[addr:]host:guest>', 'forward a host TCP port to a guest port (repeatable)', collect)
    .option('-v, --volume <host-dir:guest-path[:ro]>', 'share a host directory with the guest over virtiofs (repeatable)', collect)
    .option('--pull <policy>', 'missing (pull when not in the store), always, or never', 'missing')
    .option('--boot-timeout <seconds>', 'from power-on to an answering agent', '120')
    .option('--stop-timeout <seconds>', 'for the guest to shut down before it is killed', '30')
    .option('--append <args>', 'added to the kernel command line (images booted by direct kernel boot)')
    .option('--ssh-user <name>', 'for images without vmlet-agent: log in over SSH and install the agent')
    .option('--ssh-password <password>', 'password for --ssh-user (or VMLET_SSH_PASSWORD)')
    .option('--ssh-key <file>', 'private key for --ssh-user')
    .option('--vm-dir <dir>', 'where the VM\'s working directory goes (default: <store>/vms)')
    .option('--verbose', 'say what happens, on stderr')
    .action(async (ref: string, command: string[], flags: RunFlags) => {
      process.exitCode = await runVm(ref, command, flags).catch((err: unknown) => {
        const e = err as Error & { reason?: string };
        const known = e.reason !== undefined || e instanceof ConfigError || isUserFacing(e);
        process.stderr.write(`vmlet: ${known ? e.message : (e.stack ?? e.message)}\n`);
        if (e instanceof ConfigError) return 2;
        // As a shell (and docker run) says it: 127 for a command that is not there, 126 for one that cannot run.
        if (e.reason === 'StartFailed') return /not found|ENOENT/.test(e.message) ? 127 : 126;
        return VM_RUN_FAILED;
      });
    });
}

async function runVm(ref: string, argv: string[], flags: RunFlags): Promise<number> {
  // `vm run IMAGE -- CMD`: with options passed through after IMAGE, the `--` arrives as an argument.
  const command = argv[0] === '--' ? argv.slice(1) : argv;
  if (command.length === 0) throw new ConfigError('vm run needs a command after the image, e.g. vmlet vm run IMAGE -- uname -a');
  if (!['missing', 'always', 'never'].includes(flags.pull)) throw new ConfigError(`--pull must be missing, always or never (got "${flags.pull}")`);
  const say = (text: string) => {
    if (flags.verbose) process.stderr.write(`vmlet: ${text}\n`);
  };
  const cpus = flags.cpus === undefined ? undefined : wholeNumber('--cpus', flags.cpus);
  const memoryMiB = flags.memory === undefined ? undefined : Math.ceil(quantity('--memory', flags.memory) / 1024 / 1024);
  const env = Object.fromEntries((flags.env ?? []).map((e) => {
    const eq = e.indexOf('=');
    if (eq <= 0) throw new ConfigError(`--env "${e}" must be NAME=value`);
    return [e.slice(0, eq), e.slice(eq + 1)];
  }));
  const forwards = (flags.publish ?? []).map(parsePublish);
  const volumes = (flags.volume ?? []).map(parseVolume);
  const bootTimeoutMs = wholeNumber('--boot-timeout', flags.bootTimeout) * 1000;
  const stopTimeoutMs = wholeNumber('--stop-timeout', flags.stopTimeout) * 1000;

  const sshPassword = flags.sshPassword ?? process.env.VMLET_SSH_PASSWORD;
  if ((sshPassword || flags.sshKey) && !flags.sshUser) throw new ConfigError('--ssh-password and --ssh-key need --ssh-user');
  // The VM runtime (QEMU driver, SSH, agent client) is loaded here, not by every `vmlet` command.
  const [{ QemuDriver }, { loadSshCredentials }, { pullImage }, { VmInstance }] = await Promise.all([
    import('../drivers/qemu/index.ts'),
    import('../agent/ssh/credentials.ts'),
    import('../images/pull.ts'),
    import('../runtime/vm-instance.ts'),
  ]);
  const ssh = flags.sshUser
    ? { credentials: await loadSshCredentials({ username: flags.sshUser, ...(sshPassword ? { password: sshPassword } : {}), ...(flags.sshKey ? { privateKeyFile: flags.sshKey } : {}) }).catch((err: Error) => {
      throw new ConfigError(err.message);
    }) }
    : undefined;

  const { store, registry } = await open(flags);
  let image: StoredImage | undefined;
  try {
    const local = flags.pull === 'always' ? undefined : await store.resolve(ref);
    image = local ? await store.get(local) : undefined;
    if (!image) {
      if (flags.pull === 'never') throw new ConfigError(`image ${ref} is not in the store and --pull=never`);
      const progress = createProgress();
      try {
        image = (await pullImage({ store, registry, image: ref, onProgress: (p) => progress.update(p.layer === 'image' ? 'total' : `layer ${p.layer}`, p.bytes, p.total) })).image;
      } finally {
        progress.stop();
      }
    }
  } finally {
    await registry.close();
  }

  const driver = await QemuDriver.open();
  say(`booting ${image.names[0] ?? image.digest} with ${driver.describe()}`);
  const shares: ShareSpec[] = volumes.map((v, i) => ({ tag: `vol${i}`, hostPath: v.hostPath, readOnly: v.readOnly }));
  const vmDir = flags.vmDir ?? loadConfig({ env: process.env }).vmDir ?? path.join(store.root, 'vms');
  const instance = await VmInstance.launch({
    store, driver, vmDir, image, name: `vm run ${ref}`,
    ...(cpus !== undefined ? { cpus } : {}),
    ...(memoryMiB !== undefined ? { memoryMiB } : {}),
    network: { mode: 'user', forwards },
    shares,
    bootTimeoutMs,
    ...(flags.append ? { extraCmdline: flags.append } : {}),
    ...(ssh ? { ssh } : {}),
    onPhase: (phase, ms) => say(`${phase} after ${(ms / 1000).toFixed(1)} s`),
  });
  // From here on the VM exists: whatever happens, it is stopped and removed before vmlet exits.
  let interrupted = 0;
  const onSignal = () => {
    interrupted++;
    if (interrupted > 1) void instance.dispose().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    for (const [i, v] of volumes.entries()) {
      await instance.agent.mount({ tag: `vol${i}`, mountPath: v.guestPath, readOnly: v.readOnly });
    }
    return await execAttached(instance, command, { env, cwd: flags.workdir, user: flags.user, interactive: !!flags.interactive, tty: !!flags.tty });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    const exit = await instance.stop(stopTimeoutMs);
    say(`VM stopped (${exit.reason}: ${exit.message})`);
  }
}

interface AttachOptions {
  env: Record<string, string>;
  cwd: string | undefined;
  user: string | undefined;
  interactive: boolean;
  tty: boolean;
}

/** Runs argv in the guest with this process's stdio attached; resolves with its exit code. */
async function execAttached(instance: VmInstance, argv: string[], o: AttachOptions): Promise<number> {
  const stdin = process.stdin;
  const useTty = o.tty;
  const size = () => ({ rows: process.stdout.rows || 24, cols: process.stdout.columns || 80 });
  const proc = await instance.agent.exec({
    argv,
    env: o.env,
    ...(o.cwd ? { cwd: o.cwd } : {}),
    ...(o.user ? { user: o.user } : {}),
    stdin: o.interactive,
    ...(useTty ? { tty: { ...size(), term: process.env.TERM ?? 'xterm' } } : {}),
  });
  const forward = (signal: NodeJS.Signals) => void proc.signal(signal).catch(() => undefined);
  const onResize = () => void proc.resize(size().rows, size().cols).catch(() => undefined);
  process.on('SIGINT', forward);
  process.on('SIGTERM', forward);
  if (useTty) process.stdout.on('resize', onResize);
  const rawMode = useTty && o.interactive && stdin.isTTY;
  if (rawMode) stdin.setRawMode(true);
  try {
    if (o.interactive && proc.stdin) stdin.pipe(proc.stdin);
    proc.stdout.pipe(process.stdout, { end: false });
    proc.stderr?.pipe(process.stderr, { end: false });
    const exit = await proc.exited;
    return exit.exitCode;
  } finally {
    if (o.interactive) {
      stdin.unpipe();
      stdin.pause();
    }
    if (rawMode) stdin.setRawMode(false);
    process.off('SIGINT', forward);
    process.off('SIGTERM', forward);
    process.stdout.off('resize', onResize);
  }
}

function wholeNumber(flag: string, text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < 1) throw new ConfigError(`${flag} must be a whole number above 0 (got "${text}")`);
  return n;
}

/** `-p [addr:]hostPort:guestPort`. */
export function parsePublish(text: string): PortForward {
  const parts = text.split(':');
  const port = (p: string | undefined) => {
    const n = Number(p);
    if (!p || !/^\d+$/.test(p) || n < 1 || n > 65535) throw new ConfigError(`--publish "${text}" must be [address:]hostPort:guestPort with ports 1-65535`);
    return n;
  };
  if (parts.length === 2) return { protocol: 'tcp', hostPort: port(parts[0]), guestPort: port(parts[1]) };
  if (parts.length === 3 && parts[0]) return { protocol: 'tcp', hostAddress: parts[0], hostPort: port(parts[1]), guestPort: port(parts[2]) };
  throw new ConfigError(`--publish "${text}" must be [address:]hostPort:guestPort`);
}

/** `-v hostDir:guestPath[:ro]`. */
export function parseVolume(text: string): { hostPath: string; guestPath: string; readOnly: boolean } {
  const parts = text.split(':');
  const mode = parts.length === 3 ? parts[2] : undefined;
  if (parts.length < 2 || parts.length > 3 || !parts[0] || !parts[1]?.startsWith('/') || (mode !== undefined && mode !== 'ro' && mode !== 'rw')) {
    throw new ConfigError(`--volume "${text}" must be hostDir:/guest/path or hostDir:/guest/path:ro`);
  }
  return { hostPath: path.resolve(parts[0]), guestPath: parts[1], readOnly: mode === 'ro' };
}
