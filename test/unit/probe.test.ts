import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { probeHypervisor } from '../../src/drivers/probe.ts';

// A stand-in QEMU on a private PATH: this unit test checks how the probe reads what it finds.
function fakeQemu(script: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmlet-probe-'));
  const bin = path.join(dir, 'qemu-system-x86_64');
  writeFileSync(bin, `#!/bin/sh\n${script}\n`);
  chmodSync(bin, 0o755);
  return dir;
}

test('QEMU on PATH makes the host usable, with its version and the accelerator in the message', async () => {
  const p = await probeHypervisor({ want: 'auto', platform: 'linux', arch: 'amd64', searchPath: [fakeQemu('echo "QEMU emulator version 7.2.19 (Debian)"')] });
  assert.equal(p.usable, true);
  assert.equal(p.driver, 'qemu');
  assert.deepEqual(p.guestOSes, ['linux']);
  assert.match(p.message, /qemu-system-x86_64 7\.2\.19 with (KVM|TCG)/);
});

test('no QEMU, a broken QEMU, or vz off a Mac are reported with a reason', async () => {
  const missing = await probeHypervisor({ want: 'auto', platform: 'linux', arch: 'amd64', searchPath: [mkdtempSync(path.join(os.tmpdir(), 'empty-'))] });
  assert.deepEqual([missing.usable, missing.reason], [false, 'QEMUNotInstalled']);
  const broken = await probeHypervisor({ want: 'qemu', platform: 'linux', arch: 'amd64', searchPath: [fakeQemu('exit 3')] });
  assert.deepEqual([broken.usable, broken.reason], [false, 'QEMUBroken']);
  const vz = await probeHypervisor({ want: 'vz', platform: 'linux', arch: 'amd64' });
  assert.deepEqual([vz.usable, vz.reason], [false, 'VirtualizationFrameworkUnavailable']);
});
