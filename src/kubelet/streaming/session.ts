// One exec or attach session, whatever the transport: the client's streams (RemoteCommandStreams) joined
// to a process in the VM (StreamedProcess), and the end reported as the kubelet reports it — Success, or
// for exec a non-zero exit code as NonZeroExitCode, which kubectl turns into its own exit code.
import type { Readable, Writable } from 'node:stream';
import type { StreamedProcess } from '../provider.ts';
import { errorStatus, exitCodeStatus, successStatus, type RemoteCommandStreams, type TerminalSize } from './remote-command.ts';

export interface SessionOptions {
  /** exec: the command, named in a non-zero exit Status. attach: undefined (an attach ends with Success). */
  command?: string[];
  /** With a tty, how long to wait for the client's first terminal size before starting (kubectl sends it at once). */
  firstSizeWaitMs?: number;
}

/** Runs the session to its end; never rejects (failures are reported to the client). */
export async function runRemoteCommand(
  streams: RemoteCommandStreams, start: (size: TerminalSize | undefined) => Promise<StreamedProcess>, opts: SessionOptions = {},
): Promise<{ exitCode?: number; error?: string }> {
  let latest: TerminalSize | undefined;
  let onSize: ((s: TerminalSize) => void) | undefined;
  streams.onResize((s) => {
    latest = s;
    onSize?.(s);
  });
  if (streams.tty && !latest) {
    await Promise.race([
      new Promise<void>((resolve) => (onSize = () => resolve())),
      new Promise((r) => setTimeout(r, opts.firstSizeWaitMs ?? 1000)),
      streams.gone,
    ]);
  }
  let proc: StreamedProcess;
  try {
    proc = await start(latest);
  } catch (err) {
    const message = (err as Error).message;
    await streams.finish(errorStatus(message));
    return { error: message };
  }
  onSize = (s) => void proc.resize(s.rows, s.cols).catch(() => undefined);
  let clientGone = false;
  void streams.gone.then(() => {
    clientGone = true;
    proc.close();
  });
  if (proc.stdin) {
    if (streams.stdin) {
      streams.stdin.pipe(proc.stdin);
      proc.stdin.on('error', () => undefined);
    } else {
      proc.stdin.end();
    }
  }
  const copies = [copy(proc.stdout, streams.stdout), copy(proc.stderr, streams.stderr)];
  let exit: { exitCode: number; signal: string | null };
  try {
    exit = await proc.exited;
    await Promise.all(copies);
  } catch (err) {
    // A client that went away detached the process (close()); that is the end, not a failure.
    if (clientGone) return { error: 'the client went away' };
    const message = `the VM's agent went away: ${(err as Error).message}`;
    await streams.finish(errorStatus(message));
    return { error: message };
  }
  if (!clientGone) {
    const ok = exit.exitCode === 0 || opts.command === undefined;
    await streams.finish(ok ? successStatus() : exitCodeStatus(opts.command!, exit.exitCode));
  }
  return { exitCode: exit.exitCode };
}

/** Copies a process output to the client's stream without ending it (finish() ends it after the Status). */
function copy(from: Readable | null, to: Writable | null): Promise<void> {
  if (!from) return Promise.resolve();
  if (!to) {
    from.resume(); // not asked for: drained, so the process is never blocked on it
    return new Promise((resolve) => from.once('end', resolve).once('close', resolve));
  }
  return new Promise((resolve) => {
    from.on('data', (chunk: Buffer) => {
      if (!to.writable) return;
      if (!to.write(chunk)) {
        from.pause();
        to.once('drain', () => from.resume());
      }
    });
    from.once('end', resolve).once('close', resolve);
    to.once('close', () => {
      from.resume();
    });
  });
}
