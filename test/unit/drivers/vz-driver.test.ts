// The vz driver end to end against a FAKE helper (test/fakes/fake-vz-helper.ts): a TypeScript stand-in
// that speaks the documented helper protocol (docs/VZ-HELPER-PROTOCOL.md) and runs no VM. This tests
// everything of the driver but Virtualization.framework itself — spawning the helper detached, vm.json,
// the control socket, re-attach after a "vmlet restart", stop/kill escalation, pause/resume/save/restore,
// the agent's vsock-proxy socket, the exit file and the two-VM-limit error. The real helper (Swift) can
// only run on a Mac and is not tested here.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { VmError, type VmSpec } from '../../../src/drivers/hypervisor.ts';
import { VzControl } from '../../../src/drivers/vz/control.ts';
import { VzDriver, type VzDriverOptions } from '../../../src/drivers/vz/driver.ts';
import type { VzVm } from '../../../src/drivers/vz/vm.ts';

const fake = fileURLToPath(new URL('../../fakes/fake-vz-helper.ts', import.meta.url));
const root = mkdtempSync(path.join(os.tmpdir(), 'vmlet-vz-'));
const started: VzVm[] = [];
after(async () => {
  for (const vm of started) if (vm.state() !== 'exited') await vm.kill().catch(() => {});
});

function driver(env: Record<string, string> = {}): Promise<VzDriver> {
  const opts: VzDriverOptions = { helper: [process.execPath, '--import', 'tsx', fake], startTimeoutMs: 20_000, pollMs: 100, env: { ...process.env, ...env } };
  return VzDriver.open(opts);
}

let n = 0;
function vmDir(): string {
  return mkdtempSync(path.join(root, `vm${++n}-`));
}

function macSpec(id: string): VmSpec {
  writeFileSync(path.join(root, 'disk.img'), '');
  writeFileSync(path.join(root, 'nvram.bin'), '');
  return {
    id, name: `default/${id}`, os: 'darwin', arch: 'aarch64', cpus: 2, memoryMiB: 4096,
    disk: { path: path.join(root, 'disk.img'), format: 'raw' },
    boot: { kind: 'macos', nvram: path.join(root, 'nvram.bin'), hardwareModel: 'aGFyZHdhcmU=', ecid: 'ZWNpZA==' },
    network: { mode: 'user', forwards: [] },
    shares: [{ tag: 'config', hostPath: root, readOnly: true }],
  };
}

async function start(d: VzDriver, spec: VmSpec): Promise<VzVm> {
  const vm = (await d.create(spec, vmDir())) as VzVm;
  started.push(vm);
  await vm.start();
  return vm;
}

test('start, the agent channel, pause/resume, save and a graceful stop through requestStop', async () => {
  const d = await driver();
  const vm = await start(d, macSpec('a1'));
  assert.equal(vm.state(), 'running');
  assert.ok(vm.pid());
  assert.match(vm.macAddress, /^[0-9a-f][26ae](:[0-9a-f]{2}){5}$/);
  const rec = JSON.parse(readFileSync(path.join(vm.dir, 'vm.json'), 'utf8')) as { driver: string; state: string; helper: { pid: number } };
  assert.deepEqual([rec.driver, rec.state, rec.helper.pid], ['vz', 'running', vm.pid()]);

  const agent = await vm.connectAgent(5000);
  const echoed = new Promise<string>((resolve) => agent.once('data', (b: Buffer) => resolve(b.toString())));
  agent.write('ping');
  assert.equal(await echoed, 'ping');
  agent.destroy();

  await vm.pause();
  assert.equal(vm.state(), 'paused');
  await vm.resume();
  assert.equal(vm.state(), 'running');
  const saved = path.join(vm.dir, 'state.vzvmsave');
  await vm.save(saved);
  assert.equal(vm.state(), 'paused');
  assert.equal(readFileSync(saved, 'utf8'), 'fake-vz-state');

  const exit = await vm.stop({ timeoutMs: 5000, askGuest: () => Promise.reject(new Error('no agent')) });
  assert.equal(exit.reason, 'Stopped');
  assert.match(exit.message, /requestStop/);
  assert.equal(vm.state(), 'exited');
  assert.match(readFileSync(vm.consoleLog, 'utf8'), /booted macos guest, 2 CPUs, network nat[\s\S]*stopped \(requested\)/);

  // A restart from the saved state.
  await vm.start({ restoreFrom: saved });
  assert.equal(vm.state(), 'running');
  assert.equal((await vm.kill()).reason, 'Killed');
});

test('the two-VM limit is a start failure with its own reason and words', async () => {
  const d = await driver({ FAKE_VZ_LIMIT: '1' });
  const vm = (await d.create(macSpec('limit'), vmDir())) as VzVm;
  started.push(vm);
  await assert.rejects(vm.start(), (err: unknown) => {
    assert.ok(err instanceof VmError);
    assert.equal(err.reason, 'VirtualMachineLimitExceeded');
    assert.match(err.message, /at most two macOS VMs/);
    return true;
  });
  const exit = await vm.exited;
  assert.equal(exit.reason, 'BootFailed');
  assert.equal(vm.state(), 'exited');
});

test('a guest that ignores the stop request is stopped by force at the deadline', async () => {
  const d = await driver({ FAKE_VZ_IGNORE_STOP: '1' });
  const vm = await start(d, macSpec('stubborn'));
  const t0 = Date.now();
  const exit = await vm.stop({ timeoutMs: 1200 });
  assert.equal(exit.reason, 'Killed');
  assert.match(exit.message, /did not shut down within 1\.2 s/);
  assert.ok(Date.now() - t0 < 8000);
});

test('the VM outlives vmlet: detach, attach from the dir, then the guest powers off', async () => {
  const d = await driver();
  const vm = await start(d, macSpec('survivor'));
  const pid = vm.pid();
  await vm.detach();

  const again = (await (await driver()).attach(vm.dir)) as VzVm;
  started.push(again);
  assert.equal(again.state(), 'running');
  assert.equal(again.pid(), pid);
  const agent = await again.connectAgent(2000);
  agent.destroy();

  // Someone powers the guest off (the fake's test-only request, on a second control session).
  const other = await VzControl.connect(path.join(vm.dir, 'control.sock'), 2000);
  assert.equal(other.hello.state, 'running');
  await other.request({ op: '_guestPowerOff' } as unknown as Parameters<VzControl['request']>[0]);
  const exit = await again.exited;
  assert.equal(exit.reason, 'GuestShutdown');
  other.close();
});

test('a VM that ended while no vmlet listened is classified from the helper exit file', async () => {
  const d = await driver();
  const vm = await start(d, macSpec('gone'));
  await vm.detach();
  const c = await VzControl.connect(path.join(vm.dir, 'control.sock'), 2000);
  await c.request({ op: 'forceStop' });
  for (let i = 0; i < 100 && !c.isClosed; i++) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 300));
  const again = (await d.attach(vm.dir)) as VzVm;
  assert.equal(again.state(), 'exited');
  const exit = await again.exited;
  assert.equal(exit.reason, 'Crashed');
  assert.match(exit.message, /forced/);
  await again.destroy();
});

test('create refuses what vz cannot run, with a reason', async () => {
  const d = await driver();
  const spec = macSpec('x86');
  await assert.rejects(d.create({ ...spec, arch: 'x86_64' }, vmDir()), (e: unknown) => e instanceof VmError && e.reason === 'Unsupported');
  await assert.rejects(d.create({ ...spec, disk: { path: spec.disk.path, format: 'qcow2' } }, vmDir()), /raw disks only/);
  await assert.rejects(d.create({ ...spec, network: { mode: 'user', forwards: [{ protocol: 'tcp', hostPort: 1, guestPort: 2 }] } }, vmDir()), /port forwards/);
  assert.equal(await d.attach(vmDir()), undefined);
});
