// The Linux test guest (test/guest/) under QEMU with TCG: it boots to agent-ready, the agent channel
// (virtio-serial, found by name in the guest) carries bytes both ways, an exiting agent powers the VM
// off cleanly, and a guest that cannot boot fails fast with the reason, leaving nothing behind.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { before, test } from 'node:test';
import { createFixtureDir, removeFixtureDir } from '../harness/processes.ts';
import { bootTestGuest, type BootedGuest } from '../guest/boot.ts';
import { ensureTestGuest, type TestGuest } from '../guest/build.ts';

let guest: TestGuest;

before(async () => {
  // Cached after the first build (about a minute cold: two package downloads, mke2fs, qemu-img).
  guest = await ensureTestGuest((msg) => console.log(`test guest: ${msg}`));
});

test('boots under TCG to agent-ready and carries bytes both ways over virtio-serial', { timeout: 240_000 }, async (t) => {
  const vm = await bootTestGuest({
    guest: guest.dir,
    extraCmdline: 'vmlet.hostname=probe-1',
    extraArgs: ['-nic', 'user,model=virtio-net-pci'],
  });
  try {
    const { client, readyMs } = await vm.waitForAgent(90_000);
    const info = await client.info();
    t.diagnostic(`boot to agent-ready: ${(readyMs / 1000).toFixed(2)} s (guest uptime ${info.uptimeSeconds} s, kernel ${info.kernel})`);
    t.diagnostic(`qemu: ${vm.command.join(' ')}`);
    // The guest's init did its part: hostname from the command line, eth0 on QEMU's user network.
    assert.equal(info.hostname, 'probe-1');
    assert.ok(info.addresses.some((a) => a.interface === 'eth0' && a.address === '10.0.2.15'), JSON.stringify(info.addresses));

    // Past the 32 KiB a port write takes at once, non-ASCII, and many lines in one write, through cat.
    const lines = [
      'hello from the host',
      'h\u00e9llo \u2713 \u{1f680} \t tabs and $quotes\'"',
      randomBytes(75_000).toString('base64'),
      ...Array.from({ length: 200 }, (_, i) => `line ${i} ${randomBytes(24).toString('hex')}`),
    ];
    const started = performance.now();
    const echoed = await client.run({ argv: ['cat'], input: `${lines.join('\n')}\n` });
    assert.deepEqual(echoed, { exitCode: 0, signal: null, stdout: `${lines.join('\n')}\n`, stderr: '' });
    const bytes = Buffer.byteLength(lines.join('\n'));
    t.diagnostic(`echoed ${lines.length} lines (${bytes} bytes) in ${(performance.now() - started).toFixed(0)} ms`);

    // The host side may go away and come back: the guest sees end-of-file meanwhile and keeps going.
    client.close();
    const again = await vm.connectAgent(30_000);
    assert.equal((await again.run({ argv: ['echo', 'after reconnecting'] })).stdout, 'after reconnecting\n');

    await again.shutdown({ graceMs: 5000 });
    const exit = await within(vm.exited, 30_000, 'QEMU to exit after the agent did');
    assert.deepEqual(exit, { code: 0, signal: null }, 'a powered-off guest ends QEMU with status 0');
    assert.match(await readFile(vm.consoleLog, 'utf8'), /agent exited with status 0; powering off/);
  } finally {
    await vm.stop();
  }
  assertNothingLeft(vm);
});

test('a root disk that is not ext4 fails with the reason within a bounded time', { timeout: 180_000 }, async (t) => {
  const dir = await createFixtureDir('vmlet-bad-disk-');
  let vm: BootedGuest | undefined;
  try {
    const disk = join(dir, 'random.img');
    await writeFile(disk, randomBytes(16 * 1024 * 1024));
    const started = performance.now();
    vm = await bootTestGuest({ guest: { ...guest, rootDisk: disk, rootDiskFormat: 'raw' } });
    const err = await vm.waitForAgent(90_000).then(
      () => assert.fail('a random root disk must not boot'),
      (e: unknown) => e as Error,
    );
    t.diagnostic(`failed after ${((performance.now() - started) / 1000).toFixed(1)} s: ${err.message.split('\n')[0]}`);
    // The guest said why on its console, powered off, and the error quotes it.
    assert.match(err.message, /QEMU exited \(code 0/);
    assert.match(err.message, /vmlet-init: cannot mount \/dev\/vda as ext4/);
  } finally {
    await vm?.stop();
    await removeFixtureDir(dir);
  }
  assertNothingLeft(vm);
});

test('a kernel that is not there fails at once with QEMU\'s reason', { timeout: 60_000 }, async () => {
  const vm = await bootTestGuest({ guest: { ...guest, kernel: '/nonexistent/vmlinux' } });
  try {
    await assert.rejects(vm.waitForAgent(30_000), (err: Error) => {
      assert.match(err.message, /QEMU exited \(code 1/);
      assert.match(err.message, /\/nonexistent\/vmlinux/);
      return true;
    });
  } finally {
    await vm.stop();
  }
  assertNothingLeft(vm);
});

/** After stop(): QEMU is gone, no process uses the guest's files, and its work dir is removed. */
function assertNothingLeft(vm: BootedGuest): void {
  assert.throws(() => process.kill(vm.pid, 0), /ESRCH/, `QEMU (pid ${vm.pid}) still runs`);
  assert.equal(existsSync(vm.workDir), false, `${vm.workDir} is left behind`);
  const users = readdirSync('/proc').filter((pid) => {
    if (!/^\d+$/.test(pid)) return false;
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(vm.workDir);
    } catch {
      return false; // exited while we looked
    }
  });
  assert.deepEqual(users, [], `processes still use ${vm.workDir}`);
}

async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
