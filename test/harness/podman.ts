// A Docker-API container engine for tests: `podman system service` on a unix socket, with its own
// storage, runroot, tmp dir and config files under a temp dir, so it shares nothing with the host's
// podman or another test's. Also builds the tests' only image: a busybox root file system (Debian's
// busybox-static), imported and pushed to a test registry. Nothing comes from the internet.
//
// What podman 4.3 (Debian 12) needs on these machines, as root, without systemd as init:
// - cgroup_manager = "cgroupfs" (no systemd to ask for scopes) and runtime = "runc" (crun is not installed);
// - default_ulimits = []: podman's default RLIMIT_NOFILE (1048576) is above this machine's hard limit,
//   and runc fails every container with "error setting rlimit type 7: operation not permitted";
// - events_logger = "file" and log_driver = "k8s-file" (no journald);
// - storage driver "vfs": no mounts under the temp dir (overlay bind-mounts its home, which a crashed
//   test would leave behind); the busybox image is 2 MB, so copying it per container is cheap;
// - registries.conf marks the test registries insecure (plain HTTP): the Docker API's pull has no
//   tls-verify switch, podman decides from registries.conf, read when the service starts.
import { spawnSync } from 'node:child_process';
import { chmod, copyFile, mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'node:http';
import { runChecked, runCommand, type CommandResult, type RunOptions } from './exec.ts';
import { createFixtureDir, removeFixtureDir, spawnTracked, stopProcess, waitFor } from './processes.ts';
import { ensureTestDependencies, type TestBinaries } from './setup.ts';

export interface PodmanOptions {
  binaries?: TestBinaries;
  /** "host:port" of registries served over plain HTTP (the test registries); must be known at start. */
  insecureRegistries?: string[];
}

export interface RegistryLogin {
  /** "127.0.0.1:<port>". */
  host: string;
  username?: string;
  password?: string;
}

export interface Podman {
  /** The API socket. */
  socketPath: string;
  /** unix://<socketPath>, as DOCKER_HOST spells it. */
  dockerHost: string;
  dir: string;
  /** The service's output. */
  logFile: string;
  /** The podman CLI on the same storage and configuration as the service. */
  cli(args: string[], opts?: RunOptions): Promise<CommandResult>;
  /**
   * A busybox image (CMD /bin/sh, every applet in /bin) pushed to `registry` as
   * `<host>/vmlet-test/<name>`, then removed from podman's store so that a pull is a real pull.
   * Returns the reference.
   */
  buildBusyboxImage(registry: RegistryLogin, name?: string): Promise<string>;
  /** Removes every container (killed at once), stops the service, removes the storage and the dir. */
  stop(): Promise<void>;
}

// Fixtures still running, for the synchronous clean-up when the test process dies early.
const live = new Set<{ podman: string; env: NodeJS.ProcessEnv }>();
let exitHookInstalled = false;

export async function startPodman(opts: PodmanOptions = {}): Promise<Podman> {
  const binaries = opts.binaries ?? (await ensureTestDependencies());
  const dir = await createFixtureDir('vmlet-podman-');
  let stopService: (() => Promise<void>) | undefined;
  try {
    const env = await writeConfig(dir, binaries, opts.insecureRegistries ?? []);
    const cli = (args: string[], runOpts: RunOptions = {}): Promise<CommandResult> =>
      runCommand(binaries.podman, args, { timeoutMs: 120_000, ...runOpts, env });
    const socketPath = join(dir, 'podman.sock');
    const logFile = join(dir, 'podman.log');
    const proc = spawnTracked('podman', binaries.podman, ['system', 'service', '--time=0', `unix://${socketPath}`], { logFile, env });
    const entry = { podman: binaries.podman, env };
    live.add(entry);
    installExitHook();
    stopService = async () => {
      live.delete(entry);
      await cli(['rm', '--all', '--force', '--time', '0']);
      await stopProcess(proc);
      // Containers, images and storage go; "reset" also unmounts whatever the store still has mounted.
      await cli(['system', 'reset', '--force']);
      // conmon of an exec session waits 300 s (--exit-delay) after the session: ours, found by our dir.
      await killProcessesUnder(dir);
    };
    await waitFor(`podman API ${socketPath}/_ping`, async () => ((await ping(socketPath)) ? true : undefined), {
      timeoutMs: 30_000,
      process: proc,
    });
    const fixture: Podman = {
      socketPath,
      dockerHost: `unix://${socketPath}`,
      dir,
      logFile,
      cli,
      buildBusyboxImage: (registry, name) => buildBusyboxImage(fixture, binaries, registry, name),
      stop: async () => {
        await stopService?.();
        stopService = undefined;
        await removeFixtureDir(dir);
      },
    };
    return fixture;
  } catch (err) {
    await stopService?.();
    await removeFixtureDir(dir);
    throw err;
  }
}

/** Writes containers.conf, storage.conf and registries.conf; returns the environment that selects them. */
async function writeConfig(dir: string, binaries: TestBinaries, insecure: string[]): Promise<NodeJS.ProcessEnv> {
  const q = (s: string): string => JSON.stringify(s);
  const tmp = join(dir, 'tmp');
  await mkdir(tmp, { recursive: true });
  await writeFile(
    join(dir, 'containers.conf'),
    [
      '[containers]',
      'default_ulimits = []',
      'log_driver = "k8s-file"',
      '[engine]',
      'cgroup_manager = "cgroupfs"',
      'runtime = "runc"',
      `tmp_dir = ${q(tmp)}`,
      'events_logger = "file"',
      `events_logfile_path = ${q(join(tmp, 'events.log'))}`,
      `volume_path = ${q(join(dir, 'volumes'))}`,
      '[engine.runtimes]',
      `runc = [${q(binaries.runc)}]`,
      '',
    ].join('\n'),
  );
  await writeFile(
    join(dir, 'storage.conf'),
    ['[storage]', 'driver = "vfs"', `graphroot = ${q(join(dir, 'storage'))}`, `runroot = ${q(join(dir, 'run'))}`, ''].join('\n'),
  );
  await writeFile(
    join(dir, 'registries.conf'),
    [
      'unqualified-search-registries = []',
      'short-name-mode = "disabled"',
      ...insecure.flatMap((host) => ['[[registry]]', `location = ${q(host)}`, 'insecure = true']),
      '',
    ].join('\n'),
  );
  await writeFile(join(dir, 'auth.json'), '{}\n', { mode: 0o600 });
  return {
    ...process.env,
    CONTAINERS_CONF: join(dir, 'containers.conf'),
    CONTAINERS_STORAGE_CONF: join(dir, 'storage.conf'),
    CONTAINERS_REGISTRIES_CONF: join(dir, 'registries.conf'),
    // Credentials of `podman push --creds` must not land in (or come from) the user's auth file.
    REGISTRY_AUTH_FILE: join(dir, 'auth.json'),
  };
}

function ping(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ socketPath, path: '/_ping', timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

async function buildBusyboxImage(podman: Podman, binaries: TestBinaries, registry: RegistryLogin, name = 'busybox:1'): Promise<string> {
  const ref = `${registry.host}/vmlet-test/${name}`;
  const tarball = await busyboxTarball(podman.dir, binaries);
  const checked = async (args: string[]): Promise<void> => {
    const r = await podman.cli(args);
    if (r.code !== 0) throw new Error(`podman ${args.join(' ')} exited with ${r.code}:\n${r.stderr || r.stdout}`);
  };
  await checked(['import', '--change', 'CMD ["/bin/sh"]', '--change', 'ENV PATH=/bin', tarball, ref]);
  const creds = registry.username !== undefined ? ['--creds', `${registry.username}:${registry.password ?? ''}`] : [];
  await checked(['push', '--tls-verify=false', '--format', 'v2s2', ...creds, ref]);
  await checked(['rmi', ref]);
  return ref;
}

/** SIGKILLs the processes whose command line names a path under `dir` (conmons this fixture's podman started). */
async function killProcessesUnder(dir: string): Promise<void> {
  const needle = `${dir}/`;
  for (const pid of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (!cmdline.includes(needle)) continue;
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // gone already
    }
  }
}

const tarballs = new Map<string, Promise<string>>();

/** The busybox root file system as a tarball in `dir`, made once per fixture dir. */
function busyboxTarball(dir: string, binaries: TestBinaries): Promise<string> {
  let made = tarballs.get(dir);
  if (!made) {
    made = makeBusyboxTarball(dir, binaries);
    tarballs.set(dir, made);
    made.catch(() => tarballs.delete(dir));
  }
  return made;
}

async function makeBusyboxTarball(dir: string, binaries: TestBinaries): Promise<string> {
  const root = join(dir, 'busybox-rootfs');
  for (const d of ['bin', 'etc', 'proc', 'sys', 'dev', 'root', 'tmp', 'work']) await mkdir(join(root, d), { recursive: true });
  await chmod(join(root, 'tmp'), 0o1777);
  await copyFile(binaries.busybox, join(root, 'bin', 'busybox'));
  await chmod(join(root, 'bin', 'busybox'), 0o755);
  const { stdout } = await runChecked(binaries.busybox, ['--list']);
  for (const applet of new Set(stdout.split('\n').map((s) => s.trim()))) {
    if (applet && applet !== 'busybox' && !applet.includes('/')) await symlink('busybox', join(root, 'bin', applet));
  }
  await writeFile(join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n');
  await writeFile(join(root, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
  const tarball = join(dir, 'busybox-rootfs.tar');
  await runChecked('tar', ['-C', root, '--numeric-owner', '--owner=0', '--group=0', '-cf', tarball, '.']);
  return tarball;
}

/**
 * When the test process ends before stop() (a crash, ^C), containers would outlive it: conmon keeps
 * them running without the service. Remove them synchronously; processes.ts then kills the service and
 * removes the dir. Prepended, so it runs before that safety net's handlers.
 */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  const cleanUp = (): void => {
    for (const { podman, env } of live) spawnSync(podman, ['rm', '--all', '--force', '--time', '0'], { env, stdio: 'ignore', timeout: 30_000 });
    live.clear();
  };
  process.prependListener('exit', cleanUp);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.prependListener(sig, cleanUp);
}
