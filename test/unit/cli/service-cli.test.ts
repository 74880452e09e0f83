// `vmlet service install|status|uninstall` and `vmlet doctor` as a user runs them: the real command
// (bin/vmlet.js) with HOME a temporary directory and PATH an empty one, so nothing of this host's launchd
// or systemd is touched: launchctl/systemctl are either for another OS (--platform) or not found, and the
// output must say so and what to run instead. The written files are read back with real parsers: the
// launchd plist as an XML property list (the plist package), the systemd unit as INI.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { parse as parsePlist } from 'plist';
import { evaluateHost, formatFindings, type HostFacts } from '../../../src/cli/doctor.ts';
import { runVmlet, VMLET_BIN } from '../../harness/vmlet.ts';

const home = mkdtempSync(path.join(os.tmpdir(), 'vmlet-home-'));
const emptyBin = path.join(home, 'empty-bin');
mkdirSync(emptyBin);
const config = path.join(home, 'vmlet config.yaml');
writeFileSync(config, 'nodeName: mac-test\n');
after(() => rmSync(home, { recursive: true, force: true }));

const env = { HOME: home, PATH: emptyBin, VMLET_NODE_NAME: 'mac-test', VMLET_LOG_LEVEL: 'info' };
async function vmlet(...args: string[]): Promise<string[]> {
  const r = await runVmlet(args, env);
  assert.equal(r.code, 0, `vmlet ${args.join(' ')} exited ${r.code}:\n${r.stderr}${r.stdout}`);
  assert.equal(r.stderr, '');
  return r.stdout.trimEnd().split('\n');
}

/** Every line of the service commands' output starts with what happened, in words a user can act on. */
function assertReadable(lines: string[]): void {
  for (const line of lines) assert.match(line, /^(wrote|note|not loaded|logs|installed|not installed|not checked whether it runs|removed|nothing to remove|loaded into launchd|enabled and started|check it with|not unloaded|stopped and)\b/, line);
  for (const line of lines.filter((l) => l.startsWith('not loaded'))) assert.match(line, /load it (yourself )?with: (launchctl|systemctl)/, line);
}

/** A strict reader of systemd unit files: [Section] headers, Key=Value lines (a key may repeat), # comments. */
function parseUnit(text: string): Record<string, Record<string, string[]>> {
  const out: Record<string, Record<string, string[]>> = {};
  let section: Record<string, string[]> | undefined;
  for (const [i, line] of text.split('\n').entries()) {
    if (line.trim() === '' || /^[#;]/.test(line)) continue;
    const header = /^\[([A-Za-z]+)\]$/.exec(line);
    if (header) {
      section = out[header[1]!] = {};
      continue;
    }
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    assert.ok(kv && section, `line ${i + 1} of the unit is neither a [Section] nor Key=Value inside one: ${line}`);
    (section[kv[1]!] ??= []).push(kv[2]!);
  }
  return out;
}

/** systemd's word splitting of ExecStart= and Environment= (double quotes, backslash escapes). */
function unquote(value: string): string[] {
  const words: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  for (let m = re.exec(value); m; m = re.exec(value)) words.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2]!);
  return words;
}

test('service install --platform darwin writes a launchd agent plist into ~/Library/LaunchAgents, and status/uninstall find it', async () => {
  const out = await vmlet('service', 'install', '--platform', 'darwin', '--config', config);
  assertReadable(out);
  const file = path.join(home, 'Library/LaunchAgents/dev.vmlet.agent.plist');
  assert.equal(out[0], `wrote ${file}`);
  assert.match(out.join('\n'), process.platform === 'darwin' ? /not loaded: launchctl was not found on PATH; load it yourself with: launchctl bootstrap gui\/\$\(id -u\) / : /not loaded: this host runs linux, and the file is for macOS; on that host, load it with: launchctl bootstrap gui\/\$\(id -u\) /);
  assert.equal(statSync(file).mode & 0o022, 0, 'launchd refuses a plist others can write');

  const parsed = parsePlist(readFileSync(file, 'utf8')) as Record<string, unknown>;
  const logs = path.join(home, 'Library/Logs/vmlet');
  assert.deepEqual(Object.keys(parsed).sort(), ['EnvironmentVariables', 'KeepAlive', 'Label', 'ProcessType', 'ProgramArguments', 'RunAtLoad', 'StandardErrorPath', 'StandardOutPath', 'ThrottleInterval', 'WorkingDirectory']);
  assert.equal(parsed.Label, 'dev.vmlet.agent');
  assert.deepEqual(parsed.ProgramArguments, [process.execPath, VMLET_BIN, 'run', '--config', config]);
  assert.equal(parsed.KeepAlive, true);
  assert.equal(parsed.RunAtLoad, true);
  assert.equal(parsed.ThrottleInterval, 10);
  assert.equal(parsed.WorkingDirectory, home);
  assert.equal(parsed.StandardOutPath, path.join(logs, 'vmlet.log'));
  assert.equal(parsed.StandardErrorPath, path.join(logs, 'vmlet.err.log'));
  assert.ok(existsSync(logs), 'the log directory is created for launchd to write into');
  const vars = parsed.EnvironmentVariables as Record<string, string>;
  assert.equal(vars.PATH, emptyBin);
  assert.equal(vars.VMLET_NODE_NAME, 'mac-test');
  assert.equal(vars.HOME, undefined, 'launchd sets HOME itself');
  assert.ok(Object.keys(vars).every((k) => k === 'PATH' || k === 'KUBECONFIG' || k.startsWith('VMLET_')), Object.keys(vars).join(' '));

  // --dry-run prints the same property list.
  const dry = await runVmlet(['service', 'install', '--platform', 'darwin', '--config', config, '--dry-run'], env);
  assert.deepEqual(parsePlist(dry.stdout), parsed);

  const status = await vmlet('service', 'status', '--platform', 'darwin');
  assertReadable(status);
  assert.equal(status[0], `installed: ${file}`);
  assert.match(status[1] ?? '', /^not checked whether it runs: /);

  assertReadable(await vmlet('service', 'uninstall', '--platform', 'darwin'));
  assert.equal(existsSync(file), false);
  const after = await vmlet('service', 'status', '--platform', 'darwin');
  assert.equal(after[0], `not installed: ${file} does not exist (vmlet service install writes it)`);
  assert.deepEqual((await vmlet('service', 'uninstall', '--platform', 'darwin')).filter((l) => !l.startsWith('not unloaded')), [`nothing to remove: ${file} does not exist`]);
});

test('service install --platform linux --user writes a systemd user unit, read back as INI', async () => {
  const out = await vmlet('service', 'install', '--platform', 'linux', '--user', '--config', config);
  assertReadable(out);
  const file = path.join(home, '.config/systemd/user/vmlet.service');
  assert.equal(out[0], `wrote ${file}`);
  assert.ok(out.includes('logs: journalctl --user -u vmlet'), out.join('\n'));
  assert.match(out.join('\n'), /load it (yourself )?with: systemctl --user daemon-reload && systemctl --user enable --now vmlet\.service/);

  const unit = parseUnit(readFileSync(file, 'utf8'));
  assert.deepEqual(Object.keys(unit), ['Unit', 'Service', 'Install']);
  assert.match(unit.Unit!.Description![0]!, /vmlet/);
  assert.deepEqual(unit.Unit!.After, ['network-online.target']);
  const svc = unit.Service!;
  assert.deepEqual(unquote(svc.ExecStart![0]!), [process.execPath, VMLET_BIN, 'run', '--config', config]);
  const environment = Object.fromEntries((svc.Environment ?? []).flatMap(unquote).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
  assert.equal(environment.VMLET_NODE_NAME, 'mac-test');
  assert.equal(environment.PATH, emptyBin);
  assert.deepEqual(svc.WorkingDirectory, [home]);
  assert.deepEqual([svc.Type, svc.Restart, svc.KillMode, svc.User], [['simple'], ['always'], ['process'], undefined]);
  assert.deepEqual(unit.Install!.WantedBy, ['default.target']);

  const status = await vmlet('service', 'status', '--platform', 'linux', '--user');
  assertReadable(status);
  assert.equal(status[0], `installed: ${file}`);
  assertReadable(await vmlet('service', 'uninstall', '--platform', 'linux', '--user'));
  assert.equal(existsSync(file), false);
});

test('--platform accepts darwin or linux only, and says so', async () => {
  const r = await runVmlet(['service', 'install', '--platform', 'windows'], env);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /argument 'windows' is invalid\. Allowed choices are darwin, linux/);
});

const FINDING = /^(ok {2}|warn|FAIL) {2}[A-Za-z ]+: \S.*$/;
const FIX = /^ {6}→ \S.*$/;
/** Each finding is one line; a warning or failure is followed by one line saying what to do. */
function assertFindings(text: string): void {
  const lines = text.trimEnd().split('\n');
  for (const [i, line] of lines.entries()) {
    if (FIX.test(line)) {
      assert.match(lines[i - 1] ?? '', /^(warn|FAIL)/, `a fix follows a warning or failure: ${line}`);
      continue;
    }
    assert.match(line, FINDING);
    if (!line.startsWith('ok')) assert.match(lines[i + 1] ?? '', FIX, `a ${line.slice(0, 4).trim()} says what to do: ${line}`);
  }
}

test('vmlet doctor on this host, with a fresh home: every line a finding, every problem with what to do', async () => {
  const r = await runVmlet(['doctor', '--cache-dir', path.join(home, 'cache')], env);
  assert.equal(r.stderr, '');
  assertFindings(r.stdout);
  assert.equal(r.code, /^FAIL/m.test(r.stdout) ? 1 : 0);
  assert.match(r.stdout, process.platform === 'darwin' ? /^(ok {2}|FAIL) {2}vz helper: /m : /^(ok {2}|warn|FAIL) {2}hypervisor: /m);
});

test('vmlet doctor on a new Mac (no helper, no Docker, two other VMs, little disk) reads as a to-do list', () => {
  const facts: HostFacts = {
    platform: 'darwin', arch: 'arm64', macOSVersion: '15.1', cacheDir: '/Users/new/Library/Caches/vmlet/images', freeBytes: 12 * 1024 ** 3,
    otherVms: ['tart', 'com.apple.Virtualization.VirtualMachine'], vzHelper: {},
  };
  const text = formatFindings(evaluateHost(facts));
  assertFindings(text);
  assert.match(text, /^FAIL {2}vz helper: vmlet-vz, the helper that runs each VM through Virtualization\.framework, was not found: vmlet cannot start VMs\n {6}→ in the vmlet checkout, run scripts\/build-vz-helper\.sh \(it needs the Xcode command line tools: xcode-select --install\), or set VMLET_VZ_HELPER to a built vmlet-vz$/m);
  assert.match(text, /^warn {2}other VMs: VMs are already running: tart, com\.apple\.Virtualization\.VirtualMachine \(a Virtualization\.framework VM of any app, vmlet's own included\)\. macOS runs at most two macOS VMs at a time/m);
  assert.match(text, /→ stop the VMs you do not need, or set node\.vmSlots in vmlet's config/);
  assert.match(text, /→ install Docker Desktop, Colima or OrbStack/);
  assert.match(text, /→ free disk space there: each macOS image takes 30-60 GiB/);
});
