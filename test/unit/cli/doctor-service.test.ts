// `vmlet doctor`'s findings from host facts, and the service files `vmlet service install` writes (the
// launchd agent plist and the systemd unit): pure functions, no host touched.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { evaluateHost, formatFindings, otherVmProcesses, type HostFacts } from '../../../src/cli/doctor.ts';
import { launchdPlist, systemdUnit } from '../../../src/cli/service.ts';

const GiB = 1024 ** 3;
const mac: HostFacts = {
  platform: 'darwin', arch: 'arm64', macOSVersion: '14.5', cacheDir: '/c', freeBytes: 200 * GiB, otherVms: [], dockerSocket: '/var/run/docker.sock',
  vzHelper: { path: '/opt/vmlet-vz', signature: { signed: true, entitled: true } },
};

test('a ready Mac has no failures; each missing piece is a finding with what to do', () => {
  assert.ok(evaluateHost(mac).every((f) => f.level === 'ok'));
  const level = (facts: Partial<HostFacts>, check: string) => evaluateHost({ ...mac, ...facts }).find((f) => f.check === check);
  assert.equal(level({ vzHelper: {} }, 'vz helper')?.level, 'fail');
  assert.match(level({ vzHelper: { path: '/x', signature: { signed: true, entitled: false } } }, 'vz helper')?.fix ?? '', /build-vz-helper/);
  assert.equal(level({ arch: 'x64' }, 'CPU')?.level, 'fail');
  assert.equal(level({ macOSVersion: '13.6' }, 'macOS')?.level, 'warn');
  assert.equal(level({ macOSVersion: '12.7' }, 'macOS')?.level, 'fail');
  assert.equal(level({ otherVms: ['tart'] }, 'other VMs')?.level, 'warn');
  assert.equal(level({ freeBytes: 10 * GiB }, 'disk')?.level, 'warn');
  assert.equal(level({ freeBytes: 1 * GiB }, 'disk')?.level, 'fail');
  assert.equal(evaluateHost({ ...mac, dockerSocket: undefined }).find((f) => f.check === 'sidecars')?.level, 'warn');
  assert.match(formatFindings(evaluateHost({ ...mac, vzHelper: {} })), /FAIL {2}vz helper: .*\n {6}→ in the vmlet checkout, run scripts\/build-vz-helper\.sh/);
});

test('Linux: QEMU with KVM is ok, TCG a warning, none a failure; virtiofsd is looked for', () => {
  const linux: HostFacts = { platform: 'linux', arch: 'x64', cacheDir: '/c', freeBytes: 100 * GiB, otherVms: [], virtiofsd: '/usr/libexec/virtiofsd' };
  const probe = { usable: true, driver: 'qemu' as const, guestOSes: ['linux' as const], reason: 'QEMUReady' };
  assert.equal(evaluateHost({ ...linux, probe: { ...probe, accelerator: 'kvm', message: 'q with KVM' } }).find((f) => f.check === 'hypervisor')?.level, 'ok');
  assert.equal(evaluateHost({ ...linux, probe: { ...probe, accelerator: 'tcg', message: 'q with TCG' } }).find((f) => f.check === 'hypervisor')?.level, 'warn');
  assert.equal(evaluateHost({ ...linux, probe: { ...probe, usable: false, driver: null, accelerator: null, message: 'none' } }).find((f) => f.check === 'hypervisor')?.level, 'fail');
  assert.equal(evaluateHost({ ...linux, virtiofsd: undefined }).find((f) => f.check === 'virtiofsd')?.level, 'warn');
  assert.equal(evaluateHost(linux).some((f) => f.check === 'vz helper'), false);
});

test('other VM tools are found in ps output', () => {
  assert.deepEqual(otherVmProcesses('/usr/sbin/cfprefsd\n/opt/homebrew/bin/tart\n/System/Library/Frameworks/Virtualization.framework/Versions/A/XPCServices/com.apple.Virtualization.VirtualMachine.xpc/Contents/MacOS/com.apple.Virtualization.VirtualMachine\n/opt/homebrew/bin/tart\n'),
    ['tart', 'com.apple.Virtualization.VirtualMachine']);
});

const spec = { argv: ['/usr/local/bin/node', '/opt/vmlet/bin/vmlet.js', 'run', '--config', '/etc/vmlet & co/config.yaml'], env: { VMLET_NODE_NAME: 'mac-1', PATH: '/usr/bin' }, logDir: '/Users/a/Library/Logs/vmlet', workingDir: '/Users/a' };

test('the launchd agent: program, environment, KeepAlive, RunAtLoad, log files, escaped XML', () => {
  const plist = launchdPlist(spec);
  assert.match(plist, /<key>Label<\/key>\n\t<string>dev\.vmlet\.agent<\/string>/);
  assert.match(plist, /<string>\/etc\/vmlet &amp; co\/config\.yaml<\/string>/);
  assert.match(plist, /<key>KeepAlive<\/key>\n\t<true\/>/);
  assert.match(plist, /<key>RunAtLoad<\/key>\n\t<true\/>/);
  assert.match(plist, /<key>PATH<\/key>\n\t\t<string>\/usr\/bin<\/string>\n\t\t<key>VMLET_NODE_NAME<\/key>/);
  assert.match(plist, /<key>StandardErrorPath<\/key>\n\t<string>\/Users\/a\/Library\/Logs\/vmlet\/vmlet\.err\.log<\/string>/);
});

test('the systemd unit: ExecStart quoted, environment, restart, VMs left running on stop', () => {
  const unit = systemdUnit({ ...spec, user: 'vmlet' });
  assert.match(unit, /^ExecStart=\/usr\/local\/bin\/node \/opt\/vmlet\/bin\/vmlet\.js run --config "\/etc\/vmlet & co\/config\.yaml"$/m);
  assert.match(unit, /^Environment=VMLET_NODE_NAME=mac-1$/m);
  assert.match(unit, /^User=vmlet$/m);
  assert.match(unit, /^Restart=always$/m);
  assert.match(unit, /^KillMode=process$/m);
  assert.match(unit, /^WantedBy=multi-user\.target$/m);
});
