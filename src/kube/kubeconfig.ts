// Loads the credentials vmlet uses to reach the API server: a kubeconfig file (explicit path, else
// $KUBECONFIG, else ~/.kube/config) or the in-cluster service account. vmlet reads kubeconfigs itself
// rather than through @kubernetes/client-node, whose import alone costs an idle agent ~70 MB of memory
// (BENCHMARKS.md); what is supported is what a node agent meets: CA file/data, client certificate and
// key file/data, bearer token or token file, basic auth, insecure-skip-tls-verify, tls-server-name, and
// exec credential plugins (client.authentication.k8s.io). Every problem is one line naming the file.
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { KubeconfigError } from './errors.ts';
import { ExecCredentialPlugin } from './exec-credential.ts';

export { KubeconfigError };

const IN_CLUSTER_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** How to reach and authenticate to one API server. */
export interface ClusterAccess {
  /** Where it came from, for messages: a file path or "in-cluster service account". */
  source: string;
  server: string;
  ca?: Buffer;
  insecureSkipTLSVerify: boolean;
  tlsServerName?: string;
  cert?: Buffer;
  key?: Buffer;
  /** The file the client certificate was read from (absolute), when it came from a file. */
  certFile?: string;
  /** A bearer token: fixed, re-read from a file (rotation), or from an exec plugin. */
  token?: () => Promise<string | undefined>;
  basic?: { username: string; password: string };
  /** An exec plugin may also hand out client certificates. */
  exec?: ExecCredentialPlugin;
}

interface RawKubeconfig {
  'current-context'?: string;
  clusters?: Array<{ name?: string; cluster?: Record<string, unknown> }>;
  users?: Array<{ name?: string; user?: Record<string, unknown> }>;
  contexts?: Array<{ name?: string; context?: { cluster?: string; user?: string } }>;
}

export function loadKubeconfig(explicit: string | undefined, env: NodeJS.ProcessEnv = process.env): ClusterAccess {
  const file = explicit ?? env.KUBECONFIG?.split(path.delimiter).find(Boolean);
  if (file) return fromFile(file);
  if (env.KUBERNETES_SERVICE_HOST && existsSync(path.join(IN_CLUSTER_DIR, 'token'))) return inCluster(env);
  const home = path.join(os.homedir(), '.kube', 'config');
  if (existsSync(home)) return fromFile(home);
  throw new KubeconfigError('no kubeconfig: pass --kubeconfig, set KUBECONFIG, run in a cluster, or create ~/.kube/config (or pass --pod-manifest-path to run static pods without an API server)');
}

/**
 * Whether cluster access is configured on purpose: a path, $KUBECONFIG, or the in-cluster service account.
 * With --pod-manifest-path and none of these vmlet runs standalone, as the kubelet does without
 * --kubeconfig: a personal ~/.kube/config is not taken as the node's identity then.
 */
export function clusterAccessConfigured(explicit: string | undefined, env: NodeJS.ProcessEnv = process.env): boolean {
  if (explicit ?? env.KUBECONFIG?.split(path.delimiter).find(Boolean)) return true;
  return Boolean(env.KUBERNETES_SERVICE_HOST && existsSync(path.join(IN_CLUSTER_DIR, 'token')));
}

function fromFile(file: string): ClusterAccess {
  if (!existsSync(file)) throw new KubeconfigError(`kubeconfig ${file} does not exist`);
  let raw: RawKubeconfig;
  try {
    const doc: unknown = parseYaml(readFileSync(file, 'utf8'));
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new Error('not a YAML mapping');
    raw = doc;
  } catch (err) {
    throw new KubeconfigError(`kubeconfig ${file} is not a valid kubeconfig: ${(err as Error).message.split('\n')[0]}`);
  }
  const dir = path.dirname(path.resolve(file));
  const contextName = raw['current-context'];
  if (!contextName) throw new KubeconfigError(`kubeconfig ${file} has no current context`);
  const context = raw.contexts?.find((c) => c.name === contextName)?.context;
  if (!context) throw new KubeconfigError(`kubeconfig ${file}: current context "${contextName}" is not defined`);
  const cluster = raw.clusters?.find((c) => c.name === context.cluster)?.cluster;
  if (!cluster) throw new KubeconfigError(`kubeconfig ${file}: context "${contextName}" names cluster "${context.cluster ?? ''}", which is not defined`);
  const user = raw.users?.find((u) => u.name === context.user)?.user ?? {};
  if (context.user && !raw.users?.some((u) => u.name === context.user)) {
    throw new KubeconfigError(`kubeconfig ${file}: context "${contextName}" names user "${context.user}", which is not defined`);
  }

  const server = str(cluster.server);
  if (!server) throw new KubeconfigError(`kubeconfig ${file}: cluster "${context.cluster}" has no server`);
  try {
    const url = new URL(server);
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error();
  } catch {
    throw new KubeconfigError(`kubeconfig ${file}: server "${server}" is not an http(s) URL`);
  }
  const material = (what: string, dataKey: string, fileKey: string, from: Record<string, unknown>): Buffer | undefined => {
    const data = str(from[dataKey]);
    if (data) return Buffer.from(data, 'base64');
    const ref = str(from[fileKey]);
    if (!ref) return undefined;
    const resolved = path.resolve(dir, ref);
    try {
      return readFileSync(resolved);
    } catch {
      throw new KubeconfigError(`kubeconfig ${file}: ${what} file ${resolved} cannot be read`);
    }
  };
  const access: ClusterAccess = {
    source: file,
    server: server.replace(/\/$/, ''),
    ca: material('certificate-authority', 'certificate-authority-data', 'certificate-authority', cluster),
    insecureSkipTLSVerify: cluster['insecure-skip-tls-verify'] === true,
    tlsServerName: str(cluster['tls-server-name']),
    cert: material('client-certificate', 'client-certificate-data', 'client-certificate', user),
    key: material('client-key', 'client-key-data', 'client-key', user),
  };
  if (!str(user['client-certificate-data']) && str(user['client-certificate'])) access.certFile = path.resolve(dir, str(user['client-certificate'])!);
  if (Boolean(access.cert) !== Boolean(access.key)) {
    throw new KubeconfigError(`kubeconfig ${file}: user "${context.user}" has a client certificate without a key, or a key without a certificate`);
  }
  const token = str(user.token);
  const tokenFile = str(user.tokenFile) ?? str(user['token-file']);
  if (token) access.token = async () => token;
  else if (tokenFile) access.token = fileToken(path.resolve(dir, tokenFile), file);
  if (str(user.username) && str(user.password)) access.basic = { username: str(user.username)!, password: str(user.password)! };
  if (user.exec && typeof user.exec === 'object') {
    access.exec = new ExecCredentialPlugin(user.exec, file, dir);
    access.token = () => access.exec!.token();
  }
  if (user['auth-provider']) {
    throw new KubeconfigError(`kubeconfig ${file}: user "${context.user}" uses an auth-provider, which vmlet does not support; use an exec plugin, a token or a client certificate`);
  }
  return access;
}

function inCluster(env: NodeJS.ProcessEnv): ClusterAccess {
  const host = env.KUBERNETES_SERVICE_HOST!;
  const port = env.KUBERNETES_SERVICE_PORT ?? '443';
  const server = `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
  return {
    source: 'in-cluster service account',
    server,
    ca: readFileSync(path.join(IN_CLUSTER_DIR, 'ca.crt')),
    insecureSkipTLSVerify: false,
    token: fileToken(path.join(IN_CLUSTER_DIR, 'token'), 'in-cluster service account'),
  };
}

/** A token file is read again at most once a minute, so that a rotated token is picked up. */
function fileToken(tokenPath: string, source: string): () => Promise<string> {
  let cached: { token: string; at: number } | undefined;
  return async () => {
    if (cached && Date.now() - cached.at < 60_000) return cached.token;
    try {
      cached = { token: readFileSync(tokenPath, 'utf8').trim(), at: Date.now() };
    } catch {
      throw new KubeconfigError(`${source}: token file ${tokenPath} cannot be read`);
    }
    return cached.token;
  };
}

function str(value: unknown): string | undefined {
  return typeof value === 'string' && value !== '' ? value : undefined;
}
