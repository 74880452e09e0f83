// Host side of the test guest's agent channel: connects to the unix socket QEMU serves for the
// virtio-serial port (-chardev socket,server=on), retrying while QEMU has not created it yet. The bytes
// on it are the agent protocol (src/agent/host/client.ts speaks it).
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { connectUnix } from '../../src/host/unix-socket.ts';

/**
 * Connects to QEMU's socket, retrying while it does not exist or listen yet (QEMU creates it a moment
 * after it starts). `gaveUp` ends the retries early with its reason, e.g. "QEMU exited".
 */
export async function connectChannel(path: string, timeoutMs: number, gaveUp: () => string | undefined = () => undefined): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await connectUnix(path);
    } catch (err) {
      const reason = gaveUp();
      if (reason) throw new Error(`cannot connect to ${path}: ${reason}`);
      if (Date.now() >= deadline) throw new Error(`cannot connect to ${path} within ${timeoutMs} ms: ${(err as Error).message}`);
      await sleep(20);
    }
  }
}

