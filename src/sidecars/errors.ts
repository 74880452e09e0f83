// Errors of the sidecar engine layer: the engine is not there (SidecarEngineUnavailable, naming where it
// was looked for), or it answered with a refusal (SidecarEngineError, with its HTTP status and words).

/** No Docker-API engine answers at `endpoint` (no socket, nothing listening, no permission, no answer). */
export class SidecarEngineUnavailable extends Error {
  override name = 'SidecarEngineUnavailable';
  constructor(
    /** Where the engine was looked for: "unix:///run/podman/podman.sock", "tcp://host:2376", or several. */
    readonly endpoint: string,
    /** Why, in a few words: "no socket at /var/run/docker.sock", "connection refused", ... */
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(`no container engine for sidecars at ${endpoint}: ${reason}`, options);
  }
}

export type SidecarErrorReason =
  | 'ErrImagePull' // the engine could not pull the image (the registry's words in the message)
  | 'NotFound' // no such container (or image)
  | 'Conflict' // a container of that name exists, or the container is in the wrong state
  | 'InvalidSpec' // the V1Container asks for what a container engine cannot do
  | 'CreateContainerError'
  | 'EngineError'; // anything else the engine refused

/** The engine answered, and said no. */
export class SidecarEngineError extends Error {
  override name = 'SidecarEngineError';
  constructor(
    readonly reason: SidecarErrorReason,
    message: string,
    /** The engine's HTTP status, when it gave one. */
    readonly statusCode?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Connection-level failures: the engine is not reachable, as opposed to refusing a request. */
const UNREACHABLE: Record<string, string> = {
  ENOENT: 'no socket there',
  ECONNREFUSED: 'connection refused (the engine is not running?)',
  EACCES: 'permission denied on the socket',
  EPERM: 'permission denied on the socket',
  ENOTSOCK: 'not a socket',
  ECONNRESET: 'the connection was reset',
  EHOSTUNREACH: 'host unreachable',
  ENOTFOUND: 'host not found',
  ETIMEDOUT: 'timed out',
};

/** Turns what dockerode threw into one of our errors; `what` says what was being done ("pull busybox"). */
export function engineError(err: unknown, endpoint: string, what: string, reason: SidecarErrorReason = 'EngineError'): Error {
  if (err instanceof SidecarEngineUnavailable || err instanceof SidecarEngineError) return err;
  const e = err as { code?: unknown; statusCode?: unknown; json?: unknown; reason?: unknown; message?: unknown };
  if (typeof e.code === 'string' && UNREACHABLE[e.code]) return new SidecarEngineUnavailable(endpoint, UNREACHABLE[e.code]!, { cause: err });
  const status = typeof e.statusCode === 'number' ? e.statusCode : undefined;
  const words = engineMessage(err);
  // podman answers a name already taken with 500, Docker with 409.
  const r: SidecarErrorReason = status === 404 ? 'NotFound' : status === 409 || /already in use/.test(words) ? 'Conflict' : reason;
  return new SidecarEngineError(r, `${what}: ${words}`, status, { cause: err });
}

/** The engine's own message ({"message": ...} body), else the error's. */
export function engineMessage(err: unknown): string {
  const e = err as { json?: unknown; message?: unknown };
  const json = e.json as { message?: unknown; cause?: unknown } | string | null | undefined;
  if (json && typeof json === 'object' && typeof json.message === 'string') return json.message;
  if (typeof json === 'string' && json.trim()) return json.trim();
  return typeof e.message === 'string' ? e.message.replace(/^\(HTTP code \d+\) [a-z ]+- /, '') : String(err);
}

/** True when the engine said "no such container/image" (404). */
export function isNotFound(err: unknown): boolean {
  return (err as { statusCode?: unknown }).statusCode === 404 || (err instanceof SidecarEngineError && err.reason === 'NotFound');
}
