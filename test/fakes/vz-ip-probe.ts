// Run by vz-driver.test.ts inside a private mount namespace (`unshare -rm`) whose /var is an empty tmpfs:
// there it plays the Mac's side of IP discovery for a VM of the vz driver on the fake helper. It writes
// /var/db/dhcpd_leases as macOS's bootpd would (hw_address octets not zero-padded), asks the driver's
// VM for its address (the DHCP lease), then removes the leases file and puts an `arp` that prints what
// macOS's `arp -an` prints first on PATH and asks again (the ARP cache). Prints one JSON line.
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { VzDriver } from '../../src/drivers/vz/driver.ts';
import type { VzVm } from '../../src/drivers/vz/vm.ts';

const fake = fileURLToPath(new URL('./fake-vz-helper.ts', import.meta.url));
const root = mkdtempSync(path.join(os.tmpdir(), 'vmlet-vz-ip-'));
writeFileSync(path.join(root, 'disk.img'), '');
writeFileSync(path.join(root, 'kernel'), '');
const d = await VzDriver.open({ helper: [process.execPath, '--import', 'tsx', fake], startTimeoutMs: 20_000, pollMs: 100 });
const dir = path.join(root, 'vm');
mkdirSync(dir);
const vm = (await d.create({
  id: 'ip-probe', name: 'default/ip-probe', os: 'linux', arch: 'aarch64', cpus: 1, memoryMiB: 512,
  disk: { path: path.join(root, 'disk.img'), format: 'raw' },
  boot: { kind: 'kernel', kernel: path.join(root, 'kernel'), cmdline: 'console=hvc0' },
  network: { mode: 'user', forwards: [] }, shares: [],
}, dir)) as VzVm;
await vm.start();
const mac = vm.macAddress;
const unpadded = mac.split(':').map((o) => o.replace(/^0/, '')).join(':');
const out: Record<string, unknown> = { mac };
try {
  out.none = (await vm.ipAddress()) ?? null;
  mkdirSync('/var/db', { recursive: true });
  writeFileSync('/var/db/dhcpd_leases', [
    '{', '\tname=other', '\tip_address=192.168.64.2', '\thw_address=1,2:0:0:0:0:1', '\tidentifier=1,2:0:0:0:0:1', '\tlease=0x6a000000', '}',
    '{', '\tname=ip-probe', '\tip_address=192.168.64.9', `\thw_address=1,${unpadded}`, `\tidentifier=1,${unpadded}`, '\tlease=0x6a000010', '}', '',
  ].join('\n'));
  out.dhcp = (await vm.ipAddress()) ?? null;
  out.agentFirst = (await vm.ipAddress(() => Promise.resolve('10.0.0.5'))) ?? null;
  rmSync('/var/db/dhcpd_leases');
  const bin = path.join(root, 'bin');
  mkdirSync(bin);
  writeFileSync(path.join(bin, 'arp'), [
    '#!/bin/sh',
    '[ "$1" = -an ] || exit 64',
    'echo "? (192.168.64.1) at 6e:7e:67:a0:5b:64 on bridge100 ifscope permanent [bridge]"',
    'echo "? (192.168.64.4) at (incomplete) on bridge100 ifscope [bridge]"',
    `echo "? (192.168.64.11) at ${unpadded} on bridge100 ifscope [bridge]"`,
    '',
  ].join('\n'));
  chmodSync(path.join(bin, 'arp'), 0o755);
  process.env.PATH = `${bin}${path.delimiter}${process.env.PATH ?? ''}`;
  out.arp = (await vm.ipAddress()) ?? null;
} finally {
  await vm.kill();
  rmSync(root, { recursive: true, force: true });
}
process.stdout.write(`${JSON.stringify(out)}\n`);
