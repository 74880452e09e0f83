// The remote-command protocols (`channel.k8s.io` .. `v5.channel.k8s.io`) as one interface, whatever the
// transport: SPDY/3.1 streams (spdy-remote-command.ts, what the API server uses towards kubelets) or
// WebSocket channels (websocket-remote-command.ts, direct clients and ExtendWebSocketsToKubelet). The
// exec and attach endpoints only see RemoteCommandStreams.
import type { Readable, Writable } from 'node:stream';

/** Protocols vmlet speaks, newest first (the order a server prefers). */
export const REMOTE_COMMAND_PROTOCOLS = ['v5.channel.k8s.io', 'v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io'] as const;
export type RemoteCommandProtocol = (typeof REMOTE_COMMAND_PROTOCOLS)[number];

export interface TerminalSize {
  rows: number;
  cols: number;
}

/** metav1.Status as the error stream carries it from v4 on. */
export interface StatusObject {
  kind?: 'Status';
  apiVersion?: 'v1';
  metadata: Record<string, never>;
  status: 'Success' | 'Failure';
  message?: string;
  reason?: string;
  details?: { causes?: { reason?: string; message?: string }[] };
  code?: number;
}

/** The streams of one exec or attach, once the client has opened the ones it asked for. */
export interface RemoteCommandStreams {
  protocol: RemoteCommandProtocol;
  stdin: Readable | null;
  stdout: Writable | null;
  stderr: Writable | null;
  tty: boolean;
  /** Terminal size changes from the client (v3 and later, with a tty). */
  onResize(listener: (size: TerminalSize) => void): void;
  /**
   * Ends the session: `result` goes to the error stream (v4+: the Status as JSON; earlier: its message,
   * and nothing on success), then every stream is closed and the connection ends.
   */
  finish(result: StatusObject): Promise<void>;
  /** Resolves when the client went away (connection closed or reset) before finish(). */
  readonly gone: Promise<void>;
}

export function successStatus(): StatusObject {
  return { metadata: {}, status: 'Success' };
}

/** The Status the kubelet sends for a command that exited non-zero: kubectl turns it into its own exit code. */
export function exitCodeStatus(command: readonly string[], exitCode: number): StatusObject {
  return {
    metadata: {},
    status: 'Failure',
    message: `command terminated with non-zero exit code: error executing command [${command.join(' ')}], exit code ${exitCode}`,
    reason: 'NonZeroExitCode',
    details: { causes: [{ reason: 'ExitCode', message: String(exitCode) }] },
  };
}

export function errorStatus(message: string, reason = 'InternalError', code = 500): StatusObject {
  return { metadata: {}, status: 'Failure', message, reason, code };
}
