// The vmlet daemon: wires the layers together for `vmlet run` — configuration in, then the Kubernetes side
// (API client, Node, Lease), the host sensors and the hypervisor probe, and the local admin endpoint.
// Pod runtime, kubelet API and image layers plug in here as their issues land.
import { certDirOf, nodeKubeconfigOf, type Config } from './config/schema.ts';
import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { probeHypervisor } from './drivers/probe.ts';
import { QemuDriver } from './drivers/qemu/index.ts';
import { VzDriver } from './drivers/vz/index.ts';
import type { Hypervisor } from './drivers/hypervisor.ts';
import { RegistryClient } from './images/registry/client.ts';
import { CredentialStore, type PullSecret } from './images/registry/credentials.ts';
import { ImageStore } from './images/store/image-store.ts';
import { PodController } from './kube/pods/pod-controller.ts';
import { ServiceAccountTokens } from './kube/pods/service-account-tokens.ts';
import { ServiceCache } from './kube/pods/services.ts';
import type { ServiceAccountTokenRequest } from './runtime/pod/env.ts';
import type { RuntimeClassRef } from './runtime/pod/validate.ts';
import type { V1Pod } from '@kubernetes/client-node';
import { StaticPodController } from './static/controller.ts';
import { MirrorPods } from './static/mirror.ts';
import { isStaticPod } from './static/manifests.ts';
import { PodView } from './static/pod-view.ts';
import { StaticPodSource } from './static/source.ts';
import { PodRuntime } from './runtime/pod-runtime.ts';
import { readHostFacts, sampleHost } from './host/facts.ts';
import { ApiHealth } from './kube/api-health.ts';
import { Backoff, sleep } from './kube/backoff.ts';
import { KubeApi, describeApiError, httpStatus } from './kube/client.ts';
import { KubeconfigError } from './kube/errors.ts';
import { clusterAccessConfigured, loadKubeconfig } from './kube/kubeconfig.ts';
import { NodeController } from './kube/node/node-controller.ts';
import { AdminServer } from './observability/admin-server.ts';
import { createLocalKubeletServer, kubeletHosts, startKubeletServer, type KubeletServer } from './kubelet/server.ts';
import { bootstrapClientCertificate, ClientCertRotator } from './kube/certificates/client-cert.ts';
import { CsrRefusedError } from './kube/certificates/request.ts';
import { SERVING_CERT_FILE, ServingCertManager } from './kube/certificates/serving-cert.ts';
import type { Logger } from './observability/log.ts';
import { AgentMetrics } from './observability/metrics.ts';
import { VMLET_VERSION, KUBELET_VERSION } from './version.ts';

/** A failure that stops vmlet at start; its message is one line for the user. */
export class StartupError extends Error {
  override name = 'StartupError';
}

export class Daemon {
  private node?: NodeController;
  private pods?: PodController;
  private runtime?: PodRuntime;
  private services?: ServiceCache;
  private registry?: RegistryClient;
  private api?: KubeApi;
  private admin?: AdminServer;
  private kubelet?: KubeletServer;
  /** The local API on a unix socket (`vmlet ps/logs/exec`): the kubelet API's server, or its routes alone without an API server. */
  private local?: KubeletServer;
  private staticSource?: StaticPodSource;
  private staticPods?: StaticPodController;
  private mirrors?: MirrorPods;
  private clientRotator?: ClientCertRotator;
  private servingCerts?: ServingCertManager;
  private readonly stopper = new AbortController();
  readonly metrics = new AgentMetrics();

  constructor(
    private readonly config: Config,
    private readonly log: Logger,
  ) {}

  /** Starts everything; resolves once the Node is registered and heartbeating. Throws StartupError. */
  async start(): Promise<void> {
    const { config, log, metrics } = this;
    // Static pods without a kubeconfig given on purpose: no API server (the kubelet's standalone mode).
    if (config.podManifestPath !== undefined && !config.bootstrapKubeconfig && !clusterAccessConfigured(config.kubeconfig)) return this.startStandalone();
    const kubeconfig = nodeKubeconfigOf(config);
    if (config.bootstrapKubeconfig) await this.bootstrapClientCertificate(kubeconfig!, config.bootstrapKubeconfig);
    const access = loadKubeconfig(kubeconfig);
    const health = new ApiHealth(log.child({ component: 'apiserver' }), metrics);
    const api = new KubeApi(access, metrics, health, config.requestTimeout);
    this.api = api;
    if (config.bootstrapKubeconfig && ClientCertRotator.manages(access, certDirOf(config))) {
      this.clientRotator = new ClientCertRotator({ http: api.http, certFile: access.certFile!, certDir: certDirOf(config), nodeName: config.nodeName, log: log.child({ component: 'certificates' }) });
      await this.clientRotator.start();
    }
    const facts = await readHostFacts();
    log.info({ version: VMLET_VERSION, kubeletVersion: KUBELET_VERSION, server: api.server, kubeconfig: access.source }, 'vmlet starting');

    const node = new NodeController(
      api,
      config,
      {
        facts,
        sample: () => sampleHost(config.imageCacheDir),
        probeHypervisor: () => probeHypervisor({ want: config.hypervisor, arch: facts.arch }),
      },
      log.child({ component: 'node' }),
      metrics,
    );
    this.node = node;
    await this.registerWithin(node, api.server, config.startupTimeout);
    await node.renewLease();
    node.start();

    const renewWindow = 3 * config.node.leaseRenewInterval;
    await this.startAdmin([
      { name: 'apiserver', check: () => (health.reachable ? null : 'the API server does not answer') },
      { name: 'node-lease', check: () => (Date.now() - node.leaseRenewedAt <= renewWindow ? null : 'the Lease has not been renewed lately') },
    ]);
    await this.startKubeletApi(api, facts);
    await this.startLocalApi(this.kubelet!, false);
    await this.startPods(api, facts.ips[0]);
    const ready = node.lastStatus?.conditions.find((c) => c.type === 'Ready');
    log.info({ uid: node.nodeUid, ready: ready?.status, reason: ready?.reason }, 'node is up');
  }

  /**
   * Pods bound to this node become VMs, when the host can run them: the image store, the registry
   * client, the driver and the pod runtime, then the pod controller (which first adopts the VMs a
   * previous vmlet left running).
   */
  private async startPods(api: KubeApi | undefined, firstIp: string | undefined): Promise<void> {
    const { config, log, metrics } = this;
    const probe = await probeHypervisor({ want: config.hypervisor, arch: process.arch === 'arm64' ? 'arm64' : 'amd64' });
    if (!probe.usable || probe.driver === null) {
      log.warn({ reason: probe.reason }, `pods will not run on this node: ${probe.message}`);
      return;
    }
    const store = new ImageStore(config.imageCacheDir, { directIo: config.directIo });
    await store.init();
    const driver: Hypervisor = probe.driver === 'vz'
      ? await VzDriver.open({ log: log.child({ component: 'vz' }) })
      : await QemuDriver.open({ log: log.child({ component: 'qemu' }) });
    const credentials = new CredentialStore({});
    this.registry = new RegistryClient({ plainHttpRegistries: [], caPems: [], credentials });
    const hostIP = config.node.ip ?? firstIp ?? '127.0.0.1';
    let mirrors: MirrorPods | undefined;
    const pods = api ? new PodController({ api, nodeName: config.nodeName, log: log.child({ component: 'pods' }), metrics, mirror: (pod, gone) => mirrors?.seen(pod, gone) }) : undefined;
    if (pods && api && config.podManifestPath !== undefined) {
      mirrors = new MirrorPods({
        api, nodeName: config.nodeName, nodeUid: () => this.node?.nodeUid, log: log.child({ component: 'mirror-pods' }),
        event: (pod, type, reason, message) => pods.event(pod, type, reason, message),
      });
    }
    this.mirrors = mirrors;
    const source = config.podManifestPath !== undefined ? new StaticPodSource({ dir: config.podManifestPath, nodeName: config.nodeName, log: log.child({ component: 'static-pods' }) }) : undefined;
    const get = async (kind: 'configmaps' | 'secrets', ns: string, name: string) => {
      // Static pods may not reference ConfigMaps or Secrets (the static pod controller refuses them first).
      if (!api) throw new Error(`${kind} ${ns}/${name} cannot be read: vmlet runs without an API server`);
      try {
        const obj = await api.call<{ data?: Record<string, string> }>('get', kind, { method: 'GET', path: `/api/v1/namespaces/${ns}/${kind}/${name}` });
        const data = obj.data ?? {};
        return kind === 'secrets' ? Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')])) : data;
      } catch (err) {
        if (httpStatus(err) === 404) return undefined;
        throw err;
      }
    };
    const tokens = api ? new ServiceAccountTokens(api) : undefined;
    const services = api ? new ServiceCache({ api, log, metrics }) : undefined;
    this.services = services;
    const runtime = new PodRuntime({
      store, registry: this.registry, driver,
      vmDir: config.vmDir ?? path.join(config.imageCacheDir, 'vms'),
      nodeName: config.nodeName, hostIP, vmSlots: config.node.vmSlots,
      defaults: { defaultCpus: 1, defaultMemoryMiB: 1024, maxCpus: os.availableParallelism(), maxMemoryMiB: Math.floor(os.totalmem() / 1024 / 1024 / 2) },
      hostPathPrefixes: config.hostPathPrefixes,
      lookups: {
        configMap: (ns, name) => get('configmaps', ns, name), secret: (ns, name) => get('secrets', ns, name),
        ...(tokens ? { serviceAccountToken: (req: ServiceAccountTokenRequest) => tokens.token(req) } : {}),
      },
      credentials,
      pullSecret: async (ns, name) => {
        if (!api) return undefined;
        try {
          return await api.call<PullSecret>('get', 'secrets', { method: 'GET', path: `/api/v1/namespaces/${ns}/secrets/${name}` });
        } catch (err) {
          if (httpStatus(err) === 404) return undefined;
          throw err;
        }
      },
      restartBackoff: { initialMs: config.crashLoopBackOffInitial, maxMs: config.crashLoopBackOffMax },
      ...(config.sidecarEngine ? { sidecarEngine: config.sidecarEngine } : {}),
      ...(services ? { services: () => services.list() } : {}),
      ...(api ? {
        runtimeClass: async (name: string) => {
          try {
            return await api.call<RuntimeClassRef>('get', 'runtimeclasses', { method: 'GET', path: `/apis/node.k8s.io/v1/runtimeclasses/${name}` });
          } catch (err) {
            if (httpStatus(err) === 404) return undefined;
            throw err;
          }
        },
      } : {}),
      log: log.child({ component: 'pod-runtime' }),
      // A static pod's news goes to the static pod controller (the log, and its mirror pod), an API pod's to the PodController.
      changed: (uid) => (!pods || this.staticPods?.get(uid) ? this.staticPods?.changed(uid) : pods.changed(uid)),
      event: (pod, type, reason, message) => (!pods || isStaticPod(pod) ? this.staticPods?.event(pod, type, reason, message) : pods.event(pod, type, reason, message)),
    });
    this.runtime = runtime;
    this.pods = pods;
    const statics = source
      ? new StaticPodController({
          runtime, log: log.child({ component: 'static-pods' }),
          ...(mirrors ? { onStatus: (pod, status) => mirrors.update(pod, status), onEvent: (pod, type, reason, message) => mirrors.event(pod, type, reason, message) } : {}),
        })
      : undefined;
    this.staticSource = source;
    this.staticPods = statics;
    const view = new PodView(runtime, () => statics?.pods().filter((p) => !runtime.state(p.metadata!.uid!)) ?? []);
    this.kubelet?.setProvider(view);
    this.local?.setProvider(view);
    // The manifests are read before adoption, so that the VMs of static pods (stable UIDs) are kept.
    const initial = await source?.scan();
    const isStatic = (uid: string): V1Pod | undefined => source?.pods().get(uid);
    if (pods) await pods.start(runtime, isStatic);
    else {
      const { adopted, removed } = await runtime.adopt(isStatic);
      if (adopted.length || removed.length) log.info({ adopted, removed }, 'VMs from before the restart: adopted those of static pods, removed the others');
    }
    if (source && statics) {
      for (const pod of initial?.added ?? []) statics.add(pod, source.file(pod.metadata!.uid!));
      source.start(({ added, removed }) => {
        for (const pod of removed) statics.remove(pod);
        for (const pod of added) statics.add(pod, source.file(pod.metadata!.uid!));
      });
      mirrors?.start();
      log.info({ dir: config.podManifestPath, pods: source.pods().size, mirrorPods: Boolean(mirrors) }, 'static pods from the pod manifest path run as VMs');
    }
    log.info({ driver: driver.describe(), vmSlots: config.node.vmSlots }, pods ? 'pods bound to this node run as VMs' : 'static pods run as VMs');
  }

  /**
   * Without an API server: static pods from the manifest directory become VMs; their status and Events
   * go to the log, and the local socket serves `vmlet ps/logs/exec`. No Node, Lease or kubelet port.
   */
  private async startStandalone(): Promise<void> {
    const { config, log } = this;
    const facts = await readHostFacts();
    log.info({ version: VMLET_VERSION, kubeletVersion: KUBELET_VERSION, mode: 'standalone', podManifestPath: config.podManifestPath }, 'vmlet starting without an API server (no kubeconfig given): static pods only');
    await this.startAdmin([]);
    this.local = createLocalKubeletServer({ config, registry: this.metrics.registry, log: log.child({ component: 'local-api' }) });
    await this.startLocalApi(this.local, true);
    await this.startPods(undefined, facts.ips[0]);
    if (!this.runtime) throw new StartupError('no VM can run on this host (see the log line above), and standalone mode only runs VMs');
    log.info({ mode: 'standalone' }, 'node is up');
  }

  /** The admin endpoint (/healthz, /readyz, /metrics), unless turned off. */
  private async startAdmin(checks: ConstructorParameters<typeof AdminServer>[1]): Promise<void> {
    const { config, log, metrics } = this;
    if (!config.adminAddress) return;
    this.admin = new AdminServer(metrics.registry, checks);
    try {
      const bound = await this.admin.start(config.adminAddress);
      log.info({ address: `${bound.address}:${bound.port}` }, 'admin endpoint (/healthz, /readyz, /metrics) listening');
    } catch (err) {
      throw new StartupError(`cannot listen on adminAddress ${config.adminAddress}: ${(err as Error).message}`);
    }
  }

  /** The local API socket; without an API server it is the only API, so a failure stops vmlet. */
  private async startLocalApi(server: KubeletServer, required: boolean): Promise<void> {
    const { config, log } = this;
    const socket = config.localSocket ?? path.join(config.imageCacheDir, 'vmlet.sock');
    try {
      await mkdir(path.dirname(socket), { recursive: true });
      await server.listenLocal(socket);
      log.info({ socket }, 'local API (vmlet ps, logs, exec) listening');
    } catch (err) {
      const message = `cannot serve the local API on ${socket}: ${(err as Error).message}`;
      if (required) throw new StartupError(message);
      log.warn({ socket, err: (err as Error).message }, `${message}; vmlet ps/logs/exec will not reach this vmlet`);
    }
  }

  /** TLS bootstrapping: a client certificate from a CSR when the node's kubeconfig is not usable. */
  private async bootstrapClientCertificate(kubeconfig: string, bootstrapKubeconfig: string): Promise<void> {
    const { config, log } = this;
    try {
      await bootstrapClientCertificate({
        kubeconfig, bootstrapKubeconfig, certDir: certDirOf(config), nodeName: config.nodeName,
        log: log.child({ component: 'certificates' }), signal: this.stopper.signal,
      });
    } catch (err) {
      if (err instanceof CsrRefusedError) {
        throw new StartupError(`TLS bootstrap failed: ${err.message}; vmlet cannot join without a client certificate (see kubectl describe csr ${err.csrName})`);
      }
      if (this.stopper.signal.aborted) throw new StartupError('stopped while waiting for the client certificate (TLS bootstrap)');
      if (err instanceof KubeconfigError) throw err;
      const status = httpStatus(err);
      if (status === 401) throw new StartupError(`TLS bootstrap failed: the API server rejected the bootstrap kubeconfig ${bootstrapKubeconfig}'s credentials (401 Unauthorized): is the bootstrap token valid and --enable-bootstrap-token-auth on?`);
      if (status === 403) throw new StartupError(`TLS bootstrap failed: the bootstrap credentials may not create CertificateSigningRequests (${describeApiError(err)}): bind the ClusterRole system:node-bootstrapper to their group`);
      throw new StartupError(`TLS bootstrap failed: ${describeApiError(err)}`);
    }
  }

  async stop(): Promise<void> {
    this.stopper.abort();
    this.clientRotator?.stop();
    this.servingCerts?.stop();
    await this.kubelet?.stop();
    await this.local?.stop();
    await this.staticSource?.stop();
    await this.staticPods?.stop();
    await this.mirrors?.stop();
    await this.pods?.stop();
    await this.services?.stop();
    // VMs keep running: the next vmlet adopts them.
    await this.runtime?.detachAll();
    await this.registry?.close();
    await Promise.all([this.node?.stop(), this.admin?.stop()]);
    this.api?.close();
  }

  /** The kubelet API (HTTPS, :10250): serves before the pods part starts, which plugs in with setProvider(). */
  private async startKubeletApi(api: KubeApi, facts: { hostname: string; ips: string[] }): Promise<void> {
    const { config, log } = this;
    const where = `${config.kubeletAddress}:${config.kubeletPort}`;
    try {
      const issuedCertFile = config.serverTlsBootstrap ? path.join(certDirOf(config), SERVING_CERT_FILE) : undefined;
      const { server, credentials, reload } = await startKubeletServer({
        config, api, host: facts, registry: this.metrics.registry, log: log.child({ component: 'kubelet-api' }), ...(issuedCertFile ? { issuedCertFile } : {}),
      });
      this.kubelet = server;
      log.info({ address: where, certificate: credentials.source, certFile: credentials.certFile }, 'kubelet API listening');
      if (config.serverTlsBootstrap) {
        this.servingCerts = new ServingCertManager({
          http: api.http, certDir: certDirOf(config), nodeName: config.nodeName, hosts: kubeletHosts(config, facts),
          log: log.child({ component: 'certificates' }), issued: reload,
        });
        await this.servingCerts.start();
      }
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'EADDRINUSE') throw new StartupError(`cannot listen on the kubelet port ${where}: it is in use by another process`);
      if (e.code === 'EADDRNOTAVAIL') throw new StartupError(`cannot listen on the kubelet port ${where}: no interface of this host has address ${config.kubeletAddress}`);
      if (e.code === 'EACCES') throw new StartupError(`cannot listen on the kubelet port ${where}: permission denied`);
      throw new StartupError(`cannot start the kubelet API on ${where}: ${e.message}`);
    }
  }

  /**
   * Registers the Node, retrying while the API server does not answer, up to `timeoutMs`. An answer that
   * refuses (bad credentials, forbidden) is final at once: retrying would not change it.
   */
  private async registerWithin(node: NodeController, server: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const backoff = new Backoff(250, 5_000);
    for (;;) {
      try {
        await node.register();
        return;
      } catch (err) {
        if (err instanceof KubeconfigError) throw err;
        const status = httpStatus(err);
        if (status === 401) throw new StartupError(`the API server at ${server} rejected vmlet's credentials (401 Unauthorized): check the kubeconfig's user`);
        if (status === 403) throw new StartupError(`the API server at ${server} forbids vmlet to register Node ${this.config.nodeName}: ${describeApiError(err)}`);
        if (status && status < 500 && status !== 429) throw new StartupError(`registering Node ${this.config.nodeName} failed: ${describeApiError(err)}`);
        if (Date.now() >= deadline) {
          throw new StartupError(`cannot reach the API server at ${server}: ${describeApiError(err)} (gave up after ${Math.round(timeoutMs / 1000)}s)`);
        }
        await sleep(Math.min(backoff.next(), Math.max(0, deadline - Date.now())));
      }
    }
  }
}
