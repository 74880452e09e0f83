// Host side of the test guest's agent channel: a line-oriented client of the unix socket that QEMU
// serves for the virtio-serial port (-chardev socket,server=on). Enough for the channel probe; the real
// agent protocol will bring its own framing.
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export class AgentChannel {
  private pending = Buffer.alloc(0);
  private readonly lines: string[] = [];
  private waiter: { resolve: (line: string) => void; reject: (err: Error) => void } | undefined;
  private closedError: Error | undefined;

  private constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => {}); // reported through 'close'
    socket.on('close', () => {
      this.closedError = new Error('agent channel closed (QEMU went away or closed the socket)');
      this.waiter?.reject(this.closedError);
      this.waiter = undefined;
    });
  }

  /**
   * Connects to QEMU's socket, retrying while it does not exist or listen yet (QEMU creates it a moment
   * after it starts). `gaveUp` ends the retries early with its reason, e.g. "QEMU exited".
   */
  static async connect(path: string, timeoutMs: number, gaveUp: () => string | undefined = () => undefined): Promise<AgentChannel> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return new AgentChannel(await connectOnce(path));
      } catch (err) {
        const reason = gaveUp();
        if (reason) throw new Error(`cannot connect to ${path}: ${reason}`);
        if (Date.now() >= deadline) throw new Error(`cannot connect to ${path} within ${timeoutMs} ms: ${(err as Error).message}`);
        await sleep(20);
      }
    }
  }

  /** The next line the guest wrote, without its newline. */
  readLine(timeoutMs: number): Promise<string> {
    const line = this.lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    if (this.closedError) return Promise.reject(this.closedError);
    if (this.waiter) return Promise.reject(new Error('readLine: one reader at a time'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`no line from the guest within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = {
        resolve: (l) => (clearTimeout(timer), resolve(l)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      };
    });
  }

  /** Writes and resolves once the data is handed to the socket. */
  write(data: string | Buffer): Promise<void> {
    return new Promise((resolve, reject) => this.socket.write(data, (err) => (err ? reject(err) : resolve())));
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    this.pending = Buffer.concat([this.pending, chunk]);
    for (let nl = this.pending.indexOf(10); nl >= 0; nl = this.pending.indexOf(10)) {
      const line = this.pending.subarray(0, nl).toString('utf8');
      this.pending = this.pending.subarray(nl + 1);
      const waiter = this.waiter;
      this.waiter = undefined;
      if (waiter) waiter.resolve(line);
      else this.lines.push(line);
    }
  }
}

function connectOnce(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.removeListener('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}
