// `vmlet vm run IMAGE -- CMD` end to end, as a user runs it: the test guest imported as a vmlet Linux
// image, pushed to the real registry, pulled by `vm run` into an empty store, booted under QEMU, the
// command run through the real guest agent, the VM stopped and its directory removed.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { runCommand } from '../harness/exec.ts';
import { createFixtureDir, removeFixtureDir } from '../harness/processes.ts';
import { startRegistry, type Registry } from '../harness/registry.ts';
import { runVmlet, VMLET_BIN, vmProcessesUnder } from '../harness/vmlet.ts';
import { ensureTestGuest } from '../guest/build.ts';
import { guestImageSource, importArgs } from '../guest/image.ts';

let registry: Registry;
let dir: string;
let image: string;

/** `vmlet <group> <verb> --store=STORE ...args`: the store goes before the guest command. */
const vmlet = (store: string, [group, verb, ...args]: string[], input?: string) =>
  runCommand(process.execPath, [VMLET_BIN, group!, verb!, `--store=${store}`, ...args], { timeoutMs: 240_000, ...(input !== undefined ? { input } : {}) });

before(async () => {
  const guest = await ensureTestGuest();
  registry = await startRegistry({});
  dir = await createFixtureDir('vmlet-vm-run-');
  const src = await guestImageSource(guest);
  const build = path.join(dir, 'build-store');
  const imported = await runVmlet([...importArgs('guest:1', src), `--store=${build}`], {}, 240_000);
  assert.equal(imported.code, 0, imported.stderr);
  image = `${registry.host}/vmlet/test-guest:1`;
  const pushed = await runVmlet(['image', 'push', 'guest:1', image, `--store=${build}`], {}, 240_000);
  assert.equal(pushed.code, 0, pushed.stderr);
});

after(async () => {
  await registry?.stop();
  if (dir) await removeFixtureDir(dir);
});

test('vm run pulls the image, runs the command in the VM with its stdout, stderr and exit code, and leaves nothing behind', async () => {
  const store = path.join(dir, 'store');
  const r = await vmlet(store, ['vm', 'run', '-e', 'GREETING=hello world', '-w', '/tmp', image, '--',
    'sh', '-c', 'echo "$GREETING from $(hostname) in $(pwd)"; uname -s; echo oops >&2; exit 3']);
  assert.equal(r.code, 3, r.stderr);
  assert.equal(r.stdout, 'hello world from vmlet-guest in /tmp\nLinux\n');
  assert.match(r.stderr, /oops\n$/);
  assert.deepEqual(await readdir(path.join(store, 'vms')), [], 'the VM directory is removed');
  assert.deepEqual(await vmProcessesUnder(store), []);
  const ls = JSON.parse((await vmlet(store, ['image', 'ls', '--json'])).stdout) as Array<{ names: string[]; inUse: boolean }>;
  assert.equal(ls.length, 1);
  assert.equal(ls[0]!.inUse, false, 'the image is released');
});

test('vm run -i passes stdin through, and -v shares a host directory the guest can read', async () => {
  const store = path.join(dir, 'store');
  const share = path.join(dir, 'share');
  await mkdir(share, { recursive: true });
  const secret = randomBytes(16).toString('hex');
  await writeFile(path.join(share, 'note.txt'), `${secret}\n`);
  const input = `${'line of input\n'.repeat(1000)}end\n`;
  const r = await vmlet(store, ['vm', 'run', '-i', '-v', `${share}:/mnt/share:ro`, image, '--',
    'sh', '-c', 'wc -l; cat /mnt/share/note.txt; touch /mnt/share/x 2>/dev/null && echo writable || echo read-only'], input);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.trim().split('\n').map((l) => l.trim()), ['1001', secret, 'read-only']);
  assert.deepEqual(await vmProcessesUnder(store), []);
});

test('an image whose disk cannot boot fails vm run with BootFailed and the console tail, and leaves nothing behind', async () => {
  const guest = await ensureTestGuest();
  const src = await guestImageSource(guest);
  const broken = path.join(dir, 'broken-disk.img');
  await writeFile(broken, randomBytes(8 * 1024 * 1024));
  const store = path.join(dir, 'store-broken');
  const imported = await runVmlet(['image', 'import', 'broken:1', `--disk=${broken}`, `--config=${src.config}`, `--kernel=${src.kernel}`, `--initrd=${src.initrd}`, `--store=${store}`], {}, 120_000);
  assert.equal(imported.code, 0, imported.stderr);
  const r = await vmlet(store, ['vm', 'run', '--boot-timeout=120', 'broken:1', '--', 'true']);
  assert.equal(r.code, 125, r.stdout);
  assert.match(r.stderr, /^vmlet: the VM exited before its agent answered \((GuestShutdown|Crashed): /);
  assert.match(r.stderr, /console:/);
  assert.deepEqual(await readdir(path.join(store, 'vms')), []);
  assert.deepEqual(await vmProcessesUnder(store), []);
});

test('vm run refuses bad flags in one line before booting anything', async () => {
  const store = path.join(dir, 'store');
  for (const [args, message] of [
    [['-p', '99999:80'], /--publish "99999:80" must be/],
    [['-v', 'relative'], /--volume "relative" must be/],
    [['--pull=sometimes'], /--pull must be missing, always or never/],
  ] as const) {
    const r = await vmlet(store, ['vm', 'run', ...args, image, '--', 'true']);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
  const none = await vmlet(store, ['vm', 'run', image]);
  assert.equal(none.code, 2);
  assert.match(none.stderr, /needs a command/);
});

test('an image whose guest runs SSH but no agent gets the agent installed over SSH, and the command runs through it', async () => {
  const store = path.join(dir, 'store');
  // The test guest without its agent and with dropbear: what a stock image with Remote Login looks like.
  const r = await vmlet(store, ['vm', 'run', '--verbose', '--append=vmlet.agent=off vmlet.ssh=on', '--ssh-user=root', '--ssh-password=root', image, '--',
    'sh', '-c', 'echo "agent pid $PPID: $(cat /proc/$PPID/cmdline | tr "\\0" " ")"; exit 4']);
  assert.equal(r.code, 4, r.stderr);
  assert.match(r.stdout, /^agent pid \d+: \S*node \/usr\/local\/lib\/vmlet\/vmlet-agent\.cjs/, 'the installed agent ran the command');
  assert.match(r.stderr, /installed after [\d.]+ s/);
  assert.deepEqual(await vmProcessesUnder(store), []);

  const wrong = await vmlet(store, ['vm', 'run', '--boot-timeout=60', '--append=vmlet.agent=off vmlet.ssh=on', '--ssh-user=root', '--ssh-password=nope', image, '--', 'true']);
  assert.equal(wrong.code, 125);
  assert.match(wrong.stderr, /agent did not answer, and it could not be installed over SSH: .*authentication failed/);
  assert.deepEqual(await vmProcessesUnder(store), []);
});
