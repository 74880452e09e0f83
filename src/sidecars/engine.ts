// SidecarEngine: a thin layer over dockerode for a pod's sidecar containers on a Docker-API engine
// (Docker, podman, Docker Desktop, Colima, OrbStack). dockerode is imported only by connect(), i.e.
// when a pod needs an engine: an idle vmlet does not load it.
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';
import { PassThrough, type Duplex, type Readable } from 'node:stream';
import type Dockerode from 'dockerode';
import type { ContainerInfo } from 'dockerode';
import type { CredentialProvider, PullSecret } from '../images/registry/credentials.ts';
import { parseImageRef } from '../images/registry/reference.ts';
import { engineError, isNotFound, SidecarEngineError, SidecarEngineUnavailable } from './errors.ts';
import { resolveEngineEndpoint, type EngineEndpoint } from './endpoint.ts';
import { createBody, LABELS, nonRootImageUserProblem, statusFromInspect, type PodIdentity, type SidecarSpec, type SidecarStatus } from './spec.ts';
import { FrameDemuxer, splitOutput, stdinInto, type SidecarProcess, type SidecarStreamOptions } from './streams.ts';

export interface SidecarEngineOptions {
  /** The configured engine: a socket path, unix:///path or tcp://host:port. Default: DOCKER_HOST, else a well-known socket. */
  socket?: string;
  /** Default: process.env (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, XDG_RUNTIME_DIR). */
  env?: NodeJS.ProcessEnv;
  /** Deadline of ping(). Default 5 s. */
  pingTimeoutMs?: number;
}

export interface EngineVersion {
  /** "Docker Engine - Community", "Podman Engine", ... */
  name: string;
  version: string;
  apiVersion: string;
  os: string;
  arch: string;
  kernelVersion?: string;
}

export interface PullProgress {
  status: string;
  /** The layer, when the line is about one. */
  id?: string;
  current?: number;
  total?: number;
}

export interface PullOptions {
  /** Who we are at the image's registry: e.g. `new CredentialStore({ pullSecrets, dockerConfigPath: null })`. */
  credentials?: CredentialProvider;
  /** The pod's imagePullSecrets (kubernetes.io/dockerconfigjson Secrets): used when `credentials` is not given. */
  pullSecrets?: PullSecret[];
  onProgress?: (p: PullProgress) => void;
  signal?: AbortSignal;
}

export interface CreatedSidecar {
  id: string;
  /** The engine's container name (sidecarName()). */
  name: string;
  /** Spec fields the engine cannot apply, each with why (for Warning Events). */
  ignored: string[];
}

export interface SidecarSummary {
  id: string;
  engineName: string;
  pod: PodIdentity;
  containerName: string;
  restartCount: number;
  containerHash?: string;
  /** created, running, exited, ... */
  engineState: string;
  created: Date;
}

export interface SidecarLogOptions {
  follow?: boolean;
  tailLines?: number;
  sinceTime?: Date;
  timestamps?: boolean;
  limitBytes?: number;
  stream?: 'All' | 'Stdout' | 'Stderr';
}

export interface SidecarExecOptions extends SidecarStreamOptions {
  /** More environment ("NAME" → value) on top of the container's. */
  env?: Record<string, string>;
  workingDir?: string;
  user?: string;
}

async function loadDockerode(): Promise<typeof Dockerode> {
  try {
    return (await import('dockerode')).default;
  } catch (err) {
    throw new Error(`cannot load dockerode (npm dependency) for sidecar containers: ${(err as Error).message}`, { cause: err });
  }
}

function dockerFor(Docker: typeof Dockerode, endpoint: EngineEndpoint): Dockerode {
  switch (endpoint.kind) {
    case 'socket':
      return new Docker({ socketPath: endpoint.socketPath });
    case 'tcp':
      return new Docker({ host: endpoint.host, port: endpoint.port, protocol: endpoint.tls ? 'https' : 'http' });
    case 'env':
      return new Docker();
  }
}

export class SidecarEngine {
  /** Where the engine is, as said in errors: "unix:///run/podman/podman.sock". */
  readonly endpoint: string;

  private constructor(
    private readonly docker: Dockerode,
    private readonly address: EngineEndpoint,
    private readonly pingTimeoutMs: number,
  ) {
    this.endpoint = address.display;
  }

  /** Loads dockerode, finds the engine and pings it; throws SidecarEngineUnavailable naming the socket when none answers. */
  static async connect(opts: SidecarEngineOptions = {}): Promise<SidecarEngine> {
    const endpoint = resolveEngineEndpoint({ ...(opts.socket ? { socket: opts.socket } : {}), ...(opts.env ? { env: opts.env } : {}) });
    const Docker = await loadDockerode();
    const engine = new SidecarEngine(dockerFor(Docker, endpoint), endpoint, opts.pingTimeoutMs ?? 5000);
    await engine.ping();
    return engine;
  }

  /** Resolves when the engine answers /_ping; else SidecarEngineUnavailable. */
  async ping(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new SidecarEngineUnavailable(this.endpoint, `no answer to /_ping within ${this.pingTimeoutMs} ms`)), this.pingTimeoutMs);
    });
    try {
      await Promise.race([this.docker.ping(), timeout]);
    } catch (err) {
      if (err instanceof SidecarEngineUnavailable) throw err;
      const e = engineError(err, this.endpoint, 'ping');
      throw e instanceof SidecarEngineUnavailable ? e : new SidecarEngineUnavailable(this.endpoint, `/_ping failed: ${e.message}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  async version(): Promise<EngineVersion> {
    const v = await this.call('version', () => this.docker.version());
    return {
      name: v.Components?.[0]?.Name ?? 'Docker Engine',
      version: v.Version,
      apiVersion: v.ApiVersion,
      os: v.Os,
      arch: v.Arch,
      ...(v.KernelVersion ? { kernelVersion: v.KernelVersion } : {}),
    };
  }

  /** Is the image in the engine's store? */
  async hasImage(image: string): Promise<boolean> {
    try {
      await this.docker.getImage(image).inspect();
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw engineError(err, this.endpoint, `inspect image ${image}`);
    }
  }

  /** Pulls `image` (":latest" when it names no tag or digest); the registry's refusal is SidecarEngineError(ErrImagePull). */
  async pull(image: string, opts: PullOptions = {}): Promise<void> {
    let ref;
    try {
      ref = parseImageRef(image);
    } catch (err) {
      throw new SidecarEngineError('ErrImagePull', (err as Error).message, undefined, { cause: err });
    }
    const name = ref.toString();
    let credentials = opts.credentials;
    if (!credentials && opts.pullSecrets?.length) {
      const { CredentialStore } = await import('../images/registry/credentials.ts');
      credentials = new CredentialStore({ pullSecrets: opts.pullSecrets, dockerConfigPath: null });
    }
    const creds = await credentials?.get(ref.registry, ref.repository);
    const hub = ref.registry === 'registry-1.docker.io';
    const authconfig = creds
      ? {
          ...(creds.username !== undefined ? { username: creds.username } : {}),
          ...(creds.password !== undefined ? { password: creds.password } : {}),
          ...(creds.identityToken ? { identitytoken: creds.identityToken } : {}),
          ...(creds.registryToken ? { registrytoken: creds.registryToken } : {}),
          serveraddress: hub ? 'https://index.docker.io/v1/' : ref.registry,
        }
      : undefined;
    const what = `pull ${name}`;
    let stream: NodeJS.ReadableStream;
    try {
      stream = (await this.docker.pull(name, { ...(authconfig ? { authconfig } : {}), ...(opts.signal ? { abortSignal: opts.signal } : {}) }));
    } catch (err) {
      throw engineError(err, this.endpoint, what, 'ErrImagePull');
    }
    // The answer is JSON lines; an {"error": ...} line is the failure (the HTTP status was already 200).
    let failure: string | undefined;
    let rest = '';
    await new Promise<void>((resolve, reject) => {
      stream.on('data', (chunk: Buffer | string) => {
        rest += chunk.toString();
        const lines = rest.split('\n');
        rest = lines.pop() ?? '';
        for (const line of lines) failure ??= this.pullLine(line, opts.onProgress);
      });
      stream.on('end', resolve);
      stream.on('close', resolve);
      stream.on('error', (err: Error) => reject(engineError(err, this.endpoint, what, 'ErrImagePull')));
    });
    if (rest.trim()) failure ??= this.pullLine(rest, opts.onProgress);
    if (failure !== undefined) throw new SidecarEngineError('ErrImagePull', `${what}: ${failure}`);
  }

  private pullLine(line: string, onProgress?: (p: PullProgress) => void): string | undefined {
    if (!line.trim()) return undefined;
    let msg: { status?: string; id?: string; error?: string; errorDetail?: { message?: string }; progressDetail?: { current?: number; total?: number } };
    try {
      msg = JSON.parse(line) as typeof msg;
    } catch {
      return undefined;
    }
    if (msg.error || msg.errorDetail?.message) return msg.errorDetail?.message ?? msg.error;
    if (msg.status && onProgress) {
      onProgress({
        status: msg.status,
        ...(msg.id ? { id: msg.id } : {}),
        ...(msg.progressDetail?.current !== undefined ? { current: msg.progressDetail.current } : {}),
        ...(msg.progressDetail?.total !== undefined ? { total: msg.progressDetail.total } : {}),
      });
    }
    return undefined;
  }

  /** Creates (does not start) the container; a name already taken is SidecarEngineError(Conflict). */
  async create(spec: SidecarSpec): Promise<CreatedSidecar> {
    const body = createBody(spec);
    if (body.verifyNonRootImageUser) {
      const image = body.options.Image!;
      const info = await this.call(`inspect image ${image}`, () => this.docker.getImage(image).inspect());
      const problem = nonRootImageUserProblem(info.Config?.User);
      if (problem) throw new SidecarEngineError('InvalidSpec', `container "${spec.container.name}": ${problem}`);
    }
    const container = await this.call(`create container ${body.name}`, () => this.docker.createContainer(body.options), 'CreateContainerError');
    return { id: container.id, name: body.name, ignored: body.ignored };
  }

  async start(id: string): Promise<void> {
    try {
      await this.docker.getContainer(id).start();
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 304) return; // already running
      throw engineError(err, this.endpoint, `start container ${id}`);
    }
  }

  /** Our containers (labelled vmlet.dev/managed-by=vmlet), of one pod when podUid is given, running or not. */
  async list(podUid?: string): Promise<SidecarSummary[]> {
    const label = podUid ? [`${LABELS.podUid}=${podUid}`] : [`${LABELS.managedBy}=vmlet`];
    const found = await this.call('list containers', () => this.docker.listContainers({ all: true, filters: { label } }));
    return found.map((c: ContainerInfo) => {
      const l = c.Labels ?? {};
      return {
        id: c.Id,
        engineName: (c.Names?.[0] ?? '').replace(/^\//, ''),
        pod: { uid: l[LABELS.podUid] ?? '', namespace: l[LABELS.podNamespace] ?? '', name: l[LABELS.podName] ?? '' },
        containerName: l[LABELS.containerName] ?? '',
        restartCount: Number(l[LABELS.restartCount] ?? 0) || 0,
        ...(l[LABELS.containerHash] ? { containerHash: l[LABELS.containerHash] } : {}),
        engineState: c.State,
        created: new Date(c.Created * 1000),
      };
    });
  }

  async inspect(id: string): Promise<SidecarStatus> {
    return statusFromInspect(await this.call(`inspect container ${id}`, () => this.docker.getContainer(id).inspect()));
  }

  /** SIGTERM (the image's StopSignal), then SIGKILL after graceSeconds; resolves once it has stopped. */
  async stop(id: string, graceSeconds: number): Promise<void> {
    try {
      await this.docker.getContainer(id).stop({ t: Math.max(0, Math.ceil(graceSeconds)) });
    } catch (err) {
      const status = (err as { statusCode?: number }).statusCode;
      if (status === 304) return; // not running
      throw engineError(err, this.endpoint, `stop container ${id}`);
    }
  }

  /** Sends a signal (default SIGKILL). */
  async kill(id: string, signal = 'SIGKILL'): Promise<void> {
    try {
      await this.docker.getContainer(id).kill({ signal });
    } catch (err) {
      const status = (err as { statusCode?: number }).statusCode;
      if (status === 304 || status === 409) return; // not running
      throw engineError(err, this.endpoint, `kill container ${id}`);
    }
  }

  /** Removes the container (force: a running one is killed first); one already gone is fine. */
  async remove(id: string, opts: { force?: boolean } = {}): Promise<void> {
    try {
      await this.docker.getContainer(id).remove({ force: opts.force === true, v: true });
    } catch (err) {
      if (isNotFound(err)) return;
      throw engineError(err, this.endpoint, `remove container ${id}`);
    }
  }

  /** Resolves with the exit code once the container is not running (at once if it already is not). */
  async wait(id: string, signal?: AbortSignal): Promise<{ exitCode: number }> {
    const r = (await this.call(`wait for container ${id}`, () =>
      this.docker.getContainer(id).wait({ condition: 'not-running', ...(signal ? { abortSignal: signal } : {}) }),
    )) as { StatusCode?: number };
    return { exitCode: r.StatusCode ?? 0 };
  }

  /** The container's output as the kubelet serves it (plain bytes, "<RFC3339Nano> " before each line with timestamps). */
  async logs(id: string, opts: SidecarLogOptions = {}): Promise<Readable> {
    const c = this.docker.getContainer(id);
    const info = await this.call(`inspect container ${id}`, () => c.inspect());
    const tty = info.Config?.Tty === true;
    const which = opts.stream ?? 'All';
    const abort = new AbortController();
    const base = {
      stdout: which !== 'Stderr',
      stderr: which !== 'Stdout',
      timestamps: opts.timestamps === true,
      ...(opts.tailLines !== undefined ? { tail: Math.max(0, opts.tailLines) } : {}),
      ...(opts.sinceTime ? { since: (opts.sinceTime.getTime() / 1000).toFixed(3) } : {}),
      abortSignal: abort.signal,
    };
    const out = new PassThrough();
    let left = opts.limitBytes ?? Infinity;
    const emit = (kind: 'stdout' | 'stderr', payload: Buffer): void => {
      if (left <= 0 || (which === 'Stdout' && kind !== 'stdout') || (which === 'Stderr' && kind !== 'stderr')) return;
      const part = payload.length > left ? payload.subarray(0, left) : payload;
      left -= part.length;
      out.write(part);
      if (left <= 0) {
        out.end();
        abort.abort();
      }
    };
    const demux = new FrameDemuxer(emit);
    const feed = (chunk: Buffer): void => (tty ? emit('stdout', chunk) : demux.push(chunk));
    if (!opts.follow) {
      const buf = await this.call(`logs of container ${id}`, () => c.logs({ ...base, follow: false }));
      feed(Buffer.isBuffer(buf) ? buf : Buffer.from(String(buf)));
      if (!out.writableEnded) out.end();
      return out;
    }
    const source = await this.call(`logs of container ${id}`, () => c.logs({ ...base, follow: true }));
    source.on('data', (chunk: Buffer | string) => feed(typeof chunk === 'string' ? Buffer.from(chunk) : chunk));
    const end = (): void => {
      if (!out.writableEnded) out.end();
    };
    source.on('end', end);
    source.on('close', end);
    source.on('error', end);
    out.on('close', () => abort.abort()); // the reader went away: stop following
    return out;
  }

  /** Runs `command` in the running container (`kubectl exec`); exited resolves with its exit code. */
  async exec(id: string, command: string[], opts: SidecarExecOptions): Promise<SidecarProcess> {
    const c = this.docker.getContainer(id);
    const ex = await this.call(`exec in container ${id}`, () =>
      c.exec({
        Cmd: command,
        AttachStdin: opts.stdin,
        AttachStdout: opts.stdout,
        AttachStderr: opts.stderr && !opts.tty,
        Tty: opts.tty,
        ...(opts.env ? { Env: Object.entries(opts.env).map(([k, v]) => `${k}=${v}`) } : {}),
        ...(opts.workingDir ? { WorkingDir: opts.workingDir } : {}),
        ...(opts.user ? { User: opts.user } : {}),
      }),
    );
    const conn = await this.call(`start exec in container ${id}`, () => ex.start({ hijack: true, stdin: opts.stdin, Tty: opts.tty }));
    const resize = async (rows: number, cols: number): Promise<void> => {
      if (!opts.tty) return;
      await ex.resize({ h: rows, w: cols }).catch(() => {}); // racing the process's exit is not an error
    };
    if (opts.size) await resize(opts.size.rows, opts.size.cols);
    const split = splitOutput(conn, opts.tty);
    const exited = split.done.then(async () => {
      // The output ends a moment before the engine records the exit code.
      for (let i = 0; i < 50; i++) {
        const info = await ex.inspect().catch(() => undefined);
        if (info && !info.Running && info.ExitCode !== null && info.ExitCode !== undefined) return { exitCode: info.ExitCode, signal: null };
        await new Promise((r) => setTimeout(r, 100));
      }
      return { exitCode: 1, signal: null };
    });
    return this.process(conn, opts, split, exited, resize);
  }

  /** Connects to the container's main process (`kubectl attach`); exited resolves when it exits (its code) or on detach (0). */
  async attach(id: string, opts: SidecarStreamOptions): Promise<SidecarProcess> {
    const c = this.docker.getContainer(id);
    const info = await this.call(`inspect container ${id}`, () => c.inspect());
    const tty = info.Config?.Tty === true;
    if (opts.stdin && !info.Config?.OpenStdin) {
      throw new SidecarEngineError('InvalidSpec', `container "${info.Config?.Labels?.[LABELS.containerName] ?? id}" was not started with stdin: true, so its stdin cannot be attached`);
    }
    const query = `stream=1&stdin=${opts.stdin ? 1 : 0}&stdout=${opts.stdout ? 1 : 0}&stderr=${opts.stderr ? 1 : 0}`;
    const conn = await this.call(`attach to container ${id}`, () => this.upgrade(`/containers/${encodeURIComponent(id)}/attach?${query}`));
    const resize = async (rows: number, cols: number): Promise<void> => {
      if (!tty) return;
      await c.resize({ h: rows, w: cols }).catch(() => {});
    };
    if (opts.size) await resize(opts.size.rows, opts.size.cols);
    const split = splitOutput(conn, tty);
    let detached = false;
    const exited = split.done.then(async () => {
      if (detached) return { exitCode: 0, signal: null };
      // The engine ended the stream: the process is exiting; its exit code is recorded a moment later.
      const abort = AbortSignal.timeout(5000);
      const r = await this.wait(id, abort).catch(() => undefined);
      return { exitCode: r?.exitCode ?? 0, signal: null };
    });
    const proc = this.process(conn, { ...opts, tty }, split, exited, resize);
    return {
      ...proc,
      close: () => {
        detached = true;
        proc.close();
      },
    };
  }

  /**
   * POST with "Upgrade: tcp", answered 101: the connection becomes the container's stdio. Not dockerode's
   * attach: docker-modem sends the options as a JSON body, which podman hands the process as stdin.
   */
  private upgrade(path: string): Promise<Duplex> {
    const a = this.address;
    if (a.kind === 'env') {
      // TLS settings from the environment are dockerode's; its hijack is the only way there.
      return new Promise((resolve, reject) =>
        this.docker.modem.dial(
          { path, method: 'POST', isStream: true, hijack: true, openStdin: true, statusCodes: { 101: true, 200: true }, options: {} },
          (err, conn) => (err ? reject(err) : resolve(conn as Duplex)),
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const headers = { Connection: 'Upgrade', Upgrade: 'tcp', 'Content-Length': '0' };
      const req: ClientRequest =
        a.kind === 'socket'
          ? httpRequest({ socketPath: a.socketPath, path, method: 'POST', headers })
          : (a.tls ? httpsRequest : httpRequest)({ host: a.host, port: a.port, path, method: 'POST', headers });
      req.on('upgrade', (_res: IncomingMessage, socket: Socket, head: Buffer) => {
        if (head.length > 0) socket.unshift(head);
        resolve(socket);
      });
      req.on('response', (res: IncomingMessage) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => {
          let json: unknown = body;
          try {
            json = JSON.parse(body);
          } catch {
            // plain text
          }
          reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { statusCode: res.statusCode, json }));
        });
      });
      req.on('error', reject);
      req.end();
    });
  }

  private process(
    conn: Duplex,
    opts: SidecarStreamOptions,
    split: ReturnType<typeof splitOutput>,
    exited: Promise<{ exitCode: number; signal: string | null }>,
    resize: (rows: number, cols: number) => Promise<void>,
  ): SidecarProcess {
    conn.on('error', () => {}); // ends the outputs through 'close'; the exit code says the rest
    if (!opts.stdout) split.stdout.resume();
    if (!opts.stderr || opts.tty) split.stderr.resume();
    return {
      stdin: opts.stdin ? stdinInto(conn) : null,
      stdout: opts.stdout ? split.stdout : null,
      stderr: opts.stderr && !opts.tty ? split.stderr : null,
      exited,
      resize,
      close: () => conn.destroy(),
    };
  }

  /** Runs one dockerode call, turning its failure into SidecarEngineUnavailable or SidecarEngineError. */
  private async call<T>(what: string, fn: () => Promise<T>, reason?: 'CreateContainerError'): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw engineError(err, this.endpoint, what, reason);
    }
  }
}

