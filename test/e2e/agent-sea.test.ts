// The self-contained agent (src/agent/sea.ts) in a real guest: the Linux test guest under QEMU, booted
// with dropbear and without the agent (vmlet.ssh=on vmlet.agent=off), gets the linux-x64 SEA binary
// over SSH (installAgentOverSsh with artifact 'binary'), and the process that then answers on the
// virtio-serial channel is that binary, not node running the bundle. (The test guest has node; hiding
// it there is not possible, so "runs without node" is shown on the host, test/unit/agent/sea.test.ts.)
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ensureAgentBinary } from '../../src/agent/sea.ts';
import { SshConnection, waitForSsh, type SshConnectOptions } from '../../src/agent/ssh/client.ts';
import { installAgentOverSsh } from '../../src/agent/ssh/install.ts';
import { createFixtureDir, freePort, removeFixtureDir } from '../harness/processes.ts';
import { bootTestGuest, type BootedGuest } from '../guest/boot.ts';
import { ensureTestGuest } from '../guest/build.ts';

const linuxX64 = process.platform === 'linux' && process.arch === 'x64';
let vm: BootedGuest | undefined;
let dir: string | undefined;
let port: number;

const target = (): SshConnectOptions => ({
  host: '127.0.0.1',
  port,
  credentials: { username: 'root', password: 'root' },
  hostKeyFile: join(dir!, 'ssh-host-key.json'),
  timeoutMs: 20_000, // TCG: key exchange in the guest is slow
});

before(async () => {
  if (!linuxX64) return;
  const guest = await ensureTestGuest((msg) => console.log(`test guest: ${msg}`));
  dir = await createFixtureDir('vmlet-sea-e2e-');
  port = await freePort();
  vm = await bootTestGuest({
    guest: guest.dir,
    extraCmdline: 'vmlet.ssh=on vmlet.agent=off',
    extraArgs: ['-nic', `user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:${port}-:22`],
  });
}, { timeout: 240_000 });

after(async () => {
  await vm?.stop();
  if (dir) await removeFixtureDir(dir);
});

test('the self-contained agent installed over SSH is what answers on virtio-serial', { skip: !linuxX64 && 'needs a linux-x64 host', timeout: 300_000 }, async (t) => {
  let root: SshConnection;
  try {
    root = await waitForSsh({ ...target(), totalTimeoutMs: 150_000 });
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${await readFile(vm!.consoleLog, 'utf8').catch(() => '')}`);
  }
  try {
    const result = await installAgentOverSsh(root, {
      artifact: 'binary',
      agentBinary: (platform) => ensureAgentBinary(platform),
      log: (m) => t.diagnostic(m),
    });
    assert.equal(result.artifact, 'binary');
    assert.equal(result.remotePath, '/usr/local/lib/vmlet/vmlet-agent');
    assert.equal(result.start, 'setsid');
  } finally {
    root.close();
  }
  const client = await vm!.connectAgent(90_000);
  try {
    // The command's parent is the agent: its executable is the installed binary, not node.
    const r = await client.run({ argv: ['sh', '-c', 'readlink /proc/$PPID/exe; tr "\\0" " " </proc/$PPID/cmdline'] });
    assert.equal(r.exitCode, 0, r.stderr);
    const [exe, cmdline] = r.stdout.split('\n');
    assert.equal(exe, '/usr/local/lib/vmlet/vmlet-agent');
    assert.doesNotMatch(cmdline ?? '', /vmlet-agent\.cjs/);
    assert.equal((await client.info()).node, process.version);
  } finally {
    client.close();
  }
});
