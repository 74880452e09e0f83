// A real OCI/Docker registry (Debian's docker-registry, distribution v2.8) for tests: loopback port,
// filesystem storage in a temp dir, optionally TLS from a test CA and htpasswd (bcrypt) basic auth.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { stringify } from 'yaml';
import { runChecked } from './exec.ts';
import { httpGet, tlsAgent } from './https.ts';
import { CertificateAuthority, writeCertificate } from './pki.ts';
import { createFixtureDir, freePort, removeFixtureDir, spawnTracked, stopProcess, waitFor } from './processes.ts';
import { ensureTestDependencies, type TestBinaries } from './setup.ts';

export interface RegistryOptions {
  /** Serve HTTPS with a certificate for 127.0.0.1/localhost from `ca` (or a fresh test CA). */
  tls?: boolean;
  /** Require HTTP basic auth with this one user. */
  auth?: { username: string; password: string };
  /** CA to issue the serving certificate from, e.g. a cluster's, so one CA file trusts both. */
  ca?: CertificateAuthority;
  binaries?: TestBinaries;
}

export interface Registry {
  /** http://127.0.0.1:<port> or https://127.0.0.1:<port>. */
  url: string;
  /** "127.0.0.1:<port>", as it appears in image references. */
  host: string;
  /** PEM file of the CA that signed the serving certificate (TLS only). */
  caFile?: string;
  /** The CA certificate itself (PEM, TLS only). */
  caCert?: string;
  username?: string;
  password?: string;
  dir: string;
  logFile: string;
  /** The docker-registry process (for benchmarks that count its CPU time). */
  pid: number;
  stop(): Promise<void>;
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  const binaries = opts.binaries ?? (await ensureTestDependencies());
  const dir = await createFixtureDir('vmlet-registry-');
  try {
    const port = await freePort();
    const host = `127.0.0.1:${port}`;
    const http: Record<string, unknown> = {
      addr: host,
      // Signs upload state; random per registry so the startup warning about a default goes away.
      secret: randomBytes(16).toString('hex'),
      headers: { 'X-Content-Type-Options': ['nosniff'] },
      // No `debug` section: that listener (pprof, prometheus) would be one more port to pick.
    };
    let ca: CertificateAuthority | undefined;
    let caFile: string | undefined;
    if (opts.tls) {
      ca = opts.ca ?? (await CertificateAuthority.create('vmlet-test-registry-ca'));
      caFile = join(dir, 'ca.crt');
      await writeFile(caFile, ca.cert);
      const serving = await writeCertificate(dir, 'registry', await ca.issueServingCert(['127.0.0.1', 'localhost', '::1']));
      http.tls = { certificate: serving.certFile, key: serving.keyFile };
    }
    const config: Record<string, unknown> = {
      version: 0.1,
      log: { level: 'info', formatter: 'text' },
      storage: { filesystem: { rootdirectory: join(dir, 'data') }, delete: { enabled: true } },
      http,
    };
    if (opts.auth) {
      // bcrypt (-B) is the only hash the registry accepts; -b takes the password from argv, -n prints.
      const { stdout } = await runChecked(binaries.htpasswd, ['-Bbn', opts.auth.username, opts.auth.password]);
      const htpasswdFile = join(dir, 'htpasswd');
      await writeFile(htpasswdFile, stdout.trim() + '\n', { mode: 0o600 });
      config.auth = { htpasswd: { realm: 'vmlet-test', path: htpasswdFile } };
    }
    const configFile = join(dir, 'config.yml');
    await writeFile(configFile, stringify(config));
    // REGISTRY_* variables override the config file field by field; ours must be the whole truth.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_')));
    const logFile = join(dir, 'registry.log');
    const proc = spawnTracked('docker-registry', binaries.registry, ['serve', configFile], { logFile, env });
    const url = `${opts.tls ? 'https' : 'http'}://${host}`;
    const agent = ca ? tlsAgent({ ca: ca.cert }) : undefined;
    const expected = opts.auth ? 401 : 200;
    try {
      await waitFor(
        `registry ${url}/v2/ to answer ${expected}`,
        async () => ((await httpGet(`${url}/v2/`, { agent, timeoutMs: 2000 })).status === expected ? true : undefined),
        { timeoutMs: 30_000, process: proc },
      );
    } catch (err) {
      await stopProcess(proc);
      throw err;
    } finally {
      await agent?.close();
    }
    return {
      url,
      host,
      caFile,
      caCert: ca?.cert,
      username: opts.auth?.username,
      password: opts.auth?.password,
      dir,
      logFile,
      pid: proc.pid,
      stop: async () => {
        await stopProcess(proc);
        await removeFixtureDir(dir);
      },
    };
  } catch (err) {
    await removeFixtureDir(dir);
    throw err;
  }
}
