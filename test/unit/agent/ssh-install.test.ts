// Installing the agent over SSH (src/agent/ssh/install.ts), the parts that need no guest: what a guest
// must have, the Linux start script (run for real on this host: the process must end up in a session of
// its own and survive its starter), and the macOS launchd plist and commands (no Mac here: the plist is
// parsed by Python's plistlib, an independent plist parser, when python3 is installed).
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  checkGuestForBundle, chooseArtifact, launchdCommands, launchdPlist, linuxStartScript, systemdUnit, type GuestFacts,
} from '../../../src/agent/ssh/install.ts';

const linux: GuestFacts = { os: 'Linux', arch: 'x86_64', node: '/usr/bin/node', nodeVersion: '20.20.2', uid: 0, sudo: false, setsid: true, systemd: false };
const where = 'ssh to 127.0.0.1:2222 as admin';

test('a guest that cannot run the JavaScript bundle is refused with the reason', () => {
  checkGuestForBundle(linux, where);
  checkGuestForBundle({ ...linux, os: 'Darwin', arch: 'arm64', uid: 501, sudo: true }, where);
  const cases: [Partial<GuestFacts>, RegExp][] = [
    [{ node: null }, /^Error: ssh to 127\.0\.0\.1:2222 as admin: cannot install the vmlet agent: the guest \(Linux x86_64\) has no node in PATH, and the agent bundle is JavaScript for Node 20 or newer$/],
    [{ nodeVersion: '18.19.0' }, /the guest's node is 18\.19\.0; the agent needs Node 20 or newer$/],
    [{ os: 'FreeBSD' }, /unsupported guest OS "FreeBSD"/],
    [{ arch: 'riscv64' }, /unsupported architecture "riscv64"/],
    [{ uid: 1000, sudo: false }, /the login \(uid 1000\) is not root and cannot sudo without a password; the agent must run as root$/],
  ];
  for (const [change, want] of cases) assert.throws(() => checkGuestForBundle({ ...linux, ...change }, where), want);
});

test('auto picks the bundle for a guest with Node 20+, else the self-contained binary when one is offered', () => {
  const both = { bundle: true, binary: true };
  assert.equal(chooseArtifact(linux, both, where), 'bundle');
  assert.equal(chooseArtifact({ ...linux, node: null, nodeVersion: null }, both, where), 'binary');
  assert.equal(chooseArtifact({ ...linux, nodeVersion: '18.19.0' }, both, where), 'binary');
  assert.equal(chooseArtifact(linux, { bundle: false, binary: true }, where), 'binary');
  assert.equal(chooseArtifact(linux, { ...both, artifact: 'binary' }, where), 'binary');
  // Without a binary on offer, a guest without node is refused as before.
  assert.throws(() => chooseArtifact({ ...linux, node: null }, { bundle: true, binary: false }, where), /has no node in PATH, and the agent bundle is JavaScript for Node 20 or newer$/);
  assert.throws(() => chooseArtifact({ ...linux, node: null }, { ...both, artifact: 'bundle' }, where), /has no node in PATH/);
  assert.throws(() => chooseArtifact(linux, { bundle: true, binary: false, artifact: 'binary' }, where), /^Error: ssh to 127\.0\.0\.1:2222 as admin: cannot install the vmlet agent: no self-contained agent binary was given$/);
  // Root (or sudo) and a known platform are needed whatever is installed.
  assert.throws(() => chooseArtifact({ ...linux, node: null, uid: 501 }, both, where), /the login \(uid 501\) is not root/);
  assert.throws(() => chooseArtifact({ ...linux, arch: 'riscv64' }, both, where), /unsupported architecture "riscv64"/);
});

test('the self-contained binary is started without node', () => {
  const p = { agentPath: '/usr/local/lib/vmlet/vmlet-agent', args: ['--port', 'org.vmlet.agent.0'] };
  assert.match(systemdUnit(p), /^ExecStart=\/usr\/local\/lib\/vmlet\/vmlet-agent --port org\.vmlet\.agent\.0$/m);
  assert.match(linuxStartScript({ ...p, logFile: '/var/log/a', pidFile: '/run/a.pid' }), /^setsid \/usr\/local\/lib\/vmlet\/vmlet-agent '--port' org\.vmlet\.agent\.0 <\/dev\/null/m);
  assert.match(launchdPlist({ ...p, logFile: '/var/log/a' }), /<array>\n {4}<string>\/usr\/local\/lib\/vmlet\/vmlet-agent<\/string>\n {4}<string>--port<\/string>/);
});

test('the Linux start script detaches the agent into its own session, and replaces a running one', { skip: !existsSync('/usr/bin/setsid') && 'no setsid' }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlet-install-'));
  const pids: number[] = [];
  try {
    // A stand-in "agent": sh running a script that sleeps; "node" is /bin/sh.
    const agent = join(dir, "the agent's.sh");
    await writeFile(agent, 'echo "started with $*"; exec sleep 300\n');
    const p = { node: '/bin/sh', agentPath: agent, args: ['--port', 'a b'], logFile: join(dir, 'agent log'), pidFile: join(dir, 'agent.pid') };
    for (let round = 0; round < 2; round++) {
      const out = execFileSync('/bin/sh', ['-c', linuxStartScript(p)], { encoding: 'utf8' });
      const pid = Number(/^pid=(\d+)$/m.exec(out)?.[1]);
      assert.ok(pid > 1, out);
      pids.push(pid);
      assert.equal(Number(await readFile(p.pidFile, 'utf8')), pid);
      // setsid made it a session leader: its session id is its own pid, not the starter's.
      const sid = Number(execFileSync('ps', ['-o', 'sid=', '-p', String(pid)], { encoding: 'utf8' }).trim());
      assert.equal(sid, pid);
    }
    // The second start stopped the first agent.
    // (A zombie counts as gone: whoever adopted it may be slow to reap it.)
    const state = (pid: number): string => spawnSync('ps', ['-o', 'stat=', '-p', String(pid)], { encoding: 'utf8' }).stdout.trim();
    assert.match(state(pids[0]!), /^(Z.*)?$/, 'the first agent is gone');
    assert.match(state(pids[1]!), /^[SR]/, 'the second agent runs');
    assert.match(await readFile(p.logFile, 'utf8'), /started with --port a b/);
  } finally {
    for (const pid of pids) spawnSync('kill', [String(pid)]);
    await rm(dir, { recursive: true, force: true });
  }
});

test('systemd unit: quoted ExecStart, restarted, enabled for boot', () => {
  const unit = systemdUnit({ node: '/usr/bin/node', agentPath: '/usr/local/lib/vmlet/vmlet-agent.cjs', args: ['--log-dir', 'a "b"'] });
  assert.match(unit, /^ExecStart=\/usr\/bin\/node \/usr\/local\/lib\/vmlet\/vmlet-agent\.cjs --log-dir "a \\"b\\""$/m);
  assert.match(unit, /^Restart=always$/m);
  assert.match(unit, /^WantedBy=multi-user\.target$/m);
});

test('launchd plist (macOS, not run on a Mac here) is a valid plist with the exact arguments', { skip: !existsSync('/usr/bin/python3') && 'no python3 to parse the plist' }, () => {
  const plist = launchdPlist({ node: '/opt/homebrew/bin/node', agentPath: '/usr/local/lib/vmlet/vmlet-agent.cjs', args: ['--tcp', '127.0.0.1:7000', 'a<b>&"c"'], logFile: '/var/log/vmlet-agent.log' });
  const parsed = JSON.parse(execFileSync('/usr/bin/python3', ['-c', 'import plistlib, sys, json; print(json.dumps(plistlib.loads(sys.stdin.buffer.read())))'], { input: plist, encoding: 'utf8' })) as Record<string, unknown>;
  assert.deepEqual(parsed, {
    Label: 'dev.vmlet.agent',
    ProgramArguments: ['/opt/homebrew/bin/node', '/usr/local/lib/vmlet/vmlet-agent.cjs', '--tcp', '127.0.0.1:7000', 'a<b>&"c"'],
    RunAtLoad: true,
    KeepAlive: true,
    StandardOutPath: '/var/log/vmlet-agent.log',
    StandardErrorPath: '/var/log/vmlet-agent.log',
  });
});

test('launchd commands: install as a LaunchDaemon, (re)bootstrap, kickstart; sudo for a non-root login', () => {
  assert.deepEqual(launchdCommands({ uploaded: '/tmp/dev.vmlet.agent.plist', sudo: 'sudo -n ' }), [
    'sudo -n install -m 644 -o root -g wheel /tmp/dev.vmlet.agent.plist /Library/LaunchDaemons/dev.vmlet.agent.plist',
    'sudo -n launchctl bootout system/dev.vmlet.agent 2>/dev/null || true',
    'sudo -n launchctl bootstrap system /Library/LaunchDaemons/dev.vmlet.agent.plist',
    'sudo -n launchctl kickstart -k system/dev.vmlet.agent',
  ]);
  assert.equal(launchdCommands({ uploaded: '/tmp/x y.plist', sudo: '' })[0], "install -m 644 -o root -g wheel '/tmp/x y.plist' /Library/LaunchDaemons/dev.vmlet.agent.plist");
});
