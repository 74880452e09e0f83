// Starts a single-member etcd for a test cluster: loopback only, plain HTTP (nothing but the
// apiserver on this host talks to it), data under the fixture dir.
import { join } from 'node:path';
import { httpGet } from './https.ts';
import { freePort, spawnTracked, stopProcess, waitFor, type TrackedProcess } from './processes.ts';

export interface Etcd {
  /** Client URL, e.g. http://127.0.0.1:41234, for --etcd-servers. */
  url: string;
  process: TrackedProcess;
  stop(): Promise<void>;
}

export async function startEtcd(etcdBinary: string, dir: string): Promise<Etcd> {
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const url = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const args = [
    '--name=default',
    `--data-dir=${join(dir, 'etcd-data')}`,
    `--listen-client-urls=${url}`,
    `--advertise-client-urls=${url}`,
    `--listen-peer-urls=${peer}`,
    `--initial-advertise-peer-urls=${peer}`,
    `--initial-cluster=default=${peer}`,
    '--initial-cluster-state=new',
    '--initial-cluster-token=vmlet-test',
    '--logger=zap',
    '--log-outputs=stderr',
  ];
  // ETCD_* variables in our environment would silently override these flags; etcd 3.4 even refuses
  // to start when a flag and its variable are both set.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ETCD_')));
  const proc = spawnTracked('etcd', etcdBinary, args, { logFile: join(dir, 'etcd.log'), env });
  const etcd: Etcd = { url, process: proc, stop: () => stopProcess(proc) };
  try {
    await waitFor(
      `etcd health at ${url}/health`,
      async () => ((await httpGet(`${url}/health`, { timeoutMs: 2000 })).body.includes('"true"') ? true : undefined),
      { timeoutMs: 30_000, process: proc },
    );
  } catch (err) {
    await etcd.stop();
    throw err;
  }
  return etcd;
}
