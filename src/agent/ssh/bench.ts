// A hook for benchmarks: how long `true` takes over SSH on a connection that is already open, against a
// new connection each time (TCP + key exchange + login + exec), which is what a client without
// connection reuse (Agoda's after a drop, or `ssh host true`) pays per command.
import { performance } from 'node:perf_hooks';
import { SshConnection, type SshConnectOptions } from './client.ts';

export interface SshTrueTimings {
  /** Each run of `true` on one open connection (after one warm-up run), in ms. */
  reusedMs: number[];
  /** Each connect + `true` + close, in ms. */
  newConnectionMs: number[];
}

export async function timeTrueOverSsh(opts: SshConnectOptions, rounds = 10): Promise<SshTrueTimings> {
  const runTrue = async (conn: SshConnection): Promise<void> => {
    const r = await conn.run({ argv: ['true'] });
    if (r.exitCode !== 0) throw new Error(`true over SSH exited with ${r.exitCode}`);
  };
  const reusedMs: number[] = [];
  const conn = await SshConnection.connect(opts);
  try {
    await runTrue(conn);
    for (let i = 0; i < rounds; i++) {
      const t = performance.now();
      await runTrue(conn);
      reusedMs.push(performance.now() - t);
    }
  } finally {
    conn.close();
  }
  const newConnectionMs: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t = performance.now();
    const c = await SshConnection.connect(opts);
    try {
      await runTrue(c);
    } finally {
      c.close();
    }
    newConnectionMs.push(performance.now() - t);
  }
  return { reusedMs, newConnectionMs };
}
