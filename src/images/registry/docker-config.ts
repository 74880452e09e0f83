// Reading Docker-style auth entries: the `auths` map of ~/.docker/config.json and of Kubernetes pull
// secrets (.dockerconfigjson; the legacy .dockercfg is the bare map), and matching their keys to a
// registry host the way docker (config.json) and the kubelet (pull secrets) do.
import { isDockerHub } from './reference.ts';

/** What a registry login is made of. Any of them may be absent (anonymous). */
export interface Credentials {
  username?: string;
  password?: string;
  /** An OAuth2 refresh token ("identitytoken"), exchanged at the token endpoint. */
  identityToken?: string;
  /** A bearer token sent to the registry as is ("registrytoken"). */
  registryToken?: string;
}

/** One `auths` entry as docker writes it. */
interface AuthEntry {
  auth?: unknown;
  username?: unknown;
  password?: unknown;
  identitytoken?: unknown;
  registrytoken?: unknown;
}

/** Turns an `auths` entry into Credentials; `auth` (base64 "user:pass") wins over username/password, as in docker. */
export function credentialsFromEntry(entry: unknown, where: string): Credentials {
  if (typeof entry !== 'object' || entry === null) throw new Error(`${where}: not an object`);
  const e = entry as AuthEntry;
  const creds: Credentials = {};
  if (typeof e.username === 'string' && e.username) creds.username = e.username;
  if (typeof e.password === 'string' && e.password) creds.password = e.password;
  if (typeof e.auth === 'string' && e.auth) {
    const decoded = Buffer.from(e.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) throw new Error(`${where}: "auth" is not base64 of "username:password"`);
    creds.username = decoded.slice(0, colon);
    creds.password = decoded.slice(colon + 1);
  }
  if (typeof e.identitytoken === 'string' && e.identitytoken) creds.identityToken = e.identitytoken;
  if (typeof e.registrytoken === 'string' && e.registrytoken) creds.registryToken = e.registrytoken;
  return creds;
}

/** The `auths` map of a config.json / .dockerconfigjson document (or a .dockercfg one, which is that map). */
export function authsOf(document: unknown, legacy: boolean, where: string): Map<string, Credentials> {
  if (typeof document !== 'object' || document === null) throw new Error(`${where}: not a JSON object`);
  const auths = legacy ? document : (document as { auths?: unknown }).auths;
  const out = new Map<string, Credentials>();
  if (auths === undefined) return out;
  if (typeof auths !== 'object' || auths === null) throw new Error(`${where}: "auths" is not an object`);
  for (const [key, entry] of Object.entries(auths)) out.set(key, credentialsFromEntry(entry, `${where}: "${key}"`));
  return out;
}

/**
 * docker's convertToHostname: "https://host:port/v1/" → "host:port". Docker Hub's spellings all become
 * "docker.io" so that a key written for one matches a pull from another.
 */
export function normalizeHost(key: string): string {
  const host = key.replace(/^[a-z]+:\/\//i, '').split('/')[0]!.toLowerCase();
  return isDockerHub(host) ? 'docker.io' : host;
}

/** The server URL docker keeps Hub credentials under (config.json keys, credential helpers). */
export const DOCKER_HUB_SERVER_URL = 'https://index.docker.io/v1/';

/**
 * How well a pull-secret key matches registry/repository, kubelet style (credentialprovider keyring):
 * the host may have "*" globs per label, the port must be equal, a path must be a prefix of the
 * repository ("/v1/" and "/v2/" count as no path). Larger is more specific; -1 is no match.
 */
export function kubeletKeyMatch(key: string, registry: string, repository: string): number {
  const withoutScheme = key.replace(/^[a-z]+:\/\//i, '');
  const slash = withoutScheme.indexOf('/');
  const keyHost = (slash < 0 ? withoutScheme : withoutScheme.slice(0, slash)).toLowerCase();
  let keyPath = slash < 0 ? '' : withoutScheme.slice(slash);
  if (/^\/v[12]\//.test(keyPath)) keyPath = keyPath.slice(3);
  keyPath = keyPath.replace(/^\/+|\/+$/g, '');
  if (!hostsMatch(keyHost, registry.toLowerCase())) return -1;
  if (keyPath && repository !== keyPath && !repository.startsWith(`${keyPath}/`)) return -1;
  // Exact hosts beat globs; among those, longer keys (host + path) are more specific, as in the kubelet.
  return (keyHost.includes('*') ? 0 : 1000) + keyHost.length + keyPath.length;
}

function hostsMatch(pattern: string, host: string): boolean {
  if (isDockerHub(pattern) || isDockerHub(host)) return isDockerHub(pattern) && isDockerHub(host);
  const [patternName = '', patternPort = ''] = splitPort(pattern);
  const [hostName = '', hostPort = ''] = splitPort(host);
  if (patternPort !== hostPort) return false;
  const p = patternName.split('.');
  const h = hostName.split('.');
  if (p.length !== h.length) return false;
  return p.every((label, i) => globLabel(label, h[i]!));
}

function splitPort(host: string): [string, string] {
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(host);
  return m ? [m[1]!, m[2] ?? ''] : [host, ''];
}

function globLabel(pattern: string, label: string): boolean {
  if (!pattern.includes('*')) return pattern === label;
  const re = new RegExp(`^${pattern.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^.]*')}$`);
  return re.test(label);
}
