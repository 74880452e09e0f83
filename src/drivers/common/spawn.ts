// A VM's process as thin I/O, for both drivers: start a program detached in its own session with its
// output appended to a log (so it outlives vmlet), signal a recorded process only while it is still that
// process, and watch one that is not our child until it is gone. Who a pid is (is it still "alive") is each
// driver's: /proc with the boot id for QEMU (qemu/process.ts), a start time for the vz helper.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';

/**
 * Starts argv[0] detached (setsid: its own session and process group, so a signal to vmlet's group or
 * vmlet's exit does not reach it), stdin from /dev/null, stdout and stderr appended to logFile. The
 * child stays referenced (it keeps vmlet's event loop alive, so an awaited exit is seen) until the
 * caller lets go of it with child.unref() (Vm.detach()). `what` names the program in a failure
 * ("cannot start <what><command>: ...").
 */
export async function spawnDetachedChild(argv: string[], logFile: string, opts: { env?: NodeJS.ProcessEnv; what?: string } = {}): Promise<ChildProcess & { pid: number }> {
  const [command, ...args] = argv;
  if (!command) throw new Error('spawnDetached: empty argv');
  const fd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(command, args, { detached: true, stdio: ['ignore', fd, fd], ...(opts.env ? { env: opts.env } : {}) });
  } finally {
    closeSync(fd);
  }
  if (child.pid === undefined) {
    const err = await new Promise<Error>((resolve) => child.once('error', resolve));
    throw new Error(`cannot start ${opts.what ?? ''}${command}: ${err.message}`);
  }
  child.on('error', () => {}); // exits are reported through 'exit'
  return child as ChildProcess & { pid: number };
}

/** Sends sig to pid, only if alive() says it is still the recorded process (a reused pid is never signalled). */
export async function signalIfAlive(pid: number, alive: () => Promise<boolean>, sig: NodeJS.Signals): Promise<boolean> {
  if (!(await alive())) return false;
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

/**
 * Resolves when alive() first says false, asking every intervalMs; stop() ends the watch (and its timer).
 * With unref the watch does not keep vmlet's event loop alive.
 */
export function watchUntilGone(alive: () => Promise<boolean>, intervalMs: number, opts: { unref?: boolean } = {}): { gone: Promise<void>; stop: () => void } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const gone = new Promise<void>((resolve) => {
    const tick = async (): Promise<void> => {
      if (stopped) return;
      if (!(await alive())) return resolve();
      if (stopped) return;
      timer = setTimeout(() => void tick(), intervalMs);
      if (opts.unref) timer.unref();
    };
    void tick();
  });
  return { gone, stop: () => { stopped = true; clearTimeout(timer); } };
}
