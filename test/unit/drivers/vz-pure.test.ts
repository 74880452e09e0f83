// The vz driver's pure parts: the helper protocol's framing and messages, the start config a spec
// becomes, MAC addresses, DHCP lease and ARP parsing, IP discovery order, exit classification, and the
// codesign entitlement check.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VmError, type VmSpec } from '../../../src/drivers/hypervisor.ts';
import { MACOS_AUTOMOUNT_TAG, macForId, normalizeMac, startConfig, vzPaths } from '../../../src/drivers/vz/config.ts';
import { hasEntitlement, majorVersion } from '../../../src/drivers/vz/host.ts';
import { discoverIp, leaseIpFor, parseArp, parseDhcpdLeases } from '../../../src/drivers/vz/ip.ts';
import { parsePsTime } from '../../../src/drivers/vz/process.ts';
import { describeHelperError, encodeRequest, LineDecoder, parseHelperLine, ProtocolError, vzErrorName } from '../../../src/drivers/vz/protocol.ts';
import { classifyVzExit, parseExitFile } from '../../../src/drivers/vz/state.ts';

test('requests are one JSON line each, versioned, with their id', () => {
  assert.equal(encodeRequest(3, { op: 'pause' }), '{"v":1,"id":3,"op":"pause"}\n');
  assert.deepEqual(JSON.parse(encodeRequest(4, { op: 'save', path: '/x' })), { v: 1, id: 4, op: 'save', path: '/x' });
});

test('the line decoder copes with split and merged reads and split UTF-8', () => {
  const d = new LineDecoder(64);
  assert.deepEqual(d.push(Buffer.from('{"a":1}\n{"b"')), ['{"a":1}']);
  const euro = Buffer.from('€');
  assert.deepEqual(d.push(Buffer.concat([Buffer.from(':"'), euro.subarray(0, 1)])), []);
  assert.deepEqual(d.push(Buffer.concat([euro.subarray(1), Buffer.from('"}\r\n\n{"c":3}\n')])), ['{"b":"€"}', '{"c":3}']);
  assert.throws(() => d.push(Buffer.alloc(100, 0x61)), ProtocolError);
});

test('hello, responses and events are parsed; other versions and shapes are refused', () => {
  const hello = parseHelperLine('{"v":1,"type":"hello","helper":"vmlet-vz","version":"0.1.0","pid":42,"state":"idle"}');
  assert.equal(hello.kind, 'hello');
  const res = parseHelperLine('{"v":1,"id":7,"ok":false,"error":{"name":"VirtualMachineLimitExceeded","message":"m","domain":"VZErrorDomain","code":6}}');
  assert.ok(res.kind === 'response' && res.response.error?.code === 6);
  const ev = parseHelperLine('{"v":1,"event":"stopped","cause":"guest"}');
  assert.ok(ev.kind === 'event' && ev.event.event === 'stopped' && ev.event.cause === 'guest');
  assert.throws(() => parseHelperLine('{"v":2,"event":"state","state":"running"}'), /protocol version 2/);
  assert.throws(() => parseHelperLine('{"v":1,"event":"state","state":"flying"}'), /bad event/);
  assert.throws(() => parseHelperLine('nope'), /not JSON/);
});

test('VZErrorDomain codes map to stable names; the two-VM limit reads as such', () => {
  assert.equal(vzErrorName('VZErrorDomain', 6), 'VirtualMachineLimitExceeded');
  assert.equal(vzErrorName('VZErrorDomain', 2), 'InvalidVirtualMachineConfiguration');
  assert.equal(vzErrorName('VZErrorDomain', 12), 'RestoreFailed');
  assert.equal(vzErrorName('VZErrorDomain', 99), 'VZError99');
  assert.equal(vzErrorName('NSPOSIXErrorDomain', 2), 'HostError');
  const d = describeHelperError({ name: 'VirtualMachineLimitExceeded', message: 'x', domain: 'VZErrorDomain', code: 6 }, 'start');
  assert.equal(d.reason, 'VirtualMachineLimitExceeded');
  assert.match(d.message, /at most two macOS VMs.*Tart/);
});

const base: VmSpec = {
  id: 'uid-1', name: 'ns/p', os: 'darwin', arch: 'aarch64', cpus: 4, memoryMiB: 8192,
  disk: { path: '/vm/disk', format: 'raw' },
  boot: { kind: 'macos', nvram: '/vm/nvram.bin', hardwareModel: 'HW', ecid: 'ID' },
  network: { mode: 'user', forwards: [] },
  shares: [{ tag: 'data', hostPath: '/h/data', readOnly: false }, { tag: 'cfg', hostPath: '/h/cfg', readOnly: true }],
};
const paths = vzPaths('/vm');

test('a macOS spec becomes the platform identity, NAT with the MAC, one automount share, the agent vsock port', () => {
  const c = startConfig(base, paths, '02:00:00:00:00:01');
  assert.deepEqual(c.boot, { kind: 'macos', hardwareModel: 'HW', machineIdentifier: 'ID', auxiliaryStorage: '/vm/nvram.bin' });
  assert.equal(c.memoryBytes, 8192 * 1024 * 1024);
  assert.deepEqual(c.network, { mode: 'nat', mac: '02:00:00:00:00:01' });
  assert.deepEqual(c.fileSystems, [{ kind: 'multiple', tag: MACOS_AUTOMOUNT_TAG, shares: [
    { name: 'data', hostPath: '/h/data', readOnly: false }, { name: 'cfg', hostPath: '/h/cfg', readOnly: true },
  ] }]);
  assert.deepEqual(c.vsock, [{ port: 1024, socket: '/vm/agent.sock' }]);
  assert.equal(c.console, '/vm/console.log');
  assert.equal(c.graphics, false);
});

test('Linux specs: one tag per share, kernel boot on hvc0, EFI with a store made when absent, bridged', () => {
  const linux: VmSpec = { ...base, os: 'linux', boot: { kind: 'kernel', kernel: '/k', initrd: '/i', cmdline: 'console=ttyS0 quiet' }, network: { mode: 'bridge', bridge: 'en0' } };
  const c = startConfig(linux, paths, 'm');
  assert.deepEqual(c.boot, { kind: 'linux', kernel: '/k', initrd: '/i', cmdline: 'console=ttyS0 quiet console=hvc0' });
  assert.deepEqual(c.fileSystems.map((f) => f.tag), ['data', 'cfg']);
  assert.deepEqual(c.network, { mode: 'bridged', interface: 'en0', mac: 'm' });
  assert.deepEqual(startConfig({ ...linux, boot: { kind: 'efi' } }, paths, 'm').boot, { kind: 'efi', variableStore: '/vm/efi-vars.fd', create: true });
  assert.deepEqual(startConfig({ ...linux, boot: { kind: 'efi', nvram: '/n' } }, paths, 'm').boot, { kind: 'efi', variableStore: '/n', create: false });
  assert.deepEqual(startConfig({ ...linux, network: { mode: 'none' } }, paths, 'm').network, { mode: 'none' });
  assert.throws(() => startConfig({ ...linux, shares: [{ tag: 'x'.repeat(36), hostPath: '/', readOnly: true }] }, paths, 'm'), /1 to 35 bytes/);
  assert.throws(() => startConfig({ ...linux, boot: base.boot }, paths, 'm'), (e: unknown) => e instanceof VmError && e.reason === 'InvalidSpec');
});

test('MACs are stable per id, unicast and locally administered, and differ between ids', () => {
  const a = macForId('pod-a');
  assert.equal(a, macForId('pod-a'));
  assert.notEqual(a, macForId('pod-b'));
  const first = parseInt(a.slice(0, 2), 16);
  assert.equal(first & 0x01, 0);
  assert.equal(first & 0x02, 2);
  assert.equal(normalizeMac('5A:94:ef:e4:c:ee'), '5a:94:ef:e4:0c:ee');
  assert.equal(normalizeMac('5a:94:ef'), undefined);
});

const LEASES = `{
\tname=old
\tip_address=192.168.64.2
\thw_address=1,5a:94:ef:e4:c:ee
\tidentifier=1,5a:94:ef:e4:c:ee
\tlease=0x65000000
}
{
\tname=admin
\tip_address=192.168.64.9
\thw_address=1,5a:94:ef:e4:c:ee
\tlease=0x66000000
}
{
\tip_address=192.168.64.3
\thw_address=ff,1:2:3:4:5:6
}
{
\tip_address=192.168.64.4
`;

test('dhcpd_leases: zero-padding, the latest lease per MAC, non-Ethernet and truncated blocks skipped', () => {
  const leases = parseDhcpdLeases(LEASES);
  assert.equal(leases.length, 2);
  assert.deepEqual(leases[1], { mac: '5a:94:ef:e4:0c:ee', ip: '192.168.64.9', name: 'admin', expires: 0x66000000 });
  assert.equal(leaseIpFor(leases, '5A:94:EF:E4:0C:EE'), '192.168.64.9');
  assert.equal(leaseIpFor(leases, '02:00:00:00:00:00'), undefined);
});

test('arp -an output is parsed, incomplete entries skipped', () => {
  const out = '? (192.168.64.5) at 5a:94:ef:e4:c:ee on bridge100 ifscope [bridge]\n? (192.168.1.1) at (incomplete) on en0 ifscope [ethernet]\n? (10.0.0.1) at 0:11:22:33:44:55 on en0 ifscope [ethernet]\n';
  assert.deepEqual(parseArp(out), [
    { ip: '192.168.64.5', mac: '5a:94:ef:e4:0c:ee', iface: 'bridge100' },
    { ip: '10.0.0.1', mac: '00:11:22:33:44:55', iface: 'en0' },
  ]);
});

test('IP discovery asks the agent first, then the leases, then ARP', async () => {
  const mac = '5a:94:ef:e4:0c:ee';
  const arp = async () => '? (192.168.64.77) at 5a:94:ef:e4:c:ee on bridge100 ifscope [bridge]';
  assert.deepEqual(await discoverIp(mac, { askAgent: async () => '10.1.2.3', readLeases: async () => LEASES, runArp: arp }), { ip: '10.1.2.3', source: 'agent' });
  assert.deepEqual(await discoverIp(mac, { askAgent: () => Promise.reject(new Error('no agent')), readLeases: async () => LEASES, runArp: arp }), { ip: '192.168.64.9', source: 'dhcp' });
  assert.deepEqual(await discoverIp(mac, { readLeases: async () => undefined, runArp: arp }), { ip: '192.168.64.77', source: 'arp' });
  assert.equal(await discoverIp(mac, { readLeases: async () => '', runArp: async () => '' }), undefined);
});

test('exits are classified from the intent, the stopped event and the child', () => {
  assert.equal(classifyVzExit({ duringStart: true, startError: { name: 'VirtualMachineLimitExceeded', message: 'x' } }).reason, 'BootFailed');
  assert.match(classifyVzExit({ duringStart: true, startError: { name: 'VirtualMachineLimitExceeded', message: 'x' } }).message, /two macOS VMs/);
  assert.equal(classifyVzExit({ intent: { kind: 'kill', message: 'k' }, duringStart: false }).reason, 'Killed');
  assert.equal(classifyVzExit({ intent: { kind: 'stop', message: 's' }, stop: { cause: 'requested' }, duringStart: false }).reason, 'Stopped');
  assert.equal(classifyVzExit({ stop: { cause: 'guest' }, duringStart: false }).reason, 'GuestShutdown');
  assert.equal(classifyVzExit({ stop: { cause: 'error', error: { name: 'InternalError', message: 'boom' } }, duringStart: false }).reason, 'Crashed');
  assert.match(classifyVzExit({ child: { code: null, signal: 'SIGKILL' }, duringStart: false }).message, /killed by SIGKILL/);
  assert.deepEqual(parseExitFile('{"v":1,"cause":"guest"}'), { cause: 'guest' });
  assert.equal(parseExitFile('garbage'), undefined);
});

test('codesign entitlements, ps times and macOS versions are read', () => {
  const xml = '<?xml version="1.0"?><plist version="1.0"><dict><key>com.apple.security.virtualization</key><true/></dict></plist>';
  assert.equal(hasEntitlement(xml), true);
  assert.equal(hasEntitlement(xml.replace('<true/>', '<false/>')), false);
  assert.equal(hasEntitlement('<dict></dict>'), false);
  assert.equal(parsePsTime('0:01.50'), 1.5);
  assert.equal(parsePsTime('01:02:03'), 3723);
  assert.equal(parsePsTime('1-00:00:01'), 86_401);
  assert.equal(majorVersion('14.5'), 14);
  assert.equal(majorVersion(undefined), 0);
});
