// The ProbeTarget of a sidecar container (a hybrid pod's container on the Docker-API engine): exec through
// the engine, which runs the command with the container's own environment and working directory, as a
// probe or hook command gets on any node; TCP connections to the container's port go to where the host
// can reach it: the pod IP's published port when the pod publishes that port (which works wherever the
// engine runs, Docker Desktop's VM included), else the container's address on the engine's network (a
// Linux host's bridge).
import { connect as tcpConnect } from 'node:net';
import type { Duplex } from 'node:stream';
import type { SidecarEngine } from '../../sidecars/engine.ts';
import { ProbeTargetUnavailable, type ProbeTarget } from './handlers.ts';

export interface EngineTargetOptions {
  engine: () => Promise<SidecarEngine>;
  /** The engine container of the container's current run; undefined while it has none. */
  id: () => string | undefined;
  /** Where the host reaches `port` of the container (see above); undefined when it cannot. */
  endpoint: (port: number) => Promise<{ host: string; port: number } | undefined>;
  /** The pod IP: the host the requests name (URL, default Host header, gRPC authority). */
  podIP?: string;
}

export function engineProbeTarget(o: EngineTargetOptions): ProbeTarget {
  const id = (): string => {
    const current = o.id();
    if (!current) throw new ProbeTargetUnavailable('the container is not running');
    return current;
  };
  return {
    ...(o.podIP ? { podIP: o.podIP } : {}),
    async exec(argv, timeoutMs) {
      const p = await (await o.engine()).exec(id(), argv, { stdin: false, stdout: true, stderr: true, tty: false });
      // Past the timeout the stream is hung up (the handler has already given up on it).
      const timer = setTimeout(() => p.close(), timeoutMs + 1000);
      try {
        const [stdout, stderr, exit] = await Promise.all([text(p.stdout), text(p.stderr), p.exited]);
        return { exitCode: exit.exitCode, stdout, stderr };
      } finally {
        clearTimeout(timer);
      }
    },
    async connect(port, timeoutMs) {
      id();
      const at = await o.endpoint(port);
      if (!at) throw new ProbeTargetUnavailable(`port ${port} of the container cannot be reached from the host: it is not published and the container has no address on the engine's network`);
      return dial(at.host, at.port, timeoutMs);
    },
  };
}

function dial(host: string, port: number, timeoutMs: number): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const socket = tcpConnect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`dial tcp ${host}:${port}: i/o timeout`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

async function text(stream: NodeJS.ReadableStream | null): Promise<string> {
  if (!stream) return '';
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
