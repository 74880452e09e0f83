// The virtio-serial transport: the port QEMU names org.vmlet.agent.0, found under /sys/class/virtio-ports.
// Node cannot make a net.Socket of a character device, so the port is a file handle whose reads and
// writes block in libuv's thread pool. What the port does (test/guest/README.md):
// - while no host is connected, a read returns end-of-file at once, and a write blocks until one is;
// - a write takes at most 32 KiB.
// Each stretch of data between end-of-files is one connection, handed to the agent as a Duplex. Writes of
// a connection that ended are dropped (one already inside write() completes when the next host connects:
// that host's parser skips it while it waits for the agent's HELLO).
import { open, readdir, readFile, type FileHandle } from 'node:fs/promises';
import { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';

const PORTS_DIR = '/sys/class/virtio-ports';
/** Writes are gathered up to this much per write() call: each call is a VM exit. */
const MAX_WRITE = 256 * 1024;

/** /dev/vportNpM of the port named `name`, waiting up to timeoutMs for it to appear. */
export async function findPort(name: string, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const port of await readdir(PORTS_DIR).catch(() => [])) {
      const portName = await readFile(`${PORTS_DIR}/${port}/name`, 'utf8').catch(() => '');
      if (portName.trim() === name) return `/dev/${port}`;
    }
    if (Date.now() > deadline) throw new Error(`no virtio-serial port named ${name} under ${PORTS_DIR}`);
    await sleep(50);
  }
}

export interface PortServer {
  /** Ends when the port fails; runs until `signal` aborts otherwise. */
  served: Promise<void>;
  /**
   * Resolves once no read is blocked on the port. A blocked read holds a thread-pool thread, and Node's
   * exit waits for those threads: an agent must not exit while one is blocked (it would hang). The read
   * returns when the host sends something or disconnects.
   */
  idle(): Promise<void>;
}

/** Serves connections on the port until `signal` aborts. */
export async function servePort(path: string, onConnection: (link: Duplex) => void, signal?: AbortSignal): Promise<PortServer> {
  const port = await open(path, 'r+');
  let reading: Promise<unknown> = Promise.resolve();
  const served = loop(port, onConnection, signal, (r) => {
    reading = r;
  });
  return { served, idle: () => reading.then(() => undefined, () => undefined) };
}

async function loop(port: FileHandle, onConnection: (link: Duplex) => void, signal: AbortSignal | undefined, track: (r: Promise<unknown>) => void): Promise<void> {
  const writer = new PortWriter(port);
  let link: PortLink | undefined;
  try {
    while (!signal?.aborted) {
      const buf = Buffer.allocUnsafe(64 * 1024);
      const read = port.read(buf, 0, buf.length, null);
      track(read);
      const { bytesRead } = await read;
      if (bytesRead === 0) {
        if (link) {
          link.push(null);
          link.destroy();
          link = undefined;
          writer.generation++;
        }
        await sleep(50); // no host now; one may connect later
        continue;
      }
      if (!link) {
        link = new PortLink(writer, writer.generation);
        onConnection(link);
      }
      link.push(buf.subarray(0, bytesRead));
    }
  } finally {
    await port.close();
  }
}

class PortWriter {
  generation = 0;
  private queue: { generation: number; data: Buffer; done: (err?: Error | null) => void }[] = [];
  private busy = false;

  constructor(private readonly port: FileHandle) {}

  write(generation: number, data: Buffer, done: (err?: Error | null) => void): void {
    this.queue.push({ generation, data, done });
    if (!this.busy) void this.drain();
  }

  private async drain(): Promise<void> {
    this.busy = true;
    try {
      while (this.queue.length) {
        const batch: typeof this.queue = [];
        let bytes = 0;
        while (this.queue.length && bytes < MAX_WRITE) {
          const item = this.queue.shift()!;
          if (item.generation !== this.generation) {
            item.done(); // that host is gone
            continue;
          }
          batch.push(item);
          bytes += item.data.length;
        }
        if (!batch.length) continue;
        const data = batch.length === 1 ? batch[0]!.data : Buffer.concat(batch.map((b) => b.data), bytes);
        let err: Error | null = null;
        const generation = batch[0]!.generation;
        try {
          for (let done = 0; done < data.length && generation === this.generation; ) {
            done += (await this.port.write(data, done, data.length - done, null)).bytesWritten;
          }
        } catch (e) {
          err = e as Error;
        }
        for (const b of batch) b.done(err);
      }
    } finally {
      this.busy = false;
    }
  }
}

class PortLink extends Duplex {
  constructor(private readonly writer: PortWriter, private readonly generation: number) {
    super();
  }

  override _read(): void {
    // Reads are pushed by servePort's loop; the port has no way to pause the host anyway.
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    this.writer.write(this.generation, chunk, done);
  }
}
