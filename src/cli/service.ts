// `vmlet service install|uninstall|status`: vmlet as a service of the host, installed only when asked.
// macOS: a launchd agent of the logged-in user (Virtualization.framework VMs belong to a user session;
// from macOS 15 starting VMs needs the user's unlocked login keychain), KeepAlive, log files, environment.
// Linux: a systemd unit, system-wide or (--user) the user's own. The files are written by pure functions
// (launchdPlist, systemdUnit). --platform writes the other OS's flavour (e.g. the plist from Linux, to look
// at it or to copy it); launchctl/systemctl are then not run, and the output says so and what to run.
import { execFile } from 'node:child_process';
import { access, mkdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Option, type Command } from 'commander';

const run = promisify(execFile);
export const LAUNCHD_LABEL = 'dev.vmlet.agent';
export const SYSTEMD_UNIT = 'vmlet.service';

export interface ServiceSpec {
  /** vmlet's command line: the node binary and script, or the vmlet binary, then `run` and its flags. */
  argv: string[];
  env: Record<string, string>;
  logDir: string;
  workingDir: string;
}

const xml = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** The launchd agent plist: started at login, restarted whenever it exits (KeepAlive), logs to files. */
export function launchdPlist(spec: ServiceSpec, label = LAUNCHD_LABEL): string {
  const args = spec.argv.map((a) => `\t\t<string>${xml(a)}</string>`).join('\n');
  const env = Object.entries(spec.env).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `\t\t<key>${xml(k)}</key>\n\t\t<string>${xml(v)}</string>`).join('\n');
  return `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
\t<key>Label</key>
\t<string>${xml(label)}</string>
\t<key>ProgramArguments</key>
\t<array>
${args}
\t</array>
\t<key>EnvironmentVariables</key>
\t<dict>
${env}
\t</dict>
\t<key>WorkingDirectory</key>
\t<string>${xml(spec.workingDir)}</string>
\t<key>RunAtLoad</key>
\t<true/>
\t<key>KeepAlive</key>
\t<true/>
\t<key>ThrottleInterval</key>
\t<integer>10</integer>
\t<key>ProcessType</key>
\t<string>Interactive</string>
\t<key>StandardOutPath</key>
\t<string>${xml(path.join(spec.logDir, 'vmlet.log'))}</string>
\t<key>StandardErrorPath</key>
\t<string>${xml(path.join(spec.logDir, 'vmlet.err.log'))}</string>
</dict>
</plist>
`;
}

const sdQuote = (s: string): string => (/^[\w@%+=:,./-]+$/.test(s) ? s : `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`);

/**
 * The systemd unit: restarted on failure; KillMode=process so stopping vmlet leaves its VMs running (they
 * outlive vmlet by design; a restarted vmlet adopts them).
 */
export function systemdUnit(spec: ServiceSpec & { user?: string; wantedBy?: string }): string {
  const env = Object.entries(spec.env).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `Environment=${sdQuote(`${k}=${v}`)}`);
  return [
    '[Unit]',
    'Description=vmlet: Kubernetes node agent that runs pods as VMs',
    'Wants=network-online.target',
    'After=network-online.target',
    '',
    '[Service]',
    'Type=simple',
    `ExecStart=${spec.argv.map(sdQuote).join(' ')}`,
    ...env,
    `WorkingDirectory=${sdQuote(spec.workingDir)}`,
    ...(spec.user ? [`User=${spec.user}`] : []),
    'Restart=always',
    'RestartSec=5',
    'KillMode=process',
    'TimeoutStopSec=20',
    '',
    '[Install]',
    `WantedBy=${spec.wantedBy ?? 'multi-user.target'}`,
    '',
  ].join('\n');
}

type Flavour = { kind: 'launchd' } | { kind: 'systemd'; user: boolean };

interface Target {
  flavour: Flavour;
  /** The service definition file. */
  file: string;
  /** Can this host load it (the right OS)? Else why not. */
  foreign?: string;
}

function target(opts: { platform?: string; user?: boolean }): Target {
  const platform = opts.platform ?? (process.platform === 'darwin' ? 'darwin' : 'linux');
  const hostIs = process.platform === 'darwin' ? 'darwin' : process.platform === 'linux' ? 'linux' : process.platform;
  const foreign = platform === hostIs ? undefined : `this host runs ${hostIs}, and the file is for ${platform === 'darwin' ? 'macOS' : 'Linux'}`;
  if (platform === 'darwin') {
    return { flavour: { kind: 'launchd' }, file: path.join(os.homedir(), 'Library/LaunchAgents', `${LAUNCHD_LABEL}.plist`), ...(foreign ? { foreign } : {}) };
  }
  const user = opts.user === true;
  const file = user ? path.join(os.homedir(), '.config/systemd/user', SYSTEMD_UNIT) : path.join('/etc/systemd/system', SYSTEMD_UNIT);
  return { flavour: { kind: 'systemd', user }, file, ...(foreign ? { foreign } : {}) };
}

function serviceSpec(opts: { config?: string }, flavour: Flavour): ServiceSpec {
  const script = process.argv[1] ?? 'vmlet';
  const argv = [process.execPath, ...process.execArgv, script, 'run', ...(opts.config ? ['--config', path.resolve(opts.config)] : [])];
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && (k.startsWith('VMLET_') || k === 'KUBECONFIG')) env[k] = v;
  // launchd writes the log files; systemd sends output to the journal.
  const logDir = flavour.kind === 'launchd' ? path.join(os.homedir(), 'Library/Logs/vmlet') : '';
  return { argv, env, logDir, workingDir: os.homedir() };
}

const uid = (): number => process.getuid?.() ?? 501;
const launchdDomain = (): string => `gui/${uid()}`;

type ShResult = { ok: true; stdout: string } | { ok: false; missing: boolean; message: string; stdout: string };

async function sh(cmd: string, args: string[]): Promise<ShResult> {
  try {
    return { ok: true, stdout: (await run(cmd, args, { timeout: 30_000 })).stdout };
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    const missing = e.code === 'ENOENT';
    const message = missing ? `${cmd} was not found on PATH` : (e.stderr || e.message).trim().split('\n')[0] ?? `${cmd} failed`;
    return { ok: false, missing, message, stdout: e.stdout ?? '' };
  }
}

/** The commands that load (or unload) the file by hand, for when vmlet could not. */
function loadCommands(t: Target): string {
  if (t.flavour.kind === 'launchd') return `launchctl bootstrap gui/$(id -u) ${t.file}`;
  const ctl = t.flavour.user ? 'systemctl --user' : 'systemctl';
  return `${ctl} daemon-reload && ${ctl} enable --now ${SYSTEMD_UNIT}`;
}

const exists = (file: string): Promise<boolean> => access(file).then(() => true, () => false);

export function addServiceCommands(program: Command): void {
  const service = program.command('service').description('Install vmlet as a service of this host (launchd agent on macOS, systemd unit on Linux)');
  const flavourOptions = (c: Command): Command =>
    c
      .addOption(new Option('--platform <os>', "darwin (a launchd agent) or linux (a systemd unit); default: this host's. For another OS the file is written but not loaded").choices(['darwin', 'linux']))
      .option('--user', 'Linux: a systemd user unit (~/.config/systemd/user, systemctl --user) instead of a system unit in /etc/systemd/system');
  flavourOptions(
    service
      .command('install')
      .description('Write the service definition and load it, so vmlet starts now, at every login/boot, and again when it exits')
      .option('-c, --config <file>', 'the YAML configuration `vmlet run` is given')
      .option('--dry-run', 'print the file instead of installing it'),
  ).action(async (opts: { config?: string; dryRun?: boolean; platform?: string; user?: boolean }) => {
    const t = target(opts);
    const spec = serviceSpec(opts, t.flavour);
    const text = t.flavour.kind === 'launchd' ? launchdPlist(spec) : systemdUnit({ ...spec, ...(t.flavour.user ? { wantedBy: 'default.target' } : {}) });
    if (opts.dryRun) return void process.stdout.write(text);
    await mkdir(path.dirname(t.file), { recursive: true });
    if (spec.logDir) await mkdir(spec.logDir, { recursive: true });
    await writeFile(t.file, text, { mode: 0o644 });
    console.log(`wrote ${t.file}`);
    if (!opts.config) console.log('note: no --config given, so the service runs `vmlet run` with only the VMLET_* environment variables saved in the file');
    const logs = t.flavour.kind === 'launchd'
      ? `logs: ${path.join(spec.logDir, 'vmlet.log')} and ${path.join(spec.logDir, 'vmlet.err.log')}`
      : `logs: journalctl ${t.flavour.user ? '--user ' : ''}-u vmlet`;
    if (t.foreign) {
      console.log(`not loaded: ${t.foreign}; on that host, load it with: ${loadCommands(t)}`);
      console.log(logs);
      return;
    }
    const steps: [string, string[]][] = t.flavour.kind === 'launchd'
      ? [['launchctl', ['bootout', `${launchdDomain()}/${LAUNCHD_LABEL}`]], ['launchctl', ['bootstrap', launchdDomain(), t.file]]]
      : t.flavour.user
        ? [['systemctl', ['--user', 'daemon-reload']], ['systemctl', ['--user', 'enable', '--now', SYSTEMD_UNIT]]]
        : [['systemctl', ['daemon-reload']], ['systemctl', ['enable', '--now', SYSTEMD_UNIT]]];
    for (const [i, [cmd, args]] of steps.entries()) {
      const r = await sh(cmd, args);
      if (r.ok || (t.flavour.kind === 'launchd' && i === 0)) continue; // bootout fails when nothing was loaded: fine
      console.log(`not loaded: ${r.message}; load it yourself with: ${loadCommands(t)}`);
      console.log(logs);
      if (!r.missing) process.exitCode = 1;
      return;
    }
    console.log(t.flavour.kind === 'launchd'
      ? `loaded into launchd (${launchdDomain()}/${LAUNCHD_LABEL}): vmlet runs now, at every login, and again whenever it exits`
      : `enabled and started ${SYSTEMD_UNIT}${t.flavour.user ? ' (user unit)' : ''}: vmlet runs now, at every boot, and again whenever it exits`);
    console.log(logs);
    console.log('check it with: vmlet service status');
  });
  flavourOptions(
    service.command('uninstall').description('Stop the service and remove its definition (running VMs are left alone; a new vmlet adopts them)'),
  ).action(async (opts: { platform?: string; user?: boolean }) => {
    const t = target(opts);
    if (!t.foreign) {
      const ctl = t.flavour.kind === 'launchd'
        ? await sh('launchctl', ['bootout', `${launchdDomain()}/${LAUNCHD_LABEL}`])
        : await sh('systemctl', [...(t.flavour.kind === 'systemd' && t.flavour.user ? ['--user'] : []), 'disable', '--now', SYSTEMD_UNIT]);
      if (ctl.ok) console.log(t.flavour.kind === 'launchd' ? 'stopped and unloaded it from launchd' : `stopped and disabled ${SYSTEMD_UNIT}`);
      else if (ctl.missing) console.log(`not unloaded: ${ctl.message}`);
    }
    if (await exists(t.file)) {
      await rm(t.file, { force: true });
      console.log(`removed ${t.file}`);
    } else console.log(`nothing to remove: ${t.file} does not exist`);
    if (!t.foreign && t.flavour.kind === 'systemd') await sh('systemctl', [...(t.flavour.user ? ['--user'] : []), 'daemon-reload']);
  });
  flavourOptions(service.command('status').description('Show whether the service is installed, loaded and running')).action(async (opts: { platform?: string; user?: boolean }) => {
    const t = target(opts);
    const installed = await exists(t.file);
    console.log(installed ? `installed: ${t.file}` : `not installed: ${t.file} does not exist (vmlet service install writes it)`);
    if (t.foreign) return void console.log(`not checked whether it runs: ${t.foreign}`);
    const r = t.flavour.kind === 'launchd'
      ? await sh('launchctl', ['print', `${launchdDomain()}/${LAUNCHD_LABEL}`])
      : await sh('systemctl', [...(t.flavour.user ? ['--user'] : []), 'status', '--no-pager', SYSTEMD_UNIT]);
    if (r.ok) process.stdout.write(r.stdout);
    else if (r.missing) console.log(`not checked whether it runs: ${r.message}`);
    else if (installed) {
      console.log(`not running: ${t.flavour.kind === 'launchd' ? 'launchd has not loaded it' : r.message}; start it with: ${loadCommands(t)}`);
      if (r.stdout) process.stdout.write(r.stdout);
    }
  });
}
