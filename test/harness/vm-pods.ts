// What every VM-pod end-to-end test starts with: a real cluster (etcd + kube-apiserver), a registry with
// the Linux test guest pushed as a VM image, the `default` ServiceAccount, and one `vmlet run` registered
// as a node; plus the kubectl look-ups those tests make. stop() takes everything down, the VMs included
// (they outlive vmlet on purpose; a test's must not outlive the test).
import assert from 'node:assert/strict';
import path from 'node:path';
import type { CoreV1Event, V1Pod } from '@kubernetes/client-node';
import { ensureTestGuest } from '../guest/build.ts';
import { guestImageSource, importArgs } from '../guest/image.ts';
import { startCluster, type Cluster } from './cluster.ts';
import { waitFor } from './processes.ts';
import { startPodman, type Podman } from './podman.ts';
import { startRegistry, type Registry } from './registry.ts';
import { killVmProcessesUnder, runVmlet, vmProcessesUnder, VmletProcess } from './vmlet.ts';

export interface VmPodsOptions {
  nodeName: string;
  /** Extra `vmlet run` flags. */
  vmletArgs?: string[];
  /**
   * Hybrid pods: a podman Docker-API service (test/harness/podman.ts) with the test registry as insecure,
   * vmlet's --sidecar-engine on its socket, and a busybox image pushed to the registry (`busybox`).
   */
  podman?: boolean;
  /**
   * The Node's IP (the pod IP) instead of 127.0.0.1: an address of this host that containers on the
   * engine's bridge network reach; the kubelet API then listens on all addresses, its certificate names it.
   */
  nodeIp?: string;
}

export class VmPods {
  private constructor(
    readonly cluster: Cluster,
    readonly registry: Registry,
    public vmlet: VmletProcess,
    /** The test guest as a VM image in the registry. */
    readonly image: string,
    readonly nodeName: string,
    private readonly vmletArgs: string[],
    private readonly extraSans: string[] = [],
    /** With `podman`: the engine, and the busybox image in the registry. */
    readonly podman?: Podman,
    readonly busybox?: string,
  ) {}

  static async start(opts: VmPodsOptions): Promise<VmPods> {
    const guest = await ensureTestGuest();
    const [cluster, registry] = await Promise.all([startCluster(), startRegistry({})]);
    let podman: Podman | undefined;
    try {
      // After the registry: podman reads its insecure-registry list when it starts.
      podman = opts.podman ? await startPodman({ insecureRegistries: [registry.host] }) : undefined;
      const busybox = podman ? await podman.buildBusyboxImage(registry) : undefined;
      const build = path.join(cluster.dir, 'build-store');
      assert.equal((await runVmlet([...importArgs('guest:1', await guestImageSource(guest)), `--store=${build}`], {}, 240_000)).code, 0);
      const image = `${registry.host}/vmlet/test-guest:1`;
      assert.equal((await runVmlet(['image', 'push', 'guest:1', image, `--store=${build}`], {}, 240_000)).code, 0);
      const sa = await cluster.kubectl(['create', 'serviceaccount', 'default']);
      assert.equal(sa.code, 0, sa.stderr);
      const args = [
        ...(opts.nodeIp ? [`--node-ip=${opts.nodeIp}`, '--kubelet-address=0.0.0.0'] : []),
        ...(podman ? [`--sidecar-engine=${podman.dockerHost}`] : []),
        ...(opts.vmletArgs ?? []),
      ];
      const sans = opts.nodeIp ? [opts.nodeIp] : [];
      const vmlet = await VmPods.startVmlet(cluster, opts.nodeName, args, sans);
      return new VmPods(cluster, registry, vmlet, image, opts.nodeName, args, sans, podman, busybox);
    } catch (err) {
      await Promise.all([cluster.stop(), registry.stop(), podman?.stop()]);
      throw err;
    }
  }

  private static async startVmlet(cluster: Cluster, nodeName: string, args: string[], extraSans: string[] = []): Promise<VmletProcess> {
    // With the cluster's kubelet TLS (serving certificate, client CA), so that kubectl logs/exec reach it.
    const dir = path.join(cluster.dir, nodeName);
    const vmlet = await VmletProcess.start({ kubeconfig: await cluster.nodeKubeconfig(nodeName), nodeName, dir, args: [...(await cluster.kubeletTlsArgs(dir, extraSans)), ...args] });
    await vmlet.waitUntilUp(120_000);
    return vmlet;
  }

  /** kill -9 of vmlet, and a new one on the same directories (its VMs keep running). */
  async restartVmlet(): Promise<void> {
    await this.vmlet.signal('SIGKILL');
    this.vmlet = await VmPods.startVmlet(this.cluster, this.nodeName, this.vmletArgs, this.extraSans);
  }

  async stop(): Promise<void> {
    await this.vmlet.stop().catch(() => undefined);
    await killVmProcessesUnder(this.vmlet.dir);
    await Promise.all([this.cluster.stop(), this.registry.stop(), this.podman?.stop()]);
  }

  /** kubectl that must succeed; its stdout. */
  async kubectl(...args: string[]): Promise<string> {
    const r = await this.cluster.kubectl(args);
    assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  }

  async apply(manifest: unknown): Promise<void> {
    const r = await this.cluster.kubectl(['apply', '-f', '-'], { input: JSON.stringify(manifest) });
    assert.equal(r.code, 0, r.stderr);
  }

  async pod(name: string): Promise<V1Pod> {
    return JSON.parse(await this.kubectl('get', 'pod', name, '-o', 'json')) as V1Pod;
  }

  async events(name: string): Promise<CoreV1Event[]> {
    return (JSON.parse(await this.kubectl('get', 'events', '--field-selector', `involvedObject.name=${name}`, '-o', 'json')) as { items: CoreV1Event[] }).items;
  }

  /** Polls the pod until `check` returns something (or true). */
  async waitForPod<T>(name: string, what: string, check: (p: V1Pod) => T | undefined | false, timeoutMs = 240_000): Promise<T> {
    let last: V1Pod | undefined;
    return waitFor(`pod ${name}: ${what}`, async () => {
      last = await this.pod(name);
      const v = check(last);
      return v === false ? undefined : v;
    }, { timeoutMs, intervalMs: 1000 }).catch((err: Error) => {
      // What the pod looked like last says why it did not get there.
      const s = last?.status;
      err.message += `\nlast seen: phase ${s?.phase}, reason ${s?.reason ?? '-'}, containers ${JSON.stringify(s?.containerStatuses?.map((c) => ({ name: c.name, image: c.image, ready: c.ready, restartCount: c.restartCount, state: c.state, lastState: c.lastState })))}`;
      throw err;
    });
  }

  async waitReady(name: string, timeoutMs = 240_000): Promise<V1Pod> {
    return this.waitForPod(name, 'Ready', (p) => (isReady(p) ? p : undefined), timeoutMs);
  }

  /** QEMU and virtiofsd processes of this vmlet's VMs (`ps` lines). */
  vmProcesses(): Promise<string[]> {
    return vmProcessesUnder(this.vmlet.dir);
  }

  /** PIDs of the QEMU process of the VM of pod `uid`. */
  async qemuPids(uid?: string): Promise<number[]> {
    return (await this.vmProcesses()).filter((l) => l.includes('qemu-system') && (!uid || l.includes(uid))).map((l) => Number(l.trim().split(/\s+/)[0]));
  }

  async delete(name: string): Promise<void> {
    await this.kubectl('delete', 'pod', name, '--wait=true', '--timeout=120s');
  }

  /** A pod bound to this node running the test guest; `container` and `spec` merge into the defaults. */
  manifest(name: string, container: Record<string, unknown> = {}, spec: Record<string, unknown> = {}): Record<string, unknown> & { spec: Record<string, unknown> } {
    return {
      apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default' },
      spec: {
        nodeName: this.nodeName, automountServiceAccountToken: false, terminationGracePeriodSeconds: 5,
        containers: [{ name: 'vm', image: this.image, command: ['sh', '-c', 'exec sleep 100000'], ...container }],
        ...spec,
      },
    };
  }
}

export function isReady(p: V1Pod): boolean {
  return p.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True';
}
