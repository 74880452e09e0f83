// Builds the `Config` from its three sources — a YAML file, VMLET_* environment variables and command-line
// flags (later ones win) — and turns any validation failure into one line that names the field, where the
// value came from, and what is allowed.
import { readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import type { z } from 'zod';
import { configSchema, TAINT_EFFECTS, type Config } from './schema.ts';

/** A configuration problem the user must fix; its message is one line, ready to print. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

// bool: a flag that may stand alone (--flag means true) or take true/false.
type Kind = 'string' | 'bool' | 'int' | 'list' | 'labels' | 'taints';

/** One setting that can come from a flag or an environment variable, addressed by its path in the schema. */
export interface Setting {
  path: string;
  flag: string;
  env: string;
  kind: Kind;
  help: string;
}

export const SETTINGS: Setting[] = [
  { path: 'nodeName', flag: 'node-name', env: 'VMLET_NODE_NAME', kind: 'string', help: 'name of the Node (default: host name)' },
  { path: 'kubeconfig', flag: 'kubeconfig', env: 'VMLET_KUBECONFIG', kind: 'string', help: 'kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)' },
  { path: 'bootstrapKubeconfig', flag: 'bootstrap-kubeconfig', env: 'VMLET_BOOTSTRAP_KUBECONFIG', kind: 'string', help: 'kubeconfig (bootstrap token) to request the node\'s client certificate with when --kubeconfig is missing or its certificate expired (TLS bootstrapping)' },
  { path: 'certDir', flag: 'cert-dir', env: 'VMLET_CERT_DIR', kind: 'string', help: 'where certificates from CSRs are kept (default <image-cache-dir>/pki)' },
  { path: 'serverTlsBootstrap', flag: 'server-tls-bootstrap', env: 'VMLET_SERVER_TLS_BOOTSTRAP', kind: 'bool', help: 'true: request the kubelet API serving certificate with a kubelet-serving CSR, to be approved (default false: self-signed)' },
  { path: 'logLevel', flag: 'log-level', env: 'VMLET_LOG_LEVEL', kind: 'string', help: 'trace, debug, info, warn, error, fatal or silent' },
  { path: 'hypervisor', flag: 'hypervisor', env: 'VMLET_HYPERVISOR', kind: 'string', help: 'auto, qemu or vz' },
  { path: 'imageCacheDir', flag: 'image-cache-dir', env: 'VMLET_IMAGE_CACHE_DIR', kind: 'string', help: 'image cache directory' },
  { path: 'directIo', flag: 'direct-io', env: 'VMLET_DIRECT_IO', kind: 'bool', help: 'false: image pulls write disks through the page cache instead of with O_DIRECT (Linux; default true)' },
  { path: 'vmDir', flag: 'vm-dir', env: 'VMLET_VM_DIR', kind: 'string', help: 'VM working directories (default <image-cache-dir>/vms)' },
  { path: 'podManifestPath', flag: 'pod-manifest-path', env: 'VMLET_POD_MANIFEST_PATH', kind: 'string', help: 'directory of static pod manifests run as VMs (without a kubeconfig: standalone, no API server)' },
  { path: 'localSocket', flag: 'socket', env: 'VMLET_SOCKET', kind: 'string', help: 'unix socket of the local API for vmlet ps/logs/exec (default <image-cache-dir>/vmlet.sock)' },
  { path: 'kubeletPort', flag: 'kubelet-port', env: 'VMLET_KUBELET_PORT', kind: 'int', help: 'kubelet API port published in the Node (default 10250)' },
  { path: 'kubeletAddress', flag: 'kubelet-address', env: 'VMLET_KUBELET_ADDRESS', kind: 'string', help: 'address the kubelet API listens on (default 0.0.0.0)' },
  { path: 'kubeletTlsCertFile', flag: 'kubelet-tls-cert-file', env: 'VMLET_KUBELET_TLS_CERT_FILE', kind: 'string', help: 'kubelet API serving certificate (default: self-signed)' },
  { path: 'kubeletTlsKeyFile', flag: 'kubelet-tls-key-file', env: 'VMLET_KUBELET_TLS_KEY_FILE', kind: 'string', help: 'key of --kubelet-tls-cert-file' },
  { path: 'kubeletClientCaFile', flag: 'kubelet-client-ca-file', env: 'VMLET_KUBELET_CLIENT_CA_FILE', kind: 'string', help: 'CA bundle for kubelet API client certificates (default: none, tokens only)' },
  { path: 'kubeletAnonymousAuth', flag: 'kubelet-anonymous-auth', env: 'VMLET_KUBELET_ANONYMOUS_AUTH', kind: 'string', help: 'true: requests without credentials are system:anonymous (default false)' },
  { path: 'kubeletAuthorizationMode', flag: 'kubelet-authorization-mode', env: 'VMLET_KUBELET_AUTHORIZATION_MODE', kind: 'string', help: 'Webhook (SubjectAccessReview, default) or AlwaysAllow' },
  { path: 'adminAddress', flag: 'admin-address', env: 'VMLET_ADMIN_ADDRESS', kind: 'string', help: 'host:port of /healthz, /readyz, /metrics ("" = off)' },
  { path: 'startupTimeout', flag: 'startup-timeout', env: 'VMLET_STARTUP_TIMEOUT', kind: 'string', help: 'how long to try reaching the API server at start (default 30s)' },
  { path: 'requestTimeout', flag: 'request-timeout', env: 'VMLET_REQUEST_TIMEOUT', kind: 'string', help: 'deadline of one API request (default 10s)' },
  { path: 'crashLoopBackOffInitial', flag: 'crash-loop-back-off-initial', env: 'VMLET_CRASH_LOOP_BACK_OFF_INITIAL', kind: 'string', help: 'wait before the second restart of a crashing container or VM, doubled each time after (default 10s)' },
  { path: 'crashLoopBackOffMax', flag: 'crash-loop-back-off-max', env: 'VMLET_CRASH_LOOP_BACK_OFF_MAX', kind: 'string', help: 'the longest crash-loop back-off (the kubelet\'s crashLoopBackOff.maxContainerRestartPeriod; default 5m)' },
  { path: 'hostPathPrefixes', flag: 'host-path-prefix', env: 'VMLET_HOST_PATH_PREFIXES', kind: 'list', help: 'host directory that hostPath volumes may name, itself or below (repeatable, or comma-separated; default none: hostPath refused)' },
  { path: 'sidecarEngine', flag: 'sidecar-engine', env: 'VMLET_SIDECAR_ENGINE', kind: 'string', help: 'Docker-API engine for the sidecar containers of hybrid pods: socket path, unix:///path or tcp://host:port (default: DOCKER_HOST, else a well-known socket)' },
  { path: 'node.ip', flag: 'node-ip', env: 'VMLET_NODE_IP', kind: 'string', help: "the Node's InternalIP (default: first non-loopback IPv4)" },
  { path: 'node.vmSlots', flag: 'vm-slots', env: 'VMLET_VM_SLOTS', kind: 'int', help: 'VMs that may run at once (default 2)' },
  { path: 'node.maxPods', flag: 'max-pods', env: 'VMLET_MAX_PODS', kind: 'int', help: "the Node's pods capacity (default 110)" },
  { path: 'node.guestOSes', flag: 'guest-os', env: 'VMLET_GUEST_OS', kind: 'list', help: 'guest OSes offered, comma-separated: linux, macos' },
  { path: 'node.labels', flag: 'node-label', env: 'VMLET_NODE_LABELS', kind: 'labels', help: 'extra Node label key=value (repeatable, or comma-separated)' },
  { path: 'node.taints', flag: 'register-with-taint', env: 'VMLET_REGISTER_WITH_TAINTS', kind: 'taints', help: 'taint key[=value]:Effect set at registration (repeatable); "none" for no taint' },
];

export interface ConfigSources {
  /** Path of a YAML configuration file, if any. */
  file?: string;
  /** Environment (normally process.env). */
  env?: NodeJS.ProcessEnv;
  /** Flag values by flag name (as commander gives them, camelCased or not); repeatable flags as arrays. */
  flags?: Record<string, unknown>;
}

/** Reads, merges and validates the configuration. Throws ConfigError with a one-line message. */
export function loadConfig(sources: ConfigSources): Config {
  const raw: Record<string, unknown> = {};
  const origin = new Map<string, string>();

  if (sources.file) {
    const fromFile = readConfigFile(sources.file);
    Object.assign(raw, fromFile);
    for (const key of leafPaths(fromFile)) origin.set(key, `in ${sources.file}`);
  }
  for (const setting of SETTINGS) {
    const envValue = sources.env?.[setting.env];
    if (envValue !== undefined && envValue !== '') {
      setPath(raw, setting.path, convert(setting, [envValue]));
      origin.set(setting.path, `from ${setting.env}`);
    }
    const flagValue = sources.flags?.[camel(setting.flag)] ?? sources.flags?.[setting.flag];
    if (flagValue !== undefined) {
      setPath(raw, setting.path, convert(setting, Array.isArray(flagValue) ? flagValue.map((v) => `${v as string}`) : [`${flagValue as string}`]));
      origin.set(setting.path, `from --${setting.flag}`);
    }
  }

  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new ConfigError(`invalid configuration: ${describeIssue(issue, raw, origin)}`);
  }
  return result.data;
}

function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}` : '';
    throw new ConfigError(`config file ${file} is not valid YAML${where}: ${(err as Error).message.split('\n')[0]}`);
  }
  if (doc == null) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError(`config file ${file} must hold a YAML mapping of settings`);
  return doc as Record<string, unknown>;
}

/** Converts flag/env text to the shape the schema expects; leaves unparsable text as is for the schema to reject. */
function convert(setting: Setting, values: string[]): unknown {
  const last = values[values.length - 1]!;
  switch (setting.kind) {
    case 'string':
    case 'bool':
      return last;
    case 'int':
      return /^[-+]?\d+$/.test(last.trim()) ? Number(last) : last;
    case 'list':
      return values.flatMap((v) => v.split(',')).map((v) => v.trim()).filter(Boolean);
    case 'labels': {
      const labels: Record<string, string> = {};
      for (const pair of values.flatMap((v) => v.split(','))) {
        if (!pair.trim()) continue;
        const eq = pair.indexOf('=');
        if (eq < 0) throw new ConfigError(`invalid configuration: --${setting.flag} "${pair}" must be key=value`);
        labels[pair.slice(0, eq).trim()] = pair.slice(eq + 1).trim();
      }
      return labels;
    }
    case 'taints':
      if (values.length === 1 && ['none', ''].includes(last.trim())) return [];
      return values.flatMap((v) => v.split(',')).filter((v) => v.trim()).map((v) => parseTaint(setting, v.trim()));
  }
}

/** Parses `key[=value]:Effect`, the kubelet's --register-with-taints syntax. */
function parseTaint(setting: Setting, text: string): unknown {
  const colon = text.lastIndexOf(':');
  const effect = colon < 0 ? '' : text.slice(colon + 1);
  if (!(TAINT_EFFECTS as readonly string[]).includes(effect)) {
    throw new ConfigError(`invalid configuration: --${setting.flag} "${text}" must be key[=value]:Effect with Effect one of ${TAINT_EFFECTS.join(', ')}`);
  }
  const [key, value] = text.slice(0, colon).split('=', 2);
  return value === undefined ? { key, effect } : { key, value, effect };
}

function describeIssue(issue: z.core.$ZodIssue, raw: Record<string, unknown>, origin: Map<string, string>): string {
  const keyPath = issue.path.map(String);
  if (issue.code === 'unrecognized_keys') {
    const where = keyPath.length ? `${keyPath.join('.')}.` : '';
    const file = [...origin.values()].find((o) => o.startsWith('in ')) ?? '';
    return `unknown setting ${issue.keys.map((k) => `"${where}${k}"`).join(', ')}${file ? ` ${file}` : ''}`;
  }
  // A record key (a label name) is reported with the key itself as the last path element.
  const field = keyPath.join('.');
  const settingPath = SETTINGS.find((s) => field === s.path || field.startsWith(`${s.path}.`))?.path ?? field;
  const from = origin.get(settingPath) ?? origin.get(field);
  const got = getPath(raw, keyPath);
  let what: string;
  if (issue.code === 'invalid_value') {
    what = `must be one of ${issue.values.map(String).join(', ')}`;
  } else if (issue.code === 'invalid_key') {
    what = `label key "${keyPath[keyPath.length - 1]}" ${issue.issues[0]?.message ?? 'is invalid'}`;
  } else if (issue.code === 'invalid_type') {
    const wantsInt = issue.expected === 'int' || SETTINGS.some((s) => s.path === field && s.kind === 'int');
    what = `expected ${wantsInt ? 'an integer' : issue.expected}`;
  } else if (issue.code === 'too_small') {
    what = `must be at least ${String(issue.minimum)}`;
  } else if (issue.code === 'too_big') {
    what = `must be at most ${String(issue.maximum)}`;
  } else {
    what = issue.message;
  }
  const gotText = got === undefined || issue.code === 'invalid_key' ? '' : ` (got ${JSON.stringify(got)}${from ? ` ${from}` : ''})`;
  return `${field}: ${what}${gotText}`;
}

function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

function setPath(target: Record<string, unknown>, dotted: string, value: unknown): void {
  const keys = dotted.split('.');
  let node = target;
  for (const key of keys.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  const last = keys[keys.length - 1]!;
  const previous = node[last];
  // Labels merge across sources; every other setting is replaced by the later source.
  const isMap = (v: unknown) => typeof v === 'object' && v !== null && !Array.isArray(v);
  node[last] = isMap(previous) && isMap(value) ? { ...(previous as object), ...(value as object) } : value;
}

function getPath(target: unknown, keys: string[]): unknown {
  let node = target;
  for (const key of keys) {
    if (typeof node !== 'object' || node === null) return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return node;
}

function leafPaths(obj: Record<string, unknown>, prefix = ''): string[] {
  return Object.entries(obj).flatMap(([key, value]) =>
    typeof value === 'object' && value !== null && !Array.isArray(value) && prefix === ''
      ? [`${key}`, ...leafPaths(value as Record<string, unknown>, `${key}.`)]
      : [`${prefix}${key}`],
  );
}
