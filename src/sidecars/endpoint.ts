// Where the Docker-API engine is: a configured socket (or tcp:// URL), else DOCKER_HOST, else the first
// well-known socket that exists (Docker, podman rootful/rootless, Docker Desktop, Colima, OrbStack,
// podman machine on a Mac). Pure but for the existence checks, which are injectable.
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export type EngineEndpoint =
  | { kind: 'socket'; socketPath: string; display: string }
  | { kind: 'tcp'; host: string; port: number; tls: boolean; display: string }
  /** DOCKER_HOST with TLS or ssh: dockerode reads DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH itself. */
  | { kind: 'env'; display: string };

export interface EndpointSources {
  /** The configured engine: a socket path, unix:///path, tcp://host:port. Wins over DOCKER_HOST. */
  socket?: string;
  env?: NodeJS.ProcessEnv;
  home?: string;
  exists?: (path: string) => boolean;
}

/** The sockets tried, in order, when nothing is configured. */
export function wellKnownSockets(env: NodeJS.ProcessEnv = process.env, home = homedir()): string[] {
  return [
    '/var/run/docker.sock', // Docker Engine; Docker Desktop, Colima, OrbStack and podman machine can link it
    ...(env.XDG_RUNTIME_DIR ? [join(env.XDG_RUNTIME_DIR, 'podman', 'podman.sock'), join(env.XDG_RUNTIME_DIR, 'docker.sock')] : []),
    '/run/podman/podman.sock',
    join(home, '.docker', 'run', 'docker.sock'), // Docker Desktop (Mac)
    join(home, '.colima', 'default', 'docker.sock'),
    join(home, '.orbstack', 'run', 'docker.sock'),
    join(home, '.local', 'share', 'containers', 'podman', 'machine', 'podman.sock'),
    join(home, '.local', 'share', 'containers', 'podman', 'machine', 'podman-machine-default', 'podman.sock'),
  ];
}

/** Reads a socket path or URL; undefined when the scheme is not one we connect to without dockerode's help. */
export function parseEngineAddress(address: string): EngineEndpoint | undefined {
  const text = address.trim();
  if (text.startsWith('/')) return { kind: 'socket', socketPath: text, display: `unix://${text}` };
  if (text.startsWith('unix://')) return { kind: 'socket', socketPath: text.slice('unix://'.length), display: text };
  const tcp = /^(tcp|http|https):\/\/(\[[^\]]+\]|[^:/]+)(?::(\d+))?\/?$/.exec(text);
  if (tcp) {
    const tls = tcp[1] === 'https';
    return { kind: 'tcp', host: tcp[2]!.replace(/^\[|\]$/g, ''), port: tcp[3] ? Number(tcp[3]) : tls ? 2376 : 2375, tls, display: text };
  }
  return undefined;
}

/**
 * The endpoint to use. Throws nothing: when no socket exists, the first candidate is returned with the
 * list in `display`, so the ping fails with SidecarEngineUnavailable naming every place tried.
 */
export function resolveEngineEndpoint(src: EndpointSources = {}): EngineEndpoint {
  const env = src.env ?? process.env;
  if (src.socket) {
    const parsed = parseEngineAddress(src.socket);
    if (!parsed) throw new Error(`sidecar engine address "${src.socket}": use a socket path, unix:///path or tcp://host:port`);
    return parsed;
  }
  if (env.DOCKER_HOST) {
    const parsed = parseEngineAddress(env.DOCKER_HOST);
    // TLS client certificates (DOCKER_TLS_VERIFY) and ssh:// are dockerode's business.
    if (parsed && !(parsed.kind === 'tcp' && env.DOCKER_TLS_VERIFY)) return parsed;
    return { kind: 'env', display: env.DOCKER_HOST };
  }
  const exists = src.exists ?? existsSync;
  const candidates = wellKnownSockets(env, src.home ?? homedir());
  const found = candidates.find((p) => exists(p));
  if (found) return { kind: 'socket', socketPath: found, display: `unix://${found}` };
  return { kind: 'socket', socketPath: candidates[0]!, display: `any of ${candidates.join(', ')} (DOCKER_HOST is not set)` };
}
