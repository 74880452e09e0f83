// Boots the test guest (build.ts) with QEMU under TCG for tests: a qcow2 overlay on the cached root disk,
// the serial console to a file, the agent's virtio-serial port on a unix socket, QMP on another. QEMU is
// a tracked process (test/harness/processes.ts), so it dies and its files go with the test process too.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentClient } from '../../src/agent/host/client.ts';
import { runChecked } from '../harness/exec.ts';
import {
  createFixtureDir, logTail, removeFixtureDir, spawnTracked, stopProcess,
  type ExitStatus, type TrackedProcess,
} from '../harness/processes.ts';
import { GUEST_CMDLINE, loadTestGuest } from './build.ts';
import { connectChannel } from './channel.ts';

/** The virtio-serial port name the agent looks for under /sys/class/virtio-ports (src/agent/guest/port.ts). */
export const AGENT_PORT_NAME = 'org.vmlet.agent.0';
const QEMU = 'qemu-system-x86_64';
const QBOOT = '/usr/share/qemu/qboot.rom';

export interface BootOptions {
  /** A guest dir (TestGuest.dir), or the files to boot, e.g. a TestGuest with a broken root disk swapped in. */
  guest: string | GuestFiles;
  memoryMiB?: number;
  cpus?: number;
  /** Appended to the kernel command line, e.g. "vmlet.hostname=web-0". */
  extraCmdline?: string;
  /** Appended to QEMU's arguments, e.g. ['-nic', 'user,model=virtio-net-pci']. */
  extraArgs?: string[];
}

export interface GuestFiles {
  kernel: string;
  initrd: string;
  rootDisk: string;
  rootDiskFormat: 'qcow2' | 'raw';
  /** Defaults to the command line build.ts made the guest for. */
  cmdline?: string;
}

export interface BootedGuest {
  pid: number;
  /** Per-boot dir: overlay, sockets, logs. Removed by stop(). */
  workDir: string;
  consoleLog: string;
  /** QEMU's own stdout/stderr (e.g. "could not open kernel"). */
  qemuLog: string;
  agentSocket: string;
  qmpSocket: string;
  /** The exact QEMU command line. */
  command: string[];
  /** performance.now() just before QEMU was spawned. */
  startedAt: number;
  process: TrackedProcess;
  exited: Promise<ExitStatus>;
  /**
   * Connects to the agent channel and greets the agent (AgentClient) until it answers. If QEMU exits or
   * timeoutMs passes first, rejects with what happened and the tails of the console and QEMU logs.
   */
  waitForAgent(timeoutMs?: number): Promise<{ client: AgentClient; readyMs: number }>;
  /** Another connection to the agent (it replaces the previous one, as a restarted vmlet would). */
  connectAgent(timeoutMs?: number): Promise<AgentClient>;
  /** Kills QEMU if it still runs, closes channels, removes the work dir. Safe to call twice. */
  stop(): Promise<void>;
}

/**
 * Starts QEMU on the guest and returns at once; waitForAgent() tells when, or whether, it came up.
 * Call stop() in a finally: it also cleans up after a guest that failed or already powered off.
 */
export async function bootTestGuest(opts: BootOptions): Promise<BootedGuest> {
  const guest = typeof opts.guest === 'string' ? await loadTestGuest(opts.guest) : opts.guest;
  const workDir = await createFixtureDir('vmlet-guest-');
  const file = (name: string): string => join(workDir, name);
  try {
    // The cached base is never written: each boot writes to its own overlay, which stop() deletes.
    const { rootDisk, rootDiskFormat } = guest;
    await runChecked('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', rootDiskFormat, '-b', rootDisk, file('root.qcow2')]);
    const cmdline = [guest.cmdline ?? GUEST_CMDLINE, opts.extraCmdline].filter(Boolean).join(' ');
    const command = [QEMU, ...qemuArgs(opts, guest, cmdline, file)];
    const started = performance.now();
    const proc = spawnTracked('qemu', command[0]!, command.slice(1), { logFile: file('qemu.log') });
    const clients = new Set<AgentClient>();
    const exitReason = (): string | undefined =>
      proc.exitStatus && `QEMU exited (code ${proc.exitStatus.code}, signal ${proc.exitStatus.signal})`;

    const connectAgent = async (timeoutMs = 10_000): Promise<AgentClient> => {
      const socket = await connectChannel(file('agent.sock'), timeoutMs, exitReason);
      // QEMU keeps the socket open until it exits; then the handshake fails at once instead of timing out.
      const client = await AgentClient.connect(socket, { timeoutMs, clientName: 'vmlet test' });
      clients.add(client);
      return client;
    };

    const waitForAgent = async (timeoutMs = 60_000): Promise<{ client: AgentClient; readyMs: number }> => {
      try {
        const client = await connectAgent(timeoutMs);
        return { client, readyMs: performance.now() - started };
      } catch (err) {
        // A QEMU that is on its way out may still be writing the line that explains why.
        await Promise.race([proc.exited, sleep(200)]);
        const exited = exitReason();
        const why = exited ? `${exited} before the agent was ready` : (err as Error).message;
        throw new Error(`test guest did not become ready: ${why}\n${await tails([file('console.log'), 25], [file('qemu.log'), 10])}`);
      }
    };

    return {
      pid: proc.pid,
      workDir,
      consoleLog: file('console.log'),
      qemuLog: file('qemu.log'),
      agentSocket: file('agent.sock'),
      qmpSocket: file('qmp.sock'),
      command,
      startedAt: started,
      process: proc,
      exited: proc.exited,
      connectAgent,
      waitForAgent,
      async stop() {
        for (const c of clients) c.close();
        await stopProcess(proc, 3000);
        await removeFixtureDir(workDir);
      },
    };
  } catch (err) {
    await removeFixtureDir(workDir);
    throw err;
  }
}

function qemuArgs(opts: BootOptions, guest: GuestFiles, cmdline: string, file: (name: string) => string): string[] {
  return [
    // q35 as the QEMU driver will use, minus the built-in devices nothing here uses (each one is probed
    // by the kernel); SMM off spares the firmware its SMM setup. TCG because KVM is not usable here.
    '-machine', 'q35,accel=tcg,smm=off,i8042=off,sata=off,smbus=off,vmport=off',
    // -cpu max gives the guest every feature TCG emulates (rdrand among them: the RNG is ready at once).
    '-cpu', 'max', '-smp', String(opts.cpus ?? 1), '-m', String(opts.memoryMiB ?? 512),
    // qboot (Debian's qemu-system-data ships it) is a firmware that does little more than jump to the
    // kernel: under TCG it starts a PVH kernel ~0.4 s sooner than SeaBIOS does.
    ...(existsSync(QBOOT) ? ['-bios', QBOOT] : []),
    // No default devices (VGA, NIC, floppy...): each one costs probe time and ROM loading under TCG.
    '-nodefaults', '-no-user-config', '-display', 'none',
    // A guest that reboots (panic=-1) or powers off ends QEMU: the test sees an exit, not a loop.
    '-no-reboot',
    '-serial', `file:${file('console.log')}`,
    '-kernel', guest.kernel, '-initrd', guest.initrd, '-append', cmdline,
    '-drive', `if=virtio,file=${file('root.qcow2')},format=qcow2`,
    '-device', 'virtio-serial-pci',
    '-chardev', `socket,id=agent,path=${file('agent.sock')},server=on,wait=off`,
    '-device', `virtserialport,chardev=agent,name=${AGENT_PORT_NAME}`,
    '-qmp', `unix:${file('qmp.sock')},server=on,wait=off`,
    ...(opts.extraArgs ?? []),
  ];
}

/** The tails of the logs that have something in them, for an error message. */
async function tails(...logs: [file: string, lines: number][]): Promise<string> {
  const parts: string[] = [];
  for (const [file, lines] of logs) {
    const text = await readFile(file, 'utf8').catch(() => '');
    if (text.trim()) parts.push(await logTail(file, lines));
  }
  return parts.join('\n') || '(neither QEMU nor the guest console said anything)';
}
