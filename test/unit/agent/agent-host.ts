// Runs the real vmlet-agent bundle on this host against a unix socket (no VM), for the agent's unit tests.
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { ensureAgentBundle } from '../../../src/agent/bundle.ts';
import { AgentClient } from '../../../src/agent/host/client.ts';
import { createFixtureDir, removeFixtureDir, spawnTracked, stopProcess, waitFor, type TrackedProcess } from '../../harness/processes.ts';

export interface HostAgent {
  dir: string;
  socket: string;
  logDir: string;
  proc: TrackedProcess;
  connect(): Promise<AgentClient>;
  rawConnect(): Promise<Socket>;
  stop(): Promise<void>;
}

export async function startHostAgent(extraArgs: string[] = []): Promise<HostAgent> {
  const bundle = await ensureAgentBundle();
  const dir = await createFixtureDir('vmlet-agent-');
  const socket = join(dir, 'agent.sock');
  const logDir = join(dir, 'logs');
  const proc = spawnTracked('vmlet-agent', process.execPath, [
    bundle, '--unix', socket, '--log-dir', logDir, '--run-dir', join(dir, 'run'), '--shutdown', 'exit', ...extraArgs,
  ], { logFile: join(dir, 'agent.log') });
  const clients: AgentClient[] = [];
  const rawConnect = (): Promise<Socket> => new Promise((resolve, reject) => {
    const s = connect(socket);
    s.once('connect', () => resolve(s)).once('error', reject);
  });
  try {
    await waitFor('the agent to listen', () => rawConnect().then((s) => (s.destroy(), true), () => undefined), { timeoutMs: 15_000, process: proc });
  } catch (err) {
    await stopProcess(proc, 1000);
    await removeFixtureDir(dir);
    throw err;
  }
  return {
    dir, socket, logDir, proc, rawConnect,
    async connect() {
      const client = await AgentClient.connect(await rawConnect(), { timeoutMs: 10_000 });
      clients.push(client);
      return client;
    },
    async stop() {
      for (const c of clients) c.close();
      await stopProcess(proc, 2000);
      await removeFixtureDir(dir);
    },
  };
}
