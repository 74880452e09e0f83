// Benchmark: VMs under the QEMU driver with the real guest agent, on the Linux test guest imported as a
// vmlet image (the path `vmlet vm run` and pods take: image store → disk clone → QEMU → agent).
//   1. cold boot to agent-ready (VmInstance.launch: clone, QEMU start, kernel, init, agent HELLO) vs
//      restore of a saved state to agent-ready (QMP migrate to a file, then start({restoreFrom}) and a
//      fresh agent handshake + ping). Target: restore >= 5x faster.
//   2. `true` through the agent vs through SSH (dropbear in the same guest), on an open connection, and
//      SSH with a new connection per command (what an SSH-only exec pays). Target: agent >= 3x faster.
//   3. throughput of 1 GiB of stdout through an agent exec (and 256 MiB through SSH, for scale).
// Run: npm run bench -- vm      (BENCH_ROUNDS=3, BENCH_STDOUT_MIB=1024 by default)
import { rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { AgentClient } from '../src/agent/host/client.ts';
import { SshConnection, waitForSsh } from '../src/agent/ssh/client.ts';
import { QemuDriver } from '../src/drivers/qemu/index.ts';
import { importImage } from '../src/images/build.ts';
import { ImageStore } from '../src/images/store/image-store.ts';
import { VmInstance } from '../src/runtime/vm-instance.ts';
import { createFixtureDir, freePort, removeFixtureDir } from '../test/harness/processes.ts';
import { ensureTestGuest } from '../test/guest/build.ts';
import { guestImageSource } from '../test/guest/image.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
/** Bytes of stdout through an agent exec (BENCH_STDOUT_MIB; default 1024: ~7 min under TCG). */
const STDOUT_BYTES = Number(process.env.BENCH_STDOUT_MIB ?? 1024) * 1024 * 1024;
const MiB = 1024 ** 2;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const ms = (x: number) => `${x.toFixed(x < 10 ? 2 : 0)} ms`;
const s = (x: number) => `${(x / 1000).toFixed(2)} s`;

const guest = await ensureTestGuest((m) => console.log(`guest: ${m}`));
const dir = await createFixtureDir('vmlet-bench-vm-');
const instances: VmInstance[] = [];
try {
  const store = new ImageStore(path.join(dir, 'store'));
  await store.init();
  const image = await importImage({ store, name: 'test-guest:bench', source: await guestImageSource(guest) });
  const driver = await QemuDriver.open();
  console.log(`host: ${os.cpus().length} cores, ${driver.describe()}`);
  const launch = async (extra: Partial<Parameters<typeof VmInstance.launch>[0]> = {}) => {
    const vm = await VmInstance.launch({ store, driver, vmDir: path.join(dir, 'vms'), image, name: 'bench', ...extra });
    instances.push(vm);
    return vm;
  };

  // 1. Cold boot vs restore.
  const cold: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const t0 = performance.now();
    const vm = await launch();
    cold.push(performance.now() - t0);
    if (i < ROUNDS - 1) await vm.stop(10_000);
  }
  const vm = instances.at(-1)!;
  const restore: number[] = [];
  const saveTimes: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const state = path.join(dir, `state-${i}`);
    const t0 = performance.now();
    await vm.vm.save(state);
    saveTimes.push(performance.now() - t0);
    vm.agent.close();
    await vm.vm.kill();
    const t1 = performance.now();
    await vm.vm.start({ restoreFrom: state });
    const agent = await AgentClient.connect(await vm.vm.connectAgent(10_000), { timeoutMs: 30_000 });
    await agent.ping();
    restore.push(performance.now() - t1);
    (vm as unknown as { agent: AgentClient }).agent = agent;
    await rm(state, { force: true });
  }
  await vm.stop(10_000);
  console.log('\n| measure | median | runs |\n|---|---|---|');
  console.log(`| cold boot to agent-ready (clone + QEMU + kernel + init + agent) | ${s(median(cold))} | ${cold.map(s).join(', ')} |`);
  console.log(`| save of the running VM (${guest.manifest.sizes ? '512 MiB guest' : ''}) | ${s(median(saveTimes))} | ${saveTimes.map(s).join(', ')} |`);
  console.log(`| restore to agent-ready (QEMU -incoming + handshake + ping) | ${s(median(restore))} | ${restore.map(s).join(', ')} |`);
  console.log(`| **ratio cold / restore** | **${(median(cold) / median(restore)).toFixed(1)}x** | target >= 5x |`);

  // 2 and 3: one VM with both the agent and dropbear.
  const sshPort = await freePort();
  const both = await launch({ extraCmdline: 'vmlet.ssh=on', network: { mode: 'user', forwards: [{ protocol: 'tcp', hostPort: sshPort, guestPort: 22 }] } });
  const ssh = await waitForSsh({
    host: '127.0.0.1', port: sshPort, credentials: { username: 'admin', password: 'admin' },
    hostKeyFile: path.join(dir, 'ssh-host-key'), totalTimeoutMs: 60_000,
  });
  const N = 30;
  const time = async (n: number, f: () => Promise<unknown>) => {
    const xs: number[] = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      await f();
      xs.push(performance.now() - t0);
    }
    return median(xs);
  };
  await both.agent.run({ argv: ['true'] });
  await ssh.run({ argv: ['true'] });
  const viaAgent = await time(N, async () => {
    const r = await both.agent.run({ argv: ['true'] });
    if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}`);
  });
  const viaSsh = await time(N, async () => {
    const r = await ssh.run({ argv: ['true'] });
    if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}`);
  });
  const viaSshNew = await time(Math.ceil(N / 3), async () => {
    const c = await SshConnection.connect({ host: '127.0.0.1', port: sshPort, credentials: { username: 'admin', password: 'admin' }, hostKeyFile: path.join(dir, 'ssh-host-key') });
    try {
      await c.run({ argv: ['true'] });
    } finally {
      c.close();
    }
  });
  // What the guest itself costs, measured inside it (the floor under any exec path): an agent round trip
  // with no process (ping), and a fork+exec of /bin/true from busybox sh and from Node (the agent's spawn).
  const ping = await time(N, () => both.agent.ping());
  // busybox sh: (50 fork+execs - none) / 50; Node: 10 spawnSyncs / 10; timed by Node inside the guest.
  const inGuest = await both.agent.run({ argv: ['node', '-e', [
    "const c = require('child_process');",
    "const t = (f) => { const a = process.hrtime.bigint(); f(); return Number(process.hrtime.bigint() - a) / 1e6; };",
    "const loop = (n) => t(() => c.spawnSync('/bin/sh', ['-c', 'i=0; while [ $i -lt ' + n + ' ]; do /bin/true; i=$((i+1)); done']));",
    "const sh = (loop(50) - loop(0)) / 50;",
    "const node = t(() => { for (let i = 0; i < 10; i++) c.spawnSync('/bin/true'); }) / 10;",
    "console.log(sh + '\\n' + node);",
  ].join(' ')] });
  const [shFork, nodeSpawn] = inGuest.stdout.trim().split('\n').map(Number);
  console.log('\n| `true` in the guest | median | ratio to the agent |\n|---|---|---|');
  console.log(`| (floor) agent ping round trip, no process | ${ms(ping)} | |`);
  console.log(`| (floor) fork+exec of /bin/true inside the guest: busybox sh / Node spawnSync | ${ms(shFork!)} / ${ms(nodeSpawn!)} | |`);
  console.log(`| agent exec | ${ms(viaAgent)} | 1x |`);
  console.log(`| SSH exec, open connection | ${ms(viaSsh)} | **${(viaSsh / viaAgent).toFixed(1)}x** (target >= 3x) |`);
  console.log(`| SSH exec, new connection each time | ${ms(viaSshNew)} | ${(viaSshNew / viaAgent).toFixed(1)}x |`);

  const drain = async (stream: NodeJS.ReadableStream) => {
    let n = 0;
    for await (const chunk of stream) n += (chunk as Buffer).length;
    return n;
  };
  const t0 = performance.now();
  const big = await both.agent.exec({ argv: ['head', '-c', String(STDOUT_BYTES), '/dev/zero'] });
  const [got] = await Promise.all([drain(big.stdout), big.exited]);
  const agentSec = (performance.now() - t0) / 1000;
  if (got !== STDOUT_BYTES) throw new Error(`agent exec delivered ${got} bytes of ${STDOUT_BYTES}`);
  // The guest's own pipe speed under this accelerator: the ceiling for any exec's output.
  const pipeBytes = 128 * MiB;
  const tp = performance.now();
  const pipe = await both.agent.run({ shell: `head -c ${pipeBytes} /dev/zero | cat > /dev/null` });
  if (pipe.exitCode !== 0) throw new Error(`in-guest pipe: ${pipe.stderr}`);
  const pipeSec = (performance.now() - tp) / 1000;
  const t1 = performance.now();
  const sshBytes = Math.min(256 * MiB, STDOUT_BYTES);
  const sshBig = await ssh.exec({ argv: ['head', '-c', String(sshBytes), '/dev/zero'] });
  const [sshGot] = await Promise.all([drain(sshBig.stdout), sshBig.exited]);
  const sshSec = (performance.now() - t1) / 1000;
  if (sshGot !== sshBytes) throw new Error(`ssh exec delivered ${sshGot} bytes of ${sshBytes}`);
  console.log('\n| stdout through exec | bytes | time | rate |\n|---|---|---|---|');
  console.log(`| agent | ${STDOUT_BYTES / MiB} MiB | ${agentSec.toFixed(2)} s | **${(STDOUT_BYTES / MiB / agentSec).toFixed(1)} MiB/s** |`);
  console.log(`| (ceiling) \`head -c | cat\` inside the guest | 128 MiB | ${pipeSec.toFixed(2)} s | ${(pipeBytes / MiB / pipeSec).toFixed(1)} MiB/s |`);
  console.log(`| SSH (dropbear) | ${sshBytes / MiB} MiB | ${sshSec.toFixed(2)} s | ${(sshBytes / MiB / sshSec).toFixed(1)} MiB/s |`);
  ssh.close();
} finally {
  for (const i of instances) await i.dispose().catch(() => undefined);
  await removeFixtureDir(dir);
}
