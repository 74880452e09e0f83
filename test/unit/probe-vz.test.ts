// The probe on a Mac (platform and helper stand-ins): vz when the helper is found and signed with the
// virtualization entitlement, a reason for each way it is not; `auto` falls back to QEMU then. Linux
// hosts never look for the helper.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { probeHypervisor, type VzHelperFinding } from '../../src/drivers/probe.ts';

const found = (f: VzHelperFinding) => async () => f;
const empty = [mkdtempSync(path.join(os.tmpdir(), 'vmlet-probe-vz-'))];

test('a signed, entitled helper on darwin/arm64 makes vz the driver, for auto and for vz', async () => {
  const helper = found({ path: '/opt/vmlet-vz', signature: { signed: true, entitled: true } });
  for (const want of ['auto', 'vz'] as const) {
    const p = await probeHypervisor({ want, platform: 'darwin', arch: 'arm64', vzHelper: helper, searchPath: empty });
    assert.deepEqual([p.usable, p.driver, p.accelerator, p.reason], [true, 'vz', 'hvf', 'VzReady']);
    assert.deepEqual(p.guestOSes, ['macos', 'linux']);
  }
});

test('missing, unsigned or unentitled helpers are reasons; auto then looks for QEMU', async () => {
  const cases: Array<[VzHelperFinding, string]> = [
    [{}, 'VzHelperNotFound'],
    [{ path: '/x', signature: { signed: false, why: 'code object is not signed at all' } }, 'VzHelperNotSigned'],
    [{ path: '/x', signature: { signed: true, entitled: false } }, 'VzHelperNotEntitled'],
  ];
  for (const [finding, reason] of cases) {
    const vz = await probeHypervisor({ want: 'vz', platform: 'darwin', arch: 'arm64', vzHelper: found(finding) });
    assert.deepEqual([vz.usable, vz.reason], [false, reason]);
    const auto = await probeHypervisor({ want: 'auto', platform: 'darwin', arch: 'arm64', vzHelper: found(finding), searchPath: empty });
    assert.equal(auto.reason, 'QEMUNotInstalled');
  }
});

test('Linux hosts never look for the vz helper', async () => {
  let asked = false;
  const p = await probeHypervisor({ want: 'auto', platform: 'linux', arch: 'amd64', searchPath: empty, vzHelper: async () => ((asked = true), {}) });
  assert.equal(p.reason, 'QEMUNotInstalled');
  assert.equal(asked, false);
});
