// `kubectl exec` and `attach` over SPDY/3.1, as the API server proxies them to kubelets: after the 101,
// the client opens one stream per channel (streamtype error, stdin, stdout, stderr, resize), each
// answered at once with a SYN_REPLY; once all the streams the request asked for exist, the session runs.
// v4 and v5 carry a JSON Status on the error stream (v5 is v4 over SPDY: its close signal is WebSocket
// only); v1–v3 carry a plain message, and nothing on success; v1 and v2 have no resize stream.
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { SpdyConnection, type SpdyStream } from '../spdy/connection.ts';
import { REMOTE_COMMAND_PROTOCOLS, type RemoteCommandProtocol, type RemoteCommandStreams, type StatusObject, type TerminalSize } from './remote-command.ts';
import { acceptUpgrade, headerList, negotiate, PROTOCOL_VERSION_HEADER, rejectUpgrade } from './upgrade.ts';
import { ResizeParser } from './resize.ts';

export interface WantedStreams {
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
  tty: boolean;
}

export interface SpdySessionOptions {
  /** The client must have opened its streams by then (the kubelet's streamCreationTimeout, 30 s). */
  streamCreationTimeoutMs?: number;
  /** A connection with no frame for this long is closed (the kubelet's streamingConnectionIdleTimeout, 4 h). */
  idleTimeoutMs?: number;
}

export class StreamSetupError extends Error {
  override name = 'StreamSetupError';
}

/**
 * Upgrades to SPDY and waits for the streams. Rejects (having answered or closed the connection) when the
 * protocol cannot be negotiated or the streams do not come in time.
 */
export async function acceptSpdyRemoteCommand(
  req: IncomingMessage, socket: Duplex, head: Buffer, wanted: WantedStreams, opts: SpdySessionOptions = {},
): Promise<RemoteCommandStreams> {
  const n = negotiate(headerList(req, PROTOCOL_VERSION_HEADER), REMOTE_COMMAND_PROTOCOLS, true);
  if (!n.ok) {
    rejectUpgrade(socket, n.status, n.message, n.headers);
    throw new StreamSetupError(n.message);
  }
  const protocol = (n.protocol || 'channel.k8s.io') as RemoteCommandProtocol;
  acceptUpgrade(socket, 'SPDY/3.1', n.protocol ? { 'X-Stream-Protocol-Version': n.protocol } : {});
  const conn = new SpdyConnection(socket, { head, ...(opts.idleTimeoutMs ? { idleTimeoutMs: opts.idleTimeoutMs } : {}) });
  const resizing = wanted.tty && protocol !== 'channel.k8s.io' && protocol !== 'v2.channel.k8s.io';
  const expected = 1 + Number(wanted.stdin) + Number(wanted.stdout) + Number(wanted.stderr) + Number(resizing);
  const streams = new Map<string, SpdyStream>();
  const gone = new Promise<void>((resolve) => conn.once('close', () => resolve()));

  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => fail(`timed out waiting for the client to create streams (${streams.size} of ${expected})`), opts.streamCreationTimeoutMs ?? 30_000);
    const fail = (message: string) => {
      clearTimeout(timer);
      conn.off('stream', onStream);
      void conn.close();
      reject(new StreamSetupError(message));
    };
    const onStream = (s: SpdyStream) => {
      const type = s.headers.streamtype ?? '';
      if (!['error', 'stdin', 'stdout', 'stderr', 'resize'].includes(type) || streams.has(type)) {
        // The kubelet logs an unexpected type and ignores the stream; a reset says so to the client.
        s.reset();
        return;
      }
      s.reply();
      streams.set(type, s);
      if (streams.size === expected) {
        clearTimeout(timer);
        conn.off('stream', onStream);
        if (!streams.has('error')) return fail('the client opened no error stream');
        resolve();
      }
    };
    conn.on('stream', onStream);
    void gone.then(() => fail('the client closed the connection before opening its streams'));
  });

  const error = streams.get('error')!;
  const stdin = streams.get('stdin') ?? null;
  if (protocol === 'channel.k8s.io' && stdin) stdin.resume(); // v1 closes stdin at once
  const resize = streams.get('resize');
  const resizeListeners: ((s: TerminalSize) => void)[] = [];
  if (resize) {
    const parser = new ResizeParser((size) => resizeListeners.forEach((l) => l(size)));
    resize.on('data', (d: Buffer) => parser.push(d));
    resize.on('error', () => undefined);
  }
  for (const s of streams.values()) s.on('error', () => undefined);
  let finished = false;
  return {
    protocol,
    stdin: protocol === 'channel.k8s.io' ? null : (stdin),
    stdout: streams.get('stdout') ?? null,
    stderr: streams.get('stderr') ?? null,
    tty: wanted.tty,
    onResize: (l) => void resizeListeners.push(l),
    gone,
    async finish(result: StatusObject) {
      if (finished) return;
      finished = true;
      const v4 = protocol === 'v4.channel.k8s.io' || protocol === 'v5.channel.k8s.io';
      if (v4) error.write(JSON.stringify(result));
      else if (result.status !== 'Success') error.write(result.message ?? 'error');
      for (const s of streams.values()) if (s.writable) s.end();
      // The client reads stdout, stderr and the error stream to their ends before it reports; closing the
      // connection once the ends are written lets a slow reader still get them.
      await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
      void conn.close();
    },
  };
}
