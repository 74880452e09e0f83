// The real vmlet-agent in the real test guest (QEMU, TCG), over the virtio-serial port, through
// AgentClient: exec with exit codes and stdin, a terminal (busybox telnetd allocates it) that follows
// resizes, a main process and its CRI logs, hostname, stats, and a clean shutdown. One VM for the file.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { AgentClient, MainExitEvent } from '../../src/agent/host/client.ts';
import { bootTestGuest, type BootedGuest } from '../guest/boot.ts';
import { ensureTestGuest } from '../guest/build.ts';

let vm: BootedGuest;
let client: AgentClient;

before(async () => {
  const guest = await ensureTestGuest((msg) => console.log(`test guest: ${msg}`));
  vm = await bootTestGuest({ guest: guest.dir, extraCmdline: 'vmlet.hostname=agent-e2e' });
  const ready = await vm.waitForAgent(120_000);
  client = ready.client;
  console.log(`# boot to agent-ready: ${(ready.readyMs / 1000).toFixed(2)} s`);
}, { timeout: 300_000 });

after(async () => {
  await vm?.stop();
});

test('exec in the guest reports output and exit codes, and passes stdin through to EOF', { timeout: 120_000 }, async () => {
  assert.deepEqual(await client.run({ shell: 'echo out; echo err >&2; exit 7' }), { exitCode: 7, signal: null, stdout: 'out\n', stderr: 'err\n' });
  const input = 'x'.repeat(200_000);
  const r = await client.run({ argv: ['wc', '-c'], input });
  assert.equal(r.stdout.trim(), String(input.length));
  const p = await client.exec({ argv: ['sleep', '1000'] });
  await p.signal('SIGINT');
  assert.deepEqual(await p.exited, { exitCode: 130, signal: 'SIGINT' });
});

test('an exec with a tty gets a /dev/pts terminal of the size asked, and follows a resize', { timeout: 120_000 }, async () => {
  const p = await client.exec({ argv: ['sh'], stdin: true, tty: { rows: 30, cols: 100 } });
  assert.equal(p.stderr, null);
  let screen = '';
  p.stdout.on('data', (d: Buffer) => (screen += d.toString()));
  const waitFor = async (re: RegExp): Promise<RegExpExecArray> => {
    for (let i = 0; i < 600; i++) {
      const m = re.exec(screen);
      if (m) return m;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`${re} never appeared on the terminal; it shows: ${JSON.stringify(screen)}`);
  };
  p.stdin!.write('tty; stty size; echo "[$TERM]"\n');
  await waitFor(/\/dev\/pts\/\d+\r\n30 100\r\n\[xterm\]/);
  await p.resize(40, 120);
  p.stdin!.write('stty size\n');
  await waitFor(/\r\n40 120\r\n/);
  p.stdin!.write('exit 3\n');
  assert.deepEqual(await p.exited, { exitCode: 3, signal: null });
});

test('a main process runs in the guest, its logs come back in order, and its exit is pushed', { timeout: 120_000 }, async () => {
  const exited = new Promise<MainExitEvent>((resolve) => client.on('main-exit', (e: MainExitEvent) => e.id === 'web' && resolve(e)));
  await client.startMain({ id: 'web', shell: 'for i in 1 2 3; do echo "hello $i"; done; echo warn >&2; exit 2', env: { A: 'b' } });
  assert.deepEqual(await exited.then((e) => [e.exitCode, e.signal]), [2, null]);
  const logs: Buffer[] = [];
  for await (const c of await client.logs('web')) logs.push(c as Buffer);
  assert.equal(Buffer.concat(logs).toString(), 'hello 1\nhello 2\nhello 3\nwarn\n');
  const status = await client.mainStatus('web');
  assert.equal(status.logPath, '/var/log/vmlet/web.log');
  const raw = await client.run({ argv: ['head', '-n', '1', status.logPath] });
  assert.match(raw.stdout, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stdout F hello 1\n$/);
});

test('the hostname can be set, and stats read the guest', { timeout: 60_000 }, async () => {
  assert.equal((await client.info()).hostname, 'agent-e2e');
  await client.setHostname('renamed-1');
  assert.equal((await client.run({ argv: ['hostname'] })).stdout, 'renamed-1\n');
  const s = await client.stats();
  assert.equal(s.cpu.cpus, 1);
  assert.ok(s.memory.totalBytes > 256 * 1024 * 1024 && s.memory.totalBytes <= 512 * 1024 * 1024, String(s.memory.totalBytes));
  assert.ok(s.filesystems[0]!.capacityBytes > 512 * 1024 * 1024);
});

test('a new host connection after the old one went away finds the main process still there', { timeout: 60_000 }, async () => {
  await client.startMain({ id: 'long', argv: ['sleep', '1000'] });
  client.close();
  client = await vm.connectAgent(30_000);
  assert.equal((await client.mainStatus('long')).state, 'running');
});

test('shutdown stops the main processes, and the guest powers off cleanly', { timeout: 120_000 }, async () => {
  await client.shutdown({ graceMs: 5000 });
  const exit = await vm.exited;
  assert.deepEqual(exit, { code: 0, signal: null });
});
