// `vmlet service install|uninstall|status`: vmlet as a service of the host, installed only when asked.
// macOS: a launchd agent of the logged-in user (Virtualization.framework VMs belong to a user session;
// from macOS 15 starting VMs needs the user's unlocked login keychain), KeepAlive, log files, environment.
// Linux: a systemd unit. The files are written by pure functions (launchdPlist, systemdUnit; unit-tested).
import { execFile } from 'node:child_process';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Command } from 'commander';

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
export function systemdUnit(spec: ServiceSpec & { user?: string }): string {
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
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

function serviceSpec(opts: { config?: string }): ServiceSpec {
  const script = process.argv[1] ?? 'vmlet';
  const argv = [process.execPath, ...process.execArgv, script, 'run', ...(opts.config ? ['--config', path.resolve(opts.config)] : [])];
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && (k.startsWith('VMLET_') || k === 'KUBECONFIG')) env[k] = v;
  const logDir = process.platform === 'darwin' ? path.join(os.homedir(), 'Library/Logs/vmlet') : '/var/log/vmlet';
  return { argv, env, logDir, workingDir: os.homedir() };
}

function unitPaths(): { launchd: string; systemd: string } {
  return { launchd: path.join(os.homedir(), 'Library/LaunchAgents', `${LAUNCHD_LABEL}.plist`), systemd: path.join('/etc/systemd/system', SYSTEMD_UNIT) };
}

async function sh(cmd: string, args: string[]): Promise<string> {
  const { stdout } = await run(cmd, args, { timeout: 30_000 });
  return stdout;
}

export function addServiceCommands(program: Command): void {
  const service = program.command('service').description('Install vmlet as a service of this host (launchd agent on macOS, systemd unit on Linux)');
  service
    .command('install')
    .description('Write and load the service definition')
    .option('-c, --config <file>', 'the YAML configuration `vmlet run` is given')
    .option('--dry-run', 'print the file instead of installing it')
    .action(async (opts: { config?: string; dryRun?: boolean }) => {
      const spec = serviceSpec(opts);
      const mac = process.platform === 'darwin';
      const text = mac ? launchdPlist(spec) : systemdUnit(spec);
      if (opts.dryRun) return void process.stdout.write(text);
      const file = mac ? unitPaths().launchd : unitPaths().systemd;
      await mkdir(path.dirname(file), { recursive: true });
      await mkdir(spec.logDir, { recursive: true });
      await writeFile(file, text, { mode: 0o644 });
      if (mac) {
        const domain = `gui/${process.getuid?.() ?? 501}`;
        await sh('launchctl', ['bootout', `${domain}/${LAUNCHD_LABEL}`]).catch(() => '');
        await sh('launchctl', ['bootstrap', domain, file]);
      } else {
        await sh('systemctl', ['daemon-reload']);
        await sh('systemctl', ['enable', '--now', SYSTEMD_UNIT]);
      }
      console.log(`installed ${file}; logs in ${mac ? spec.logDir : 'journalctl -u vmlet'}`);
    });
  service
    .command('uninstall')
    .description('Stop the service and remove its definition (running VMs are left alone)')
    .action(async () => {
      if (process.platform === 'darwin') {
        await sh('launchctl', ['bootout', `gui/${process.getuid?.() ?? 501}/${LAUNCHD_LABEL}`]).catch(() => '');
        await rm(unitPaths().launchd, { force: true });
      } else {
        await sh('systemctl', ['disable', '--now', SYSTEMD_UNIT]).catch(() => '');
        await rm(unitPaths().systemd, { force: true });
        await sh('systemctl', ['daemon-reload']).catch(() => '');
      }
      console.log('uninstalled');
    });
  service
    .command('status')
    .description('Show whether the service is loaded and running')
    .action(async () => {
      const out = process.platform === 'darwin'
        ? await sh('launchctl', ['print', `gui/${process.getuid?.() ?? 501}/${LAUNCHD_LABEL}`]).catch(() => 'not installed\n')
        : await sh('systemctl', ['status', '--no-pager', SYSTEMD_UNIT]).catch((err: { stdout?: string }) => err.stdout || 'not installed\n');
      process.stdout.write(out);
    });
}
