// vmlet-agent's entry point (bundled into one CommonJS file by bundle.ts; Node builtins only). Transports:
//   (default)                the virtio-serial port named org.vmlet.agent.0 (--port NAME for another)
//   --unix PATH              a unix socket (host-side tests run the real agent this way, no VM)
//   --tcp HOST:PORT --tls-cert F --tls-key F --tls-ca F
//                            TCP with mutual TLS (a client certificate signed by --tls-ca is required),
//                            for hypervisors without a network-free channel
import { readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { Agent, AGENT_VERSION } from './agent.ts';
import { findPort, servePort } from './port.ts';

// Port reads and writes each hold a thread-pool thread while they block; leave room for file I/O.
process.env.UV_THREADPOOL_SIZE ??= '8';

const USAGE = 'usage: vmlet-agent [--port NAME | --unix PATH | --tcp HOST:PORT --tls-cert F --tls-key F --tls-ca F] ' +
  '[--log-dir DIR] [--run-dir DIR] [--shutdown poweroff|exit]';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: 'org.vmlet.agent.0' },
      unix: { type: 'string' },
      tcp: { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-ca': { type: 'string' },
      'log-dir': { type: 'string', default: '/var/log/vmlet' },
      'run-dir': { type: 'string', default: '/run/vmlet' },
      shutdown: { type: 'string', default: 'poweroff' },
      version: { type: 'boolean', default: false },
    },
  });
  if (values.version) {
    console.log(`vmlet-agent ${AGENT_VERSION}`);
    return;
  }
  if (values.shutdown !== 'poweroff' && values.shutdown !== 'exit') throw new Error(`--shutdown must be poweroff or exit\n${USAGE}`);
  const log = (msg: string): void => console.error(`vmlet-agent: ${msg}`);
  const agent = new Agent({ logDir: values['log-dir'], runDir: values['run-dir'], onShutdown: values.shutdown, log });
  const stop = new AbortController();
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => {
      log(`${sig}: stopping processes`);
      void agent.terminate();
    });
  }

  if (values.unix) {
    const path = values.unix;
    rmSync(path, { force: true });
    const server = createServer((socket) => agent.serve(socket));
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(path, resolve));
    log(`listening on ${path}`);
    await agent.done;
    server.close();
  } else if (values.tcp) {
    const [host, port] = splitHostPort(values.tcp);
    const { 'tls-cert': cert, 'tls-key': key, 'tls-ca': ca } = values;
    if (!cert || !key || !ca) throw new Error(`--tcp needs --tls-cert, --tls-key and --tls-ca (mutual TLS only)\n${USAGE}`);
    const server = createTlsServer({
      cert: readFileSync(cert), key: readFileSync(key), ca: readFileSync(ca),
      requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3',
    }, (socket) => agent.serve(socket));
    server.on('tlsClientError', (err) => log(`TLS client refused: ${err.message}`));
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, host, resolve));
    const addr = server.address();
    log(`listening on ${typeof addr === 'object' && addr ? `${addr.address}:${addr.port}` : values.tcp} (mutual TLS)`);
    await agent.done;
    server.close();
  } else {
    const path = await findPort(values.port, 5000);
    const server = await servePort(path, (link) => agent.serve(link), stop.signal);
    log(`serving on ${path}`);
    server.served.catch((err: Error) => {
      log(`port ${path}: ${err.message}`);
      process.exit(1);
    });
    await agent.done;
    stop.abort();
    // The host closes the connection after a shutdown answer, which ends the blocked read. Should it not,
    // exiting would hang on the read's thread: kill ourselves instead.
    const idle = await Promise.race([server.idle().then(() => true), sleep(3000).then(() => false)]);
    if (!idle) {
      log('a read on the port is still blocked (the host did not disconnect); exiting with SIGKILL');
      process.kill(process.pid, 'SIGKILL');
    }
  }
  log('exiting');
}

function splitHostPort(value: string): [string, number] {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(value);
  if (!m) throw new Error(`--tcp wants HOST:PORT (got ${value})`);
  return [m[1]!, Number(m[2])];
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`vmlet-agent: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
