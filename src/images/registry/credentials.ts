// Where registry credentials come from, in order: the Kubernetes image pull secrets the caller hands in
// (kubelet matching), then docker's config.json (credHelpers, credsStore, auths; docker matching).
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { runCredentialHelper } from './credential-helper.ts';
import { authsOf, DOCKER_HUB_SERVER_URL, kubeletKeyMatch, normalizeHost, type Credentials } from './docker-config.ts';
import { RegistryError } from './errors.ts';

export type { Credentials } from './docker-config.ts';

/** Anything that can answer "who am I at this registry?"; the client asks it on a 401 challenge. */
export interface CredentialProvider {
  get(registry: string, repository: string): Promise<Credentials | undefined>;
}

/** The parts of a Kubernetes Secret (core/v1) that carry registry logins; `data` values are base64. */
export interface PullSecret {
  metadata?: { name?: string; namespace?: string };
  type?: string;
  data?: Record<string, string>;
}

export const DOCKER_CONFIG_JSON_TYPE = 'kubernetes.io/dockerconfigjson';
export const DOCKER_CFG_TYPE = 'kubernetes.io/dockercfg';

export interface CredentialStoreOptions {
  pullSecrets?: PullSecret[];
  /** docker's config.json; null reads none. Default: ~/.docker/config.json. */
  dockerConfigPath?: string | null;
  /** Deadline of one credential helper run. Default 10 s. */
  helperTimeoutMs?: number;
  /** Environment of credential helpers (their PATH is where they are looked up). Default: this process's. */
  helperEnv?: NodeJS.ProcessEnv;
  logger?: Logger;
}

interface SecretEntry {
  key: string;
  credentials: Credentials;
  source: string;
}

export class CredentialStore implements CredentialProvider {
  private readonly secrets: SecretEntry[];
  private readonly dockerConfigPath: string | null;

  /** Reads the pull secrets now: a malformed one throws (InvalidCredentials), as the kubelet fails such a pull. */
  constructor(private readonly opts: CredentialStoreOptions = {}) {
    this.secrets = (opts.pullSecrets ?? []).flatMap((s) => secretEntries(s));
    this.dockerConfigPath =
      opts.dockerConfigPath === undefined ? join(homedir(), '.docker', 'config.json') : opts.dockerConfigPath;
  }

  /** The same docker config with other pull secrets (e.g. a pod's). */
  withPullSecrets(pullSecrets: PullSecret[]): CredentialStore {
    return new CredentialStore({ ...this.opts, pullSecrets });
  }

  async get(registry: string, repository: string): Promise<Credentials | undefined> {
    let best: { score: number; entry: SecretEntry } | undefined;
    for (const entry of this.secrets) {
      const score = kubeletKeyMatch(entry.key, registry, repository);
      if (score >= 0 && (!best || score > best.score)) best = { score, entry };
    }
    if (best) {
      this.opts.logger?.debug({ registry, source: best.entry.source }, 'registry credentials from a pull secret');
      return best.entry.credentials;
    }
    return this.fromDockerConfig(registry);
  }

  private async fromDockerConfig(registry: string): Promise<Credentials | undefined> {
    const path = this.dockerConfigPath;
    if (path === null) return undefined;
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw invalid(`cannot read docker config ${path}: ${(err as Error).message}`, err);
    }
    let config: { credHelpers?: unknown; credsStore?: unknown };
    let auths: Map<string, Credentials>;
    try {
      config = JSON.parse(text) as typeof config;
      auths = authsOf(config, false, path);
    } catch (err) {
      throw invalid(`docker config ${path} is not valid: ${(err as Error).message}`, err);
    }
    const host = normalizeHost(registry);
    const helpers = typeof config.credHelpers === 'object' && config.credHelpers !== null ? config.credHelpers : {};
    const helperKey = Object.keys(helpers).find((k) => normalizeHost(k) === host);
    const helper = helperKey === undefined ? config.credsStore : (helpers as Record<string, unknown>)[helperKey];
    if (typeof helper === 'string' && helper) {
      // docker hands helpers the server URL it stored the login under: Hub's legacy URL, else the host.
      const serverUrl = host === 'docker.io' ? DOCKER_HUB_SERVER_URL : (helperKey ?? registry);
      const creds = await runCredentialHelper(helper, serverUrl, {
        timeoutMs: this.opts.helperTimeoutMs ?? 10_000,
        env: this.opts.helperEnv,
      });
      this.opts.logger?.debug({ registry, helper, found: creds !== undefined }, 'registry credentials from a helper');
      // A credsStore that knows nothing falls back to `auths`, as docker's does; a credHelpers entry is final.
      if (creds || helperKey !== undefined) return creds;
    }
    for (const [key, creds] of auths) {
      if (normalizeHost(key) === host) return creds;
    }
    return undefined;
  }
}

function invalid(detail: string, error?: unknown): RegistryError {
  return new RegistryError({ reason: 'InvalidCredentials', detail, error });
}

function secretEntries(secret: PullSecret): SecretEntry[] {
  const name = secret.metadata?.name
    ? `secret ${secret.metadata.namespace ? `${secret.metadata.namespace}/` : ''}${secret.metadata.name}`
    : 'pull secret';
  // The kubelet reads a key only from a secret of the matching type.
  const key = secret.type === DOCKER_CONFIG_JSON_TYPE ? '.dockerconfigjson' : secret.type === DOCKER_CFG_TYPE ? '.dockercfg' : undefined;
  if (key === undefined) {
    throw invalid(`${name} has type "${secret.type ?? ''}", not ${DOCKER_CONFIG_JSON_TYPE} or ${DOCKER_CFG_TYPE}`);
  }
  const data = secret.data?.[key];
  if (!data) throw invalid(`${name} has no "${key}" data`);
  try {
    const document: unknown = JSON.parse(Buffer.from(data, 'base64').toString('utf8'));
    const auths = authsOf(document, key === '.dockercfg', `${name} ${key}`);
    return [...auths].map(([k, credentials]) => ({ key: k, credentials, source: name }));
  } catch (err) {
    throw invalid(`${name}: ${key} is not valid: ${(err as Error).message}`, err);
  }
}
