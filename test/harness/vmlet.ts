// Runs the real `vmlet` command (bin/vmlet.js) as a child process for end-to-end tests, the way a user
// starts it, and reads its JSON log lines back.
import { mkdir, mkdtemp, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startCluster, type Cluster } from './cluster.ts';
import { runCommand, type CommandResult } from './exec.ts';
import { freePort, spawnTracked, stopProcess, waitFor, type ExitStatus, type TrackedProcess } from './processes.ts';

export const VMLET_BIN = fileURLToPath(new URL('../../bin/vmlet.js', import.meta.url));

export interface LogLine {
  level: string;
  msg: string;
  time: string;
  [key: string]: unknown;
}

export interface VmletOptions {
  /** Without one (and without $KUBECONFIG, which is then not passed on): standalone, with --pod-manifest-path in args. */
  kubeconfig: string | undefined;
  nodeName: string;
  /** Extra `vmlet run` flags. */
  args?: string[];
  env?: NodeJS.ProcessEnv;
  /** Where the log file and image cache go (put it in the cluster's dir so that it is cleaned up); default: a new temp dir. */
  dir?: string;
  /** The kubelet API's serving certificate and client CA (default: self-signed, no client CA); see Cluster.kubeletTlsArgs. */
  kubeletTls?: { certFile: string; keyFile: string; clientCaFile?: string };
}

/** A running `vmlet run`, with its admin port and its log. */
export class VmletProcess {
  private constructor(
    readonly proc: TrackedProcess,
    readonly adminUrl: string,
    /** https://127.0.0.1:<port> of the kubelet API (always loopback, on a port picked for this run). */
    readonly kubeletUrl: string,
    readonly dir: string,
    /** Where this run's lines start in a log file that an earlier run in the same dir wrote to. */
    private readonly logOffset: number,
  ) {}

  static async start(opts: VmletOptions): Promise<VmletProcess> {
    const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'vmlet-run-')));
    await mkdir(dir, { recursive: true });
    const logFile = join(dir, 'vmlet.log');
    const logOffset = (await stat(logFile).catch(() => undefined))?.size ?? 0;
    const adminPort = await freePort();
    // Tests bind to loopback only, on ports they pick; a --kubelet-port in args wins (the last flag does).
    const givenPort = [...(opts.args ?? [])].reverse().map((a) => /^--kubelet-port=(\d+)$/.exec(a)?.[1]).find(Boolean);
    const kubeletPort = givenPort ? Number(givenPort) : await freePort();
    const tls = opts.kubeletTls;
    const args = [
      VMLET_BIN,
      'run',
      ...(opts.kubeconfig ? [`--kubeconfig=${opts.kubeconfig}`] : []),
      `--node-name=${opts.nodeName}`,
      `--admin-address=127.0.0.1:${adminPort}`,
      `--image-cache-dir=${join(dir, 'cache')}`,
      '--node-ip=127.0.0.1',
      '--kubelet-address=127.0.0.1',
      `--kubelet-port=${kubeletPort}`,
      ...(tls ? [`--kubelet-tls-cert-file=${tls.certFile}`, `--kubelet-tls-key-file=${tls.keyFile}`] : []),
      ...(tls?.clientCaFile ? [`--kubelet-client-ca-file=${tls.clientCaFile}`] : []),
      ...(opts.args ?? []),
    ];
    const env = { ...process.env, ...opts.env };
    if (!opts.kubeconfig) delete env.KUBECONFIG;
    const proc = spawnTracked(`vmlet ${opts.nodeName}`, process.execPath, args, { logFile, env });
    return new VmletProcess(proc, `http://127.0.0.1:${adminPort}`, `https://127.0.0.1:${kubeletPort}`, dir, logOffset);
  }

  /** The local API socket (`vmlet ps/logs/exec --socket`), unless args set another. */
  get socket(): string {
    return join(this.dir, 'cache', 'vmlet.sock');
  }

  get pid(): number {
    return this.proc.pid;
  }

  get exitStatus(): ExitStatus | undefined {
    return this.proc.exitStatus;
  }

  /** This run's JSON log lines so far (non-JSON lines, e.g. a crash trace, come back as level "raw"). */
  async logs(): Promise<LogLine[]> {
    const text = (await readFile(this.proc.logFile).catch(() => Buffer.alloc(0))).subarray(this.logOffset).toString('utf8');
    return text
      .split('\n')
      .filter(Boolean)
      .map((line) => {
        try {
          return JSON.parse(line) as LogLine;
        } catch {
          return { level: 'raw', msg: line, time: '' };
        }
      });
  }

  async waitForLog(what: string, match: (line: LogLine) => boolean, timeoutMs = 60_000): Promise<LogLine> {
    return waitFor(what, async () => (await this.logs()).find(match), { timeoutMs, process: this.proc, intervalMs: 200 });
  }

  /** Waits until the agent says the node is up (registered, first status and Lease written). */
  async waitUntilUp(timeoutMs = 60_000): Promise<void> {
    await this.waitForLog('vmlet to report "node is up"', (l) => l.msg === 'node is up', timeoutMs);
  }

  /** GET on the admin endpoint. */
  async admin(path: string): Promise<{ status: number; body: string }> {
    const res = await fetch(this.adminUrl + path);
    return { status: res.status, body: await res.text() };
  }

  /** Sends a signal and waits for the exit. */
  async signal(signal: NodeJS.Signals): Promise<ExitStatus> {
    if (!this.proc.exitStatus) process.kill(this.proc.pid, signal);
    return this.proc.exited;
  }

  async stop(): Promise<void> {
    await stopProcess(this.proc, 15_000);
  }
}

/** Runs `vmlet <args>` to completion (for commands that must fail fast). */
export function runVmlet(args: string[], env?: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<CommandResult> {
  return runCommand(process.execPath, [VMLET_BIN, ...args], { env: { ...process.env, ...env }, timeoutMs });
}

/** A fresh cluster with one `vmlet run` joined as `nodeName` with a kubelet's identity, up and heartbeating. */
export async function startClusterWithNode(
  nodeName: string,
  opts: Pick<VmletOptions, 'args' | 'env'> = {},
): Promise<{ cluster: Cluster; vmlet: VmletProcess }> {
  const cluster = await startCluster();
  try {
    const vmlet = await VmletProcess.start({
      ...opts,
      kubeconfig: await cluster.nodeKubeconfig(nodeName),
      nodeName,
      dir: join(cluster.dir, nodeName),
    });
    await vmlet.waitUntilUp();
    return { cluster, vmlet };
  } catch (err) {
    await cluster.stop();
    throw err;
  }
}

/** QEMU and virtiofsd processes whose command line mentions `dir` (a vmlet's dir, a store): "PID ARGS" lines. */
export async function vmProcessesUnder(dir: string): Promise<string[]> {
  const ps = await runCommand('ps', ['-eo', 'pid=,args=']);
  return ps.stdout.split('\n').filter((l) => /qemu-system|virtiofsd/.test(l) && l.includes(dir));
}

/** Kills what vmProcessesUnder finds: VMs outlive vmlet on purpose, a test's must not outlive the test. */
export async function killVmProcessesUnder(dir: string): Promise<void> {
  for (const line of await vmProcessesUnder(dir).catch(() => [])) process.kill(Number(line.trim().split(/\s+/)[0]), 'SIGKILL');
}
