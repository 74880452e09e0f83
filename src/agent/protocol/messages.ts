// The agent protocol's messages (docs/AGENT-PROTOCOL.md): what HELLO, REQUEST, RESPONSE and EVENT frames
// carry as JSON, shared by the guest agent and the host client. Types only, plus the few constants both
// sides must agree on.

/** Protocol versions this code speaks. A session uses the highest version both sides speak. */
export const PROTOCOL_VERSION = 1;
export const MIN_PROTOCOL_VERSION = 1;
/** Bytes a sender may have in flight per stream channel before the receiver grants more (WINDOW). */
export const INITIAL_WINDOW = 1024 * 1024;

/** Data channels of a stream (a DATA/EOF/WINDOW frame's flags). */
export const Channel = { Stdin: 0, Stdout: 1, Stderr: 2 } as const;
export type ChannelCode = (typeof Channel)[keyof typeof Channel];

export interface HostHello {
  magic: 'vmlet';
  role: 'host';
  /** Lowest and highest protocol version the host speaks. */
  minVersion: number;
  maxVersion: number;
  /** Free text for the agent's log, e.g. "vmlet 0.1.0 pid 1234". */
  client?: string;
  /** Random per connection attempt: a HELLO repeated by the same host (a handshake retry) is not a new session. */
  nonce: string;
}

export interface AgentHello {
  magic: 'vmlet';
  role: 'agent';
  /** The version chosen for this session; absent when there is none in common (then `error` says why). */
  version?: number;
  minVersion: number;
  maxVersion: number;
  agentVersion: string;
  capabilities: string[];
  /** Seconds since the guest booted, and the guest's boot id: a changed boot id means a new boot. */
  uptimeSeconds: number;
  bootId: string;
  error?: AgentErrorBody;
}

/** Why something failed, in Kubernetes' manner: a CamelCase reason a program can switch on, and a sentence. */
export type AgentErrorReason =
  | 'InvalidArgument' // the request is malformed or names something impossible
  | 'NotFound' // no such main process, user, group, file
  | 'AlreadyExists' // a main process with that id runs already
  | 'StartFailed' // the command could not be started (no such executable, permission denied, bad cwd)
  | 'NotSupported' // the guest lacks what this needs (a file system type, a tty helper), or the agent the op or capability
  | 'MountFailed'
  | 'ConnectFailed' // port.connect: the TCP connection in the guest was refused, timed out or broke
  | 'Unavailable' // the agent is shutting down
  | 'VersionMismatch'
  | 'Timeout' // the host gave up waiting
  | 'Disconnected' // the connection to the agent ended
  | 'ProtocolError'
  | 'Internal';

export interface AgentErrorBody {
  reason: AgentErrorReason;
  message: string;
}

export type Response = { ok: true; result: unknown } | { ok: false; error: AgentErrorBody };

/** A user as given: a name, a uid, "uid:gid" or "name:group". Resolved in the guest from /etc/passwd and /etc/group. */
export type UserSpec = string;

export interface ProcessSpec {
  /** The program and its arguments; argv[0] is looked up in PATH. Exactly one of argv and shell. */
  argv?: string[];
  /** A shell line, run as /bin/sh -c LINE. */
  shell?: string;
  /** Added to (and overriding) the agent's base environment: PATH, HOME, USER, TERM (with a tty). */
  env?: Record<string, string>;
  cwd?: string;
  user?: UserSpec;
}

export interface ExecRequest extends ProcessSpec {
  op: 'exec';
  /** The stream the exec's stdin/stdout/stderr travel on; chosen by the host, unique per session. */
  stream: number;
  /** Keep stdin open for DATA from the host (else the process gets /dev/null). */
  stdin: boolean;
  /** A pseudo-terminal: stdout carries the terminal, there is no stderr. */
  tty?: { rows: number; cols: number; term?: string };
}

export interface ExecStarted {
  pid: number;
}

/** An exec's end, as the EVENT `exec-exit` on its stream, after the EOFs of its output channels. */
export interface ExitInfo {
  /** The exit status; 128 + signal number when killed by a signal (the shell's convention). */
  exitCode: number;
  /** The signal that killed it, e.g. "SIGKILL", else null. */
  signal: string | null;
}

export interface LogOptions {
  /** Rotate the log file when it passes this many bytes (default 10 MiB). */
  maxBytes?: number;
  /** Log files kept, the current one included (default 5). */
  maxFiles?: number;
}

export interface MainStartRequest extends ProcessSpec {
  op: 'main.start';
  /** The container's name; one main process per id. */
  id: string;
  log?: LogOptions;
  /** Keep a pipe to the process's stdin open for `main.attach` (else it gets /dev/null). Capability `main.stdin`. */
  stdin?: boolean;
  /** With stdin: close the process's stdin when the first attach with stdin ends (Kubernetes' stdinOnce). */
  stdinOnce?: boolean;
  /** Not supported for main processes: refused with NotSupported. */
  tty?: unknown;
}

/** `main.attach`: the live output of a running main process on a stream, and the stream's stdin to it. */
export interface MainAttachRequest {
  op: 'main.attach';
  id: string;
  stream: number;
  /** Pass the stream's stdin channel to the process (when it was started with stdin). */
  stdin: boolean;
}

export interface MainAttached {
  pid: number;
  /** Whether the stream's stdin reaches the process: false when it was started without stdin, or its stdin was closed (stdinOnce). Data sent anyway is discarded. */
  stdin: boolean;
}

/** An attach's end, as the EVENT `attach-exit` on its stream, after the EOFs of its output channels. */
export interface AttachExit extends ExitInfo {
  /** Output bytes this attacher missed because it fell more than 1 MiB behind (absent when none). */
  droppedBytes?: number;
}

/** `port.connect`: a TCP connection from the guest to its own loopback. */
export interface PortConnectRequest {
  op: 'port.connect';
  /** Host → guest bytes on the stream's stdin channel, guest → host on stdout. */
  stream: number;
  port: number;
  /** "127.0.0.1" (the default) or "::1"; other hosts are refused. */
  host?: string;
}

export type MainState = 'running' | 'exited';

export interface MainStatus {
  id: string;
  state: MainState;
  pid: number | null;
  startedAt: string;
  /** Times it was started again by main.restart. */
  restarts: number;
  exit: (ExitInfo & { finishedAt: string }) | null;
  /** The current log file in the guest (CRI format). */
  logPath: string;
}

export interface LogsRequest {
  op: 'logs';
  id: string;
  /** The stream the log bytes come on (channel stdout). */
  stream: number;
  follow?: boolean;
  /** Only the last N lines (before following). */
  tailLines?: number;
  /** Only lines logged at or after this time (RFC 3339). */
  sinceTime?: string;
  /** Prefix each line with its RFC 3339 time, as `kubectl logs --timestamps` does. */
  timestamps?: boolean;
  /** The log of the run before the last restart (not followed). Capability `logs.previous`. */
  previous?: boolean;
  /** End the stream after this many bytes of output (cut at the byte). Capability `logs.limit-bytes`. */
  limitBytes?: number;
  /**
   * Only the lines of this output stream (Kubernetes' `stream` log option; here `stream` is the data
   * stream's id). Capability `logs.stream`.
   */
  outputStream?: 'stdout' | 'stderr';
}

export interface MountRequest {
  op: 'mount';
  /** virtiofs is the only type today. */
  fsType?: 'virtiofs';
  tag: string;
  mountPath: string;
  readOnly?: boolean;
  /**
   * Mount only this path inside the share (a directory, made if missing, or a file), as Kubernetes'
   * volumeMounts[].subPath: the share is mounted once under /run/vmlet/volumes/<tag> and the path
   * bind-mounted at mountPath. Capability `mount.subpath`.
   */
  subPath?: string;
}

export interface AgentInfo {
  agentVersion: string;
  protocolVersion: number;
  node: string;
  hostname: string;
  kernel: string;
  arch: string;
  uptimeSeconds: number;
  agentUptimeSeconds: number;
  bootId: string;
  /** Non-loopback addresses by interface. */
  addresses: { interface: string; family: 'IPv4' | 'IPv6'; address: string; cidr: string | null }[];
}

export interface AgentStats {
  /** From /proc/stat: cumulative CPU time of the guest, in seconds (user+nice+system+irq+softirq+steal). */
  cpu: { usageSeconds: number; idleSeconds: number; cpus: number };
  /** From /proc/meminfo, bytes. workingSet = total - available, as the kubelet counts it. */
  memory: { totalBytes: number; availableBytes: number; freeBytes: number; workingSetBytes: number };
  /** statfs of the root and of every mount the agent made. */
  filesystems: { path: string; capacityBytes: number; availableBytes: number; usedBytes: number; inodes: number; inodesFree: number }[];
  timestamp: string;
}

export interface ShutdownRequest {
  op: 'shutdown';
  /** For the main processes: SIGTERM, then SIGKILL after this long (default 10 s). */
  graceMs?: number;
}

/** Every request op and the result it answers with. */
export interface Ops {
  ping: { req: Record<string, never>; res: { agentVersion: string; uptimeSeconds: number; agentUptimeSeconds: number } };
  info: { req: Record<string, never>; res: AgentInfo };
  stats: { req: Record<string, never>; res: AgentStats };
  exec: { req: Omit<ExecRequest, 'op'>; res: ExecStarted };
  'exec.signal': { req: { stream: number; signal: string }; res: Record<string, never> };
  'exec.resize': { req: { stream: number; rows: number; cols: number }; res: Record<string, never> };
  'main.start': { req: Omit<MainStartRequest, 'op'>; res: MainStatus };
  'main.stop': { req: { id: string; signal?: string; graceMs?: number }; res: MainStatus };
  'main.restart': { req: { id: string; graceMs?: number }; res: MainStatus };
  'main.status': { req: { id: string }; res: MainStatus };
  'main.list': { req: Record<string, never>; res: MainStatus[] };
  'main.remove': { req: { id: string }; res: Record<string, never> };
  'main.attach': { req: Omit<MainAttachRequest, 'op'>; res: MainAttached };
  'port.connect': { req: Omit<PortConnectRequest, 'op'>; res: Record<string, never> };
  logs: { req: Omit<LogsRequest, 'op'>; res: Record<string, never> };
  mount: { req: Omit<MountRequest, 'op'>; res: Record<string, never> };
  'set-hostname': { req: { hostname: string }; res: Record<string, never> };
  shutdown: { req: Omit<ShutdownRequest, 'op'>; res: Record<string, never> };
}
export type OpName = keyof Ops;

export type AgentEvent =
  | ({ event: 'exec-exit' } & ExitInfo)
  | ({ event: 'attach-exit' } & AttachExit)
  /** A port.connect stream is over (the guest's socket closed), after the EOF of its stdout; `error` when it broke. */
  | { event: 'port-closed'; error?: string }
  | ({ event: 'main-exit'; id: string; finishedAt: string } & ExitInfo);

export const SIGNALS: Record<string, number> = {
  SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGILL: 4, SIGTRAP: 5, SIGABRT: 6, SIGBUS: 7, SIGFPE: 8, SIGKILL: 9,
  SIGUSR1: 10, SIGSEGV: 11, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15, SIGCHLD: 17, SIGCONT: 18,
  SIGSTOP: 19, SIGTSTP: 20, SIGTTIN: 21, SIGTTOU: 22, SIGURG: 23, SIGXCPU: 24, SIGXFSZ: 25, SIGVTALRM: 26,
  SIGPROF: 27, SIGWINCH: 28, SIGIO: 29, SIGPWR: 30, SIGSYS: 31,
};
