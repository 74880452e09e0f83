// SpdyConnection against moby/spdystream itself — the library the API server and client-go speak SPDY
// with — by way of tools/spdy-client (a small Go program). The binary is built once per source hash into
// ~/.cache/vmlet/spdy-client-<hash>/. Skipped, saying so, where Go is not installed.
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { SpdyConnection, type SpdyStream } from '../../../src/kubelet/spdy/connection.ts';
import { RstStatus } from '../../../src/kubelet/spdy/frames.ts';

const run = promisify(execFile);
const TOOL_DIR = fileURLToPath(new URL('../../../tools/spdy-client/', import.meta.url));

function goAvailable(): boolean {
  return spawnSync('go', ['version'], { stdio: 'ignore' }).status === 0;
}

/** The built client, compiled first if this version of its sources has not been. */
async function spdyClient(): Promise<string> {
  const hash = createHash('sha256');
  for (const file of ['go.mod', 'go.sum', 'main.go']) hash.update(await readFile(join(TOOL_DIR, file)));
  const cache = process.env.VMLET_CACHE_DIR ?? join(homedir(), '.cache', 'vmlet');
  const dir = join(cache, `spdy-client-${hash.digest('hex').slice(0, 16)}`);
  const binary = join(dir, 'spdy-client');
  if (existsSync(binary)) return binary;
  await mkdir(dir, { recursive: true });
  const partial = `${binary}.partial-${process.pid}`;
  try {
    await run('go', ['build', '-o', partial, '.'], {
      cwd: TOOL_DIR,
      env: { ...process.env, GOFLAGS: '-mod=mod' },
      timeout: 300_000,
    });
    await rename(partial, binary); // atomic: a concurrent or killed build never leaves half a binary
  } finally {
    await rm(partial, { force: true });
  }
  return binary;
}

test('moby/spdystream opens streams on a SpdyConnection, echoes data, answers PINGs, and sees resets', { timeout: 360_000 }, async (t) => {
  if (!goAvailable()) {
    t.skip('go is not installed: the spdystream interop check needs it to build tools/spdy-client');
    return;
  }
  const binary = await spdyClient();

  const connections: SpdyConnection[] = [];
  const seen: { type: string; index?: string }[] = [];
  const pingTimes: number[] = [];
  const pingErrors: string[] = [];
  const server = createServer((socket: Socket) => {
    const conn = new SpdyConnection(socket);
    connections.push(conn);
    conn.on('stream', (stream: SpdyStream) => {
      seen.push({ type: stream.headers.streamtype ?? '', index: stream.headers['x-stream-index'] });
      if (stream.headers.streamtype === 'reset') {
        stream.reset(RstStatus.REFUSED_STREAM);
        return;
      }
      // spdystream must answer the server's PINGs too; then echo everything, with backpressure.
      conn.ping().then(
        (ms) => {
          pingTimes.push(ms);
          stream.reply();
          stream.pipe(stream);
        },
        (err: Error) => {
          pingErrors.push(err.message);
          stream.reset(RstStatus.INTERNAL_ERROR);
        },
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  try {
    const { stdout } = await run(binary, ['-addr', `127.0.0.1:${port}`, '-streams', '4', '-bytes', '300000'], { timeout: 60_000 });
    assert.equal(stdout.trim(), 'ok');
    assert.equal(connections.length, 1);
    const conn = connections[0]!;
    await conn.closed; // the client's GOAWAY with no streams left closes the connection
    assert.equal(conn.openStreams, 0);
    assert.deepEqual(
      seen.filter((s) => s.type === 'echo').map((s) => s.index).sort(),
      ['0', '1', '2', '3'],
    );
    assert.deepEqual(seen.at(-1), { type: 'reset', index: undefined });
    assert.deepEqual(pingErrors, []);
    assert.equal(pingTimes.length, 4, 'spdystream echoed every server PING');
  } finally {
    for (const conn of connections) conn.destroy();
    await new Promise((resolve) => server.close(resolve));
  }
});
