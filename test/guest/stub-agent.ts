// The test guest's channel probe: a stand-in for vmlet-agent until the real agent protocol exists. It runs
// inside the guest (build.ts compiles it to /usr/lib/vmlet/agent.cjs; Node builtins only), opens the
// virtio-serial port by its name under /sys/class/virtio-ports, writes one ready line, then echoes every
// line it reads, until the line "vmlet-probe exit" makes it answer "vmlet-probe bye" and exit (after
// which the guest's init powers the VM off).
import { open, readdir, readFile, type FileHandle } from 'node:fs/promises';
import { hostname, networkInterfaces, release } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';

const PORT_NAME = process.argv[2] ?? 'org.vmlet.agent.0';
const PORTS_DIR = '/sys/class/virtio-ports';
const EXIT_LINE = 'vmlet-probe exit';

/** /dev/vportNpM of the port QEMU named `name` (virtserialport's name=...). */
async function findPort(name: string, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const port of await readdir(PORTS_DIR).catch(() => [])) {
      const portName = await readFile(`${PORTS_DIR}/${port}/name`, 'utf8').catch(() => '');
      if (portName.trim() === name) return `/dev/${port}`;
    }
    // virtio_console has probed the device before init runs us; the patience only makes the probe
    // independent of that ordering.
    if (Date.now() > deadline) throw new Error(`no virtio-serial port named ${name} under ${PORTS_DIR}`);
    await sleep(50);
  }
}

// A port write takes at most 32 KiB at a time, so large writes come back short.
async function writeAll(port: FileHandle, data: Buffer): Promise<void> {
  for (let done = 0; done < data.length; ) done += (await port.write(data, done, data.length - done, null)).bytesWritten;
}

async function main(): Promise<void> {
  const path = await findPort(PORT_NAME, 5000);
  // A plain file handle: Node's net.Socket refuses a character device, so reads and writes go through
  // libuv's thread pool, where a blocking read() on the port is fine.
  const port = await open(path, 'r+');
  const uptimeSeconds = Number((await readFile('/proc/uptime', 'utf8')).split(' ')[0]);
  const addresses = Object.entries(networkInterfaces()).flatMap(([dev, addrs]) => (addrs ?? []).map((a) => `${dev}=${a.address}`));
  const facts = { port: path, hostname: hostname(), kernel: release(), node: process.version, uptimeSeconds, addresses };
  // While no host client is connected to QEMU's socket, this write blocks (it is not lost), so the host
  // may connect late.
  await writeAll(port, Buffer.from(`vmlet-probe ready ${JSON.stringify(facts)}\n`));
  console.log(`vmlet-probe: ready on ${path} after ${uptimeSeconds} s of uptime`);

  const buffer = Buffer.alloc(64 * 1024);
  let pending = Buffer.alloc(0);
  for (;;) {
    const { bytesRead } = await port.read(buffer, 0, buffer.length, null);
    if (bytesRead === 0) {
      // End-of-file means no host client is connected right now; one may connect again later.
      await sleep(50);
      continue;
    }
    pending = Buffer.concat([pending, buffer.subarray(0, bytesRead)]);
    for (let nl = pending.indexOf(10); nl >= 0; nl = pending.indexOf(10)) {
      const line = pending.subarray(0, nl + 1);
      pending = pending.subarray(nl + 1);
      if (line.toString('utf8').trimEnd() === EXIT_LINE) {
        await writeAll(port, Buffer.from('vmlet-probe bye\n'));
        await port.close();
        console.log('vmlet-probe: asked to exit');
        return;
      }
      await writeAll(port, line);
    }
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`vmlet-probe: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
