// The configuration of `vmlet run`: one zod schema, the single source of field names, defaults and limits.
// Everything below the CLI receives the parsed `Config` and never reads the environment itself.
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { parseDuration } from './duration.ts';
import { parseQuantity } from '../kube/quantity.ts';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export const HYPERVISORS = ['auto', 'qemu', 'vz'] as const;
export const GUEST_OSES = ['linux', 'macos'] as const;
export const TAINT_EFFECTS = ['NoSchedule', 'PreferNoSchedule', 'NoExecute'] as const;
export const KUBELET_AUTHORIZATION_MODES = ['Webhook', 'AlwaysAllow'] as const;

/** The taint vmlet puts on its Node unless told otherwise: only pods that tolerate it land on the node. */
export const DEFAULT_TAINT = { key: 'virtual-kubelet.io/provider', value: 'vmlet', effect: 'NoSchedule' } as const;

const duration = (fallback: string) =>
  z
    .union([z.string(), z.number()])
    .default(fallback)
    .transform((value, ctx) => {
      try {
        return parseDuration(value);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    });

// A flag or environment variable gives text; YAML gives a boolean.
const boolean = (fallback: boolean) =>
  z
    .union([z.boolean(), z.enum(['true', 'false'])], { error: 'must be true or false' })
    .default(fallback)
    .transform((v) => v === true || v === 'true');

const quantity = (fallback: string) =>
  z
    .union([z.string(), z.number()])
    .default(fallback)
    .transform((value, ctx) => {
      try {
        const n = parseQuantity(String(value));
        if (n < 0) throw new Error(`"${value}" is negative`);
        return n;
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    });

// Label keys and values as the API server validates them, so a typo fails here and not at registration.
const LABEL_NAME = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$/;
const labelKey = z.string().regex(LABEL_NAME, 'must be a label key such as example.com/name');
const labelValue = z.string().regex(LABEL_VALUE, 'must be at most 63 letters, digits, "-", "_" or "."');
const nodeName = z
  .string()
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/, 'must be a lowercase DNS name (a-z, 0-9, "-", ".")')
  .max(253);

const taint = z
  .object({ key: labelKey, value: labelValue.optional(), effect: z.enum(TAINT_EFFECTS) })
  .strict();

export const configSchema = z
  .object({
    /** Name of the Node object; defaults to the host name, lowercased. */
    nodeName: nodeName.default(() => defaultNodeName()),
    /** Path of a kubeconfig; else $KUBECONFIG, else the in-cluster service account, else ~/.kube/config. */
    kubeconfig: z.string().min(1).optional(),
    /**
     * Kubelet TLS bootstrapping (the kubelet's --bootstrap-kubeconfig): when the node's kubeconfig is
     * missing or its client certificate expired or unreadable, this kubeconfig's credentials (a bootstrap
     * token) request a certificate for system:node:<nodeName> through a CSR, and the node's kubeconfig
     * (`kubeconfig`, default `<imageCacheDir>/vmlet.kubeconfig`) is written to use it. The certificate is
     * then rotated before it expires.
     */
    bootstrapKubeconfig: z.string().min(1).optional(),
    /** Where certificates from CSRs are kept (vmlet-client-current.pem, vmlet-server-current.pem); default `<imageCacheDir>/pki`. */
    certDir: z.string().min(1).optional(),
    /**
     * The kubelet API's serving certificate comes from a kubelet-serving CSR (the kubelet's
     * serverTLSBootstrap), which an admin or an approver must approve; self-signed until then.
     */
    serverTlsBootstrap: boolean(false),
    logLevel: z.enum(LOG_LEVELS).default('info'),
    /** Which hypervisor runs VMs: `vz` (Virtualization.framework, macOS only), `qemu`, or `auto`. */
    hypervisor: z.enum(HYPERVISORS).default('auto'),
    /** Directory of the image cache; its volume is the node's ephemeral-storage and DiskPressure source. */
    imageCacheDir: z.string().min(1).default(() => defaultCacheDir()),
    /** Pulls write disks with O_DIRECT where the OS and filesystem allow (src/images/store/direct-sink.ts). */
    directIo: boolean(true),
    /**
     * Working directories of VMs (disk clones, sockets, console logs, driver state); default
     * `<imageCacheDir>/vms`. On the image cache's file system, a disk clone is a reflink where it can be.
     */
    vmDir: z.string().min(1).optional(),
    /**
     * Directory of static pod manifests (the kubelet's --pod-manifest-path): each *.yaml, *.yml or *.json
     * file's pods run as VMs on this node. Without a kubeconfig, vmlet then runs standalone (no API server).
     */
    podManifestPath: z.string().min(1).optional(),
    /** Unix socket of the local API (`vmlet ps/logs/exec`), mode 0600; default `<imageCacheDir>/vmlet.sock`. */
    localSocket: z.string().min(1).optional(),
    /** Port the kubelet API listens on; published in the Node's daemonEndpoints. */
    kubeletPort: z.int().min(1).max(65535).default(10250),
    /** Address the kubelet API listens on (the kubelet's --address). */
    kubeletAddress: z.union([z.ipv4(), z.ipv6()], { error: 'must be an IP address, e.g. 0.0.0.0, 127.0.0.1 or ::' }).default('0.0.0.0'),
    /** Serving certificate and key of the kubelet API (both or neither); without them a self-signed one is made. */
    kubeletTlsCertFile: z.string().min(1).optional(),
    kubeletTlsKeyFile: z.string().min(1).optional(),
    /** CA bundle that client certificates must chain to; without it only bearer tokens authenticate (the kubelet's default). */
    kubeletClientCaFile: z.string().min(1).optional(),
    /** Requests without credentials pass as system:anonymous (then authorized like any user). */
    kubeletAnonymousAuth: boolean(false),
    /** Webhook: SubjectAccessReview at the API server; AlwaysAllow: any authenticated request. */
    kubeletAuthorizationMode: z.enum(KUBELET_AUTHORIZATION_MODES).default('Webhook'),
    /** How long a TokenReview that authenticated is remembered (the kubelet's authentication.webhook.cacheTTL). */
    kubeletTokenCacheTTL: duration('2m'),
    /** How long an allowed SubjectAccessReview is remembered (authorization.webhook.cacheAuthorizedTTL). */
    kubeletAuthorizedCacheTTL: duration('5m'),
    /** How long a refused SubjectAccessReview is remembered (authorization.webhook.cacheUnauthorizedTTL). */
    kubeletUnauthorizedCacheTTL: duration('30s'),
    /** Local address of /healthz, /readyz and /metrics, e.g. 127.0.0.1:10258; "" turns it off. */
    adminAddress: z
      .string()
      .regex(/^$|^(\[[0-9a-fA-F:.]+\]|[^:\s]*):\d{1,5}$/, 'must be host:port (e.g. 127.0.0.1:10258), or "" to turn it off')
      .default('127.0.0.1:10258'),
    /** How long `vmlet run` tries to reach the API server at start before it gives up. */
    startupTimeout: duration('30s'),
    /** Deadline of one API request (watches excepted). */
    requestTimeout: duration('10s'),
    /** The first back-off of a crashing container (or VM that died): the kubelet's 10 s. */
    crashLoopBackOffInitial: duration('10s'),
    /** The longest crash-loop back-off (the kubelet's crashLoopBackOff.maxContainerRestartPeriod). */
    crashLoopBackOffMax: duration('5m'),
    /**
     * Host directories a pod's hostPath volume may name (the directory itself or one below it); each is
     * shared with the VM over virtiofs. Empty (the default): every hostPath volume is refused with a reason.
     */
    hostPathPrefixes: z
      .array(z.string().refine((p) => path.isAbsolute(p), { error: 'must be an absolute path, e.g. /srv/vmlet-shared' }))
      .default([])
      .transform((list) => list.map((p) => path.normalize(p).replace(/(.)\/$/, '$1'))),
    /**
     * The Docker-API engine (Docker, podman, Docker Desktop, Colima, OrbStack) that runs the sidecar
     * containers of hybrid pods: a socket path, unix:///path or tcp://host:port. Default: DOCKER_HOST,
     * else the first well-known socket that exists. Only pods with sidecars connect to it.
     */
    sidecarEngine: z.string().optional(),
    node: z
      .object({
        /** InternalIP published in the Node's addresses; default: the first non-loopback IPv4 of the host. */
        ip: z.union([z.ipv4(), z.ipv6()]).optional(),
        /** Extra labels on the Node (vmlet's own labels win on conflict). */
        labels: z.record(labelKey, labelValue).default({}),
        /** Taints set when vmlet registers the Node; [] registers it without taints. */
        taints: z.array(taint).default([{ ...DEFAULT_TAINT }]),
        /** VMs that may run at once: the `vmlet.dev/vm` extended resource. Apple's licence allows 2 on a Mac. */
        vmSlots: z.int().min(0).max(1024).default(2),
        /** The Node's `pods` capacity. */
        maxPods: z.int().min(1).max(10000).default(110),
        /** Guest operating systems offered; default: what the host's hypervisor can run. */
        guestOSes: z.array(z.enum(GUEST_OSES)).min(1).optional(),
        /** Held back from allocatable for the host itself. */
        reservedCpu: quantity('0'),
        reservedMemory: quantity('0'),
        leaseDuration: duration('40s'),
        leaseRenewInterval: duration('10s'),
        /** The Node status is patched when it changes, and at least this often. */
        statusReportInterval: duration('5m'),
        /** How often host conditions (memory, disk, PIDs, hypervisor) are sampled; sampling costs no API request. */
        statusSampleInterval: duration('10s'),
      })
      .strict()
      .prefault({}),
    /** Thresholds of the pressure conditions, as the kubelet's hard eviction defaults. */
    pressure: z
      .object({
        memoryAvailable: quantity('100Mi'),
        diskAvailablePercent: z.number().min(0).max(100).default(10),
        pidAvailablePercent: z.number().min(0).max(100).default(5),
      })
      .strict()
      .prefault({}),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (Boolean(c.kubeletTlsCertFile) !== Boolean(c.kubeletTlsKeyFile)) {
      const missing = c.kubeletTlsCertFile ? 'kubeletTlsKeyFile' : 'kubeletTlsCertFile';
      ctx.addIssue({ code: 'custom', path: [missing], message: 'kubeletTlsCertFile and kubeletTlsKeyFile must be given together' });
    }
    if (c.serverTlsBootstrap && c.kubeletTlsCertFile) {
      ctx.addIssue({ code: 'custom', path: ['serverTlsBootstrap'], message: 'serverTlsBootstrap and kubeletTlsCertFile exclude each other: the serving certificate comes from a CSR or from the files' });
    }
  });

export type Config = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
export type Taint = z.output<typeof taint>;

function defaultNodeName(): string {
  return os
    .hostname()
    .toLowerCase()
    .replace(/[^a-z0-9.-]/g, '-')
    .replace(/^[-.]+|[-.]+$/g, '') || 'vmlet';
}

/** Where certificates from CSRs go. */
export function certDirOf(config: Pick<Config, 'certDir' | 'imageCacheDir'>): string {
  return config.certDir ?? path.join(config.imageCacheDir, 'pki');
}

/** The node's kubeconfig: the one given, else (TLS bootstrapping) the one vmlet writes in its state dir. */
export function nodeKubeconfigOf(config: Pick<Config, 'kubeconfig' | 'bootstrapKubeconfig' | 'imageCacheDir'>): string | undefined {
  return config.kubeconfig ?? (config.bootstrapKubeconfig ? path.join(config.imageCacheDir, 'vmlet.kubeconfig') : undefined);
}

export function defaultCacheDir(): string {
  if (process.platform === 'darwin') return path.join(os.homedir(), 'Library', 'Caches', 'vmlet');
  return process.getuid?.() === 0 ? '/var/lib/vmlet' : path.join(os.homedir(), '.cache', 'vmlet');
}
