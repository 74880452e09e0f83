// The ProbeTarget of a VM container: exec through the VM's agent (with the container's env and working
// directory, as a probe or hook command gets on any node), and TCP connections made inside the VM by the
// agent, so httpGet, tcpSocket and grpc reach the pod's ports whatever the VM's network is.
import type { AgentClient } from '../../agent/host/client.ts';
import { ProbeTargetUnavailable, type ProbeTarget } from './handlers.ts';

export interface AgentTargetOptions {
  /** The VM's agent; undefined while there is no VM (every probe is then 'unknown'). */
  agent: () => AgentClient | undefined;
  env?: Record<string, string>;
  cwd?: string;
  podIP?: string;
}

export function agentProbeTarget(o: AgentTargetOptions): ProbeTarget {
  const agent = (): AgentClient => {
    const a = o.agent();
    if (!a) throw new ProbeTargetUnavailable('the pod has no running VM');
    return a;
  };
  return {
    ...(o.podIP ? { podIP: o.podIP } : {}),
    async exec(argv, timeoutMs) {
      const p = await agent().exec({ argv, ...(o.env ? { env: o.env } : {}), ...(o.cwd ? { cwd: o.cwd } : {}) });
      // Past the timeout the process is hung up (the handler has already given up on it).
      const timer = setTimeout(() => p.close(), timeoutMs + 1000);
      try {
        const [stdout, stderr, exit] = await Promise.all([text(p.stdout), p.stderr ? text(p.stderr) : Promise.resolve(''), p.exited]);
        return { exitCode: exit.exitCode, stdout, stderr };
      } finally {
        clearTimeout(timer);
      }
    },
    connect: (port, timeoutMs) => agent().connectPort(port, { timeoutMs }),
  };
}

async function text(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
