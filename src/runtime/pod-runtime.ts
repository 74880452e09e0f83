// The pod runtime: virtual-kubelet's provider, without polling. The Kubernetes side (src/kube/pods/)
// hands it pods bound to this node (`sync`, `remove`); it makes each one a VM (pull, clone, boot, agent,
// main process), keeps a PodRuntimeState per pod UID, and says when that state changed (`changed`) and
// what the pod's owner should hear (`event`). Kubernetes objects come in; no API call goes out from here
// except through the lookups it is given (ConfigMaps and Secrets for env).
//
// Restart safety: each VM's directory is `<vmDir>/<pod-uid>` with a pod.json beside the driver's
// vm.json; `adopt()` takes running VMs over after a vmlet restart instead of booting them again.
import type { V1Container, V1Pod } from '@kubernetes/client-node';
import { chmod, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Duplex, Readable } from 'node:stream';
import { consoleLog } from './pod/console-log.ts';
import { AgentError, type MainExitEvent } from '../agent/host/client.ts';
import type { Hypervisor, ShareSpec } from '../drivers/hypervisor.ts';
import { pullImage } from '../images/pull.ts';
import type { RegistryClient } from '../images/registry/client.ts';
import type { CredentialStore, PullSecret } from '../images/registry/credentials.ts';
import type { ImageStore, StoredImage } from '../images/store/image-store.ts';
import {
  KubeletError, type ContainerLogOptions, type KubeletProvider, type PodUsage, type StreamedProcess, type StreamOptions,
} from '../kubelet/provider.ts';
import type { Logger } from '../observability/log.ts';
import { resolveEnv, type EnvFacts, type EnvLookups } from './pod/env.ts';
import { volumeContent } from './pod/volumes.ts';
import { PodSpecError } from './pod/errors.ts';
import { vmSize, type NodeVmSizing } from './pod/sizing.ts';
import type { PodRuntimeState } from './pod/status.ts';
import { checkPod } from './pod/validate.ts';
import { VmInstance } from './vm-instance.ts';

export type EventType = 'Normal' | 'Warning';

export interface PodRuntimeOptions {
  store: ImageStore;
  registry: RegistryClient;
  driver: Hypervisor;
  vmDir: string;
  nodeName: string;
  hostIP: string;
  vmSlots: number;
  defaults: NodeVmSizing;
  hostPathPrefixes: string[];
  lookups: EnvLookups;
  /** The node's registry credentials (docker config), to which a pod's imagePullSecrets are added. */
  credentials?: CredentialStore;
  /** A Secret as the API returns it (base64 data), for imagePullSecrets; undefined when it does not exist. */
  pullSecret?(namespace: string, name: string): Promise<PullSecret | undefined>;
  log: Logger;
  /** The state of this pod changed: post its status. */
  changed(uid: string): void;
  event(pod: V1Pod, type: EventType, reason: string, message: string): void;
  bootTimeoutMs?: number;
}

interface PodRecord {
  pod: V1Pod;
  state: PodRuntimeState;
  /** The container's resolved environment, which `kubectl exec` processes get too (as with runc exec). */
  env?: Record<string, string>;
  instance?: VmInstance;
  /** Set while sync() works on it. */
  busy?: Promise<void>;
  /** remove() started: nothing is started for it any more. */
  removing?: boolean;
  /** Once told it waits for a slot, not again. */
  toldWaiting?: boolean;
  /** Failed pulls in a row: the second and later wait as ImagePullBackOff. */
  pullFailures?: number;
}

interface PreparedVolume {
  volume: string;
  share: ShareSpec;
  mountPath: string;
  readOnly: boolean;
}

/** What pod.json in a VM directory records: enough to adopt the VM after a restart. */
interface PodMeta {
  uid: string;
  namespace: string;
  name: string;
  container: string;
  imageDigest: string;
  startedAt: string;
  restartCount: number;
}

const POD_META = 'pod.json';

export class PodRuntime implements KubeletProvider {
  private readonly pods = new Map<string, PodRecord>();
  /** UIDs waiting for a VM slot, first come first served. */
  private readonly queue: string[] = [];

  constructor(private readonly o: PodRuntimeOptions) {}

  state(uid: string): PodRuntimeState | undefined {
    return this.pods.get(uid)?.state;
  }

  /** Pods with a VM (running, or being started). */
  private activeCount(): number {
    let n = 0;
    for (const r of this.pods.values()) if (r.instance || r.busy) n++;
    return n;
  }

  /**
   * Makes the pod's VM exist and run. Idempotent: a pod already started only has its object refreshed.
   * Throws for failures worth a retry (the caller backs off); a pod that cannot run gets a Failed state.
   */
  async sync(pod: V1Pod): Promise<void> {
    const uid = pod.metadata!.uid!;
    let rec = this.pods.get(uid);
    if (!rec) {
      rec = { pod, state: this.initialState(pod) };
      this.pods.set(uid, rec);
    }
    rec.pod = pod;
    if (rec.instance || rec.busy || rec.removing || rec.state.phase === 'Failed' || rec.state.phase === 'Succeeded') return;

    try {
      checkPod(pod, { hostPathPrefixes: this.o.hostPathPrefixes });
    } catch (err) {
      if (!(err instanceof PodSpecError)) throw err;
      this.fail(rec, err.reason, err.message);
      return;
    }
    if (!this.queue.includes(uid)) this.queue.push(uid);
    if (this.queue[0] !== uid || this.activeCount() >= this.o.vmSlots) {
      const ahead = this.queue.indexOf(uid);
      const message = `all ${this.o.vmSlots} VM slots of node ${this.o.nodeName} are in use; the pod starts when one frees (${ahead} pod${ahead === 1 ? '' : 's'} ahead of it)`;
      this.setWaiting(rec, 'WaitingForVmSlot', message);
      if (!rec.toldWaiting) this.o.event(pod, 'Normal', 'WaitingForVmSlot', message);
      rec.toldWaiting = true;
      return;
    }
    this.queue.shift();
    rec.busy = this.start(rec).finally(() => {
      rec.busy = undefined;
    });
    await rec.busy;
  }

  private async start(rec: PodRecord): Promise<void> {
    const pod = rec.pod;
    const uid = pod.metadata!.uid!;
    const container = pod.spec!.containers[0]!;
    const { o } = this;
    let image: StoredImage;
    try {
      // Without CPU or memory in the container's resources, the image's own VM config sizes the VM.
      const r = container.resources;
      const sized = [r?.limits, r?.requests].some((q) => q?.cpu !== undefined || q?.memory !== undefined);
      const size = sized ? vmSize(container, o.defaults) : undefined;
      const env = await resolveEnv(pod, container, o.lookups, { nodeName: o.nodeName, hostIP: o.hostIP, podIP: o.hostIP, ...(size ? { vm: size } : {}) });
      rec.env = env;
      const volumes = await this.prepareVolumes(pod, container, { nodeName: o.nodeName, hostIP: o.hostIP, podIP: o.hostIP });
      image = await this.pull(rec, container);
      const sizeText = size ? `${size.cpus} vCPU, ${size.memoryMiB} MiB` : "the image's CPUs and memory";
      this.setWaiting(rec, 'ContainerCreating', `booting a VM (${sizeText})`);
      const instance = await VmInstance.launch({
        store: o.store, driver: o.driver, vmDir: o.vmDir, image, id: uid, name: `${pod.metadata!.namespace}/${pod.metadata!.name}`,
        ...(size ? { cpus: size.cpus, memoryMiB: size.memoryMiB } : {}), network: { mode: 'user', forwards: [] },
        shares: volumes.map((v) => v.share),
        ...(o.bootTimeoutMs ? { bootTimeoutMs: o.bootTimeoutMs } : {}),
      });
      if (rec.removing) {
        await instance.stop(5000);
        return;
      }
      rec.instance = instance;
      const meta: PodMeta = {
        uid, namespace: pod.metadata!.namespace!, name: pod.metadata!.name!, container: container.name,
        imageDigest: image.digest, startedAt: new Date().toISOString(), restartCount: 0,
      };
      await writeFile(path.join(instance.dir, POD_META), JSON.stringify(meta));
      o.event(pod, 'Normal', 'Created', `Created VM ${uid} (${instance.vm.spec.cpus} vCPU, ${instance.vm.spec.memoryMiB} MiB) from ${container.image}`);
      this.watch(rec, instance);
      for (const v of volumes) {
        await instance.agent.mount({ tag: v.share.tag, mountPath: v.mountPath, readOnly: v.readOnly }).catch((err: Error) => {
          throw new PodSpecError('FailedMount', `MountVolume.SetUp failed for volume "${v.volume}" at ${v.mountPath}: ${err.message}`);
        });
      }
      // A pod's hostname is its name (or spec.hostname), as in a container; best effort, a guest that
      // cannot set it still runs the pod.
      await instance.agent.setHostname(pod.spec!.hostname ?? pod.metadata!.name!).catch((err: Error) => o.log.warn({ uid, err: err.message }, 'setting the hostname in the VM failed'));
      const argv = [...(container.command ?? []), ...(container.args ?? [])];
      if (argv.length > 0) {
        await instance.agent.startMain({
          id: container.name, argv, env, ...(container.workingDir ? { cwd: container.workingDir } : {}),
          ...(container.stdin ? { stdin: true, stdinOnce: Boolean(container.stdinOnce) } : {}),
        });
      }
      const now = new Date();
      rec.state = {
        ...rec.state,
        phase: 'Running',
        waiting: undefined,
        startTime: rec.state.startTime ?? now,
        podIP: o.hostIP,
        vmReady: true,
        container: {
          ...rec.state.container, imageID: `${container.image}@${image.digest}`, containerID: `vmlet://${uid}`,
          state: { kind: 'running', startedAt: now }, ready: true, started: true,
        },
      };
      o.event(pod, 'Normal', 'Started', argv.length > 0 ? `Started container ${container.name} in the VM: ${argv.join(' ').slice(0, 200)}` : `Started VM ${uid} (no command: the VM is the container)`);
      o.changed(uid);
    } catch (err) {
      const e = err as Error & { reason?: string };
      if (err instanceof PodSpecError) {
        this.setWaiting(rec, err.reason, err.message);
        o.event(pod, 'Warning', err.reason === 'InvalidVmSize' ? 'FailedCreate' : err.reason === 'FailedMount' ? 'FailedMount' : 'Failed', err.message);
        if (rec.instance) await this.release(rec, 5000);
        if (err.reason === 'InvalidVmSize') this.fail(rec, err.reason, err.message);
        return;
      }
      const reason = e.reason === 'BootFailed' || e.reason === 'BootTimeout' ? 'VmBootFailed' : (rec.state.waiting?.reason === 'ErrImagePull' ? 'ErrImagePull' : 'CreateContainerError');
      this.setWaiting(rec, reason, e.message.split('\n')[0]!);
      o.event(pod, 'Warning', 'Failed', e.message.split('\n')[0]!);
      throw err;
    }
  }

  /**
   * The container's volumes as host directories to share: files written for configMap, secret,
   * downwardAPI and projected volumes (read-only in the guest), a fresh directory for emptyDir, the host's
   * own directory for hostPath (validate.ts allowed only configured prefixes).
   */
  private async prepareVolumes(pod: V1Pod, container: V1Container, facts: EnvFacts): Promise<PreparedVolume[]> {
    const root = path.join(this.o.vmDir, pod.metadata!.uid!, 'volumes');
    const shares = new Map<string, ShareSpec>();
    const out: PreparedVolume[] = [];
    for (const m of container.volumeMounts ?? []) {
      if (m.subPath) throw new PodSpecError('UnsupportedPodSpec', `volumeMount "${m.name}" at ${m.mountPath}: subPath is not supported yet in VM pods`);
      const volume = (pod.spec?.volumes ?? []).find((v) => v.name === m.name)!;
      let share = shares.get(m.name);
      let files = false;
      if (!share) {
        const content = await volumeContent(pod, volume, this.o.lookups, facts);
        let hostPath: string;
        if (content.kind === 'hostPath') {
          hostPath = content.path;
          if (!(await stat(hostPath).catch(() => undefined))?.isDirectory()) {
            throw new PodSpecError('FailedMount', `MountVolume.SetUp failed for volume "${m.name}": hostPath ${hostPath} is not a directory on the node`);
          }
        } else {
          hostPath = path.join(root, m.name);
          await mkdir(hostPath, { recursive: true });
          if (content.kind === 'files') {
            files = true;
            for (const f of content.files) {
              const file = path.join(hostPath, f.path);
              if (!file.startsWith(`${hostPath}/`)) throw new PodSpecError('FailedMount', `volume "${m.name}": path ${f.path} leaves the volume`);
              await mkdir(path.dirname(file), { recursive: true });
              await writeFile(file, f.data, { mode: f.mode });
              await chmod(file, f.mode);
            }
          }
        }
        share = { tag: `vol-${shares.size}`, hostPath, readOnly: files };
        shares.set(m.name, share);
      }
      out.push({ volume: m.name, share, mountPath: m.mountPath, readOnly: Boolean(m.readOnly) || share.readOnly });
    }
    return out;
  }

  private async pull(rec: PodRecord, container: V1Container): Promise<StoredImage> {
    const { o } = this;
    const ref = container.image!;
    const policy = container.imagePullPolicy ?? (ref.endsWith(':latest') || !ref.includes(':') ? 'Always' : 'IfNotPresent');
    const local = policy === 'Always' ? undefined : await o.store.resolve(ref);
    const present = local ? await o.store.get(local) : undefined;
    if (present) {
      o.event(rec.pod, 'Normal', 'Pulled', `Container image "${ref}" already present on machine`);
      return present;
    }
    if (policy === 'Never') throw new PodSpecError('ErrImageNeverPull', `Container image "${ref}" is not present with pull policy of Never`);
    o.event(rec.pod, 'Normal', 'Pulling', `Pulling image "${ref}"`);
    this.setWaiting(rec, 'ContainerCreating', `pulling image "${ref}"`);
    const started = Date.now();
    try {
      const registry = await this.registryFor(rec.pod);
      const result = await pullImage({ store: o.store, registry, image: ref, log: o.log });
      rec.pullFailures = 0;
      const mib = (result.downloaded / 1024 / 1024).toFixed(1);
      o.event(rec.pod, 'Normal', 'Pulled', `Successfully pulled image "${ref}" in ${((Date.now() - started) / 1000).toFixed(1)}s (${mib} MiB downloaded)`);
      return result.image;
    } catch (err) {
      const message = (err as Error).message.split('\n')[0]!;
      rec.pullFailures = (rec.pullFailures ?? 0) + 1;
      if (rec.pullFailures > 1) {
        this.setWaiting(rec, 'ImagePullBackOff', `Back-off pulling image "${ref}": ${message}`);
        o.event(rec.pod, 'Normal', 'BackOff', `Back-off pulling image "${ref}"`);
      } else {
        this.setWaiting(rec, 'ErrImagePull', message);
      }
      throw err;
    }
  }

  /** The registry client with the pod's imagePullSecrets (kubelet: missing ones are a warning, not an error). */
  private async registryFor(pod: V1Pod): Promise<RegistryClient> {
    const names = (pod.spec?.imagePullSecrets ?? []).map((r) => r.name).filter((n): n is string => Boolean(n));
    if (names.length === 0 || !this.o.pullSecret || !this.o.credentials) return this.o.registry;
    const ns = pod.metadata!.namespace!;
    const found: PullSecret[] = [];
    const missing: string[] = [];
    for (const name of names) {
      const secret = await this.o.pullSecret(ns, name);
      if (secret) found.push(secret);
      else missing.push(name);
    }
    if (missing.length) {
      this.o.event(pod, 'Warning', 'FailedToRetrieveImagePullSecret', `Unable to retrieve some image pull secrets (${missing.join(', ')}); attempting to pull the image may not succeed.`);
    }
    return this.o.registry.withCredentials(this.o.credentials.withPullSecrets(found));
  }

  /** Main-process exits and VM exits become container states. */
  private watch(rec: PodRecord, instance: VmInstance): void {
    const uid = rec.pod.metadata!.uid!;
    instance.agent.on('main-exit', (ev: MainExitEvent) => {
      if (rec.removing) return;
      const policy = rec.pod.spec!.restartPolicy ?? 'Always';
      const code = ev.exitCode;
      const finishedAt = new Date(ev.finishedAt);
      const running = rec.state.container.state;
      const startedAt = running.kind === 'running' ? running.startedAt : undefined;
      const terminated = { kind: 'terminated' as const, exitCode: code, reason: code === 0 ? 'Completed' : 'Error', finishedAt, ...(startedAt ? { startedAt } : {}) };
      if (policy === 'Always' || (policy === 'OnFailure' && code !== 0)) {
        rec.state.container = { ...rec.state.container, lastTermination: terminated, ready: false, restartCount: rec.state.container.restartCount + 1, state: { kind: 'running', startedAt: new Date() } };
        void instance.agent.restartMain(ev.id).then(() => {
          rec.state.container.ready = true;
          this.o.changed(uid);
        }, (err: Error) => this.o.log.warn({ uid, err: err.message }, 'restarting the main process failed'));
        this.o.event(rec.pod, 'Normal', 'Started', `Container ${rec.state.container.name} exited with ${code}; started again in the VM (restartPolicy ${policy})`);
      } else {
        rec.state = { ...rec.state, phase: code === 0 ? 'Succeeded' : 'Failed', container: { ...rec.state.container, state: terminated, ready: false } };
        void this.release(rec, 10_000);
      }
      this.o.changed(uid);
    });
    void instance.vm.exited.then((exit) => {
      if (rec.removing || rec.instance !== instance) return;
      rec.instance = undefined;
      const finishedAt = exit.at;
      rec.state = {
        ...rec.state,
        phase: (rec.pod.spec!.restartPolicy ?? 'Always') === 'Never' ? 'Failed' : rec.state.phase,
        vmReady: false,
        container: { ...rec.state.container, ready: false, state: { kind: 'terminated', exitCode: 137, reason: exit.reason === 'GuestShutdown' ? 'Completed' : 'VmExited', message: exit.message, finishedAt } },
      };
      this.o.event(rec.pod, 'Warning', 'VmExited', `The VM exited: ${exit.reason}: ${exit.message}`);
      void instance.dispose();
      this.o.changed(uid);
    });
  }

  /** Stops the pod's VM within its grace period (preStop is issue 5's next step) and forgets it. */
  async remove(pod: V1Pod): Promise<void> {
    const uid = pod.metadata!.uid!;
    const rec = this.pods.get(uid);
    const idx = this.queue.indexOf(uid);
    if (idx >= 0) this.queue.splice(idx, 1);
    if (!rec) return;
    rec.removing = true;
    await rec.busy?.catch(() => undefined);
    const grace = pod.metadata?.deletionGracePeriodSeconds ?? pod.spec?.terminationGracePeriodSeconds ?? 30;
    if (rec.instance) this.o.event(pod, 'Normal', 'Killing', `Stopping VM ${uid} (grace period ${grace}s)`);
    await this.release(rec, Math.max(grace, 1) * 1000);
    this.pods.delete(uid);
  }

  private async release(rec: PodRecord, graceMs: number): Promise<void> {
    const instance = rec.instance;
    rec.instance = undefined;
    if (instance) await instance.stop(graceMs).catch((err: Error) => this.o.log.warn({ err: err.message }, 'stopping a VM failed'));
    this.kickQueue();
  }

  /** A slot freed: the first waiting pod gets another sync. */
  private kickQueue(): void {
    const next = this.queue[0];
    const rec = next ? this.pods.get(next) : undefined;
    if (rec) this.o.changed(next!);
  }

  /** UIDs of pods known here (for the controller's resync). */
  uids(): string[] {
    return [...this.pods.keys()];
  }

  /**
   * After a restart: takes over the VMs of `<vmDir>/<uid>` whose pod still exists (`alive`), and removes
   * the others. Adopted pods keep their VM, main process, start time and restart count.
   */
  async adopt(alive: (uid: string) => V1Pod | undefined): Promise<{ adopted: string[]; removed: string[] }> {
    const adopted: string[] = [];
    const removed: string[] = [];
    for (const uid of await readdir(this.o.vmDir).catch(() => [] as string[])) {
      const meta = JSON.parse(await readFile(path.join(this.o.vmDir, uid, POD_META), 'utf8').catch(() => '{}')) as Partial<PodMeta>;
      const pod = alive(uid);
      const instance = meta.imageDigest ? await VmInstance.adopt({ store: this.o.store, driver: this.o.driver, vmDir: this.o.vmDir, id: uid, imageDigest: meta.imageDigest }).catch(() => undefined) : undefined;
      if (!pod || !instance) {
        if (instance) await instance.stop(10_000).catch(() => undefined);
        removed.push(uid);
        continue;
      }
      const container = pod.spec!.containers[0]!;
      const startedAt = new Date(meta.startedAt ?? Date.now());
      const rec: PodRecord = {
        pod,
        instance,
        state: {
          ...this.initialState(pod),
          phase: 'Running', startTime: pod.status?.startTime ? new Date(pod.status.startTime) : startedAt, podIP: this.o.hostIP, vmReady: true,
          container: {
            name: container.name, image: container.image ?? '', imageID: `${container.image}@${meta.imageDigest}`, containerID: `vmlet://${uid}`,
            state: { kind: 'running', startedAt }, ready: true, started: true, restartCount: meta.restartCount ?? 0,
          },
        },
      };
      this.pods.set(uid, rec);
      this.watch(rec, instance);
      adopted.push(uid);
    }
    return { adopted, removed };
  }

  /** vmlet is stopping: VMs keep running, to be adopted by the next vmlet. */
  async detachAll(): Promise<void> {
    await Promise.all([...this.pods.values()].map(async (r) => {
      await r.instance?.detach().catch(() => undefined);
    }));
  }

  // ----- the kubelet API's view (KubeletProvider): exec, attach, logs, port-forward, usage -----

  getPod(namespace: string, name: string): V1Pod | undefined {
    for (const r of this.pods.values()) if (r.pod.metadata?.namespace === namespace && r.pod.metadata?.name === name) return r.pod;
    return undefined;
  }

  listPods(): V1Pod[] {
    return [...this.pods.values()].map((r) => r.pod);
  }

  runningPods(): V1Pod[] {
    return [...this.pods.values()].filter((r) => r.instance).map((r) => r.pod);
  }

  async exec(pod: V1Pod, container: string, command: string[], opts: StreamOptions): Promise<StreamedProcess> {
    const { rec, instance } = this.running(pod, container);
    if (command.length === 0) throw new KubeletError(400, 'BadRequest', 'you must specify a command to run');
    const c = rec.pod.spec!.containers[0]!;
    return instance.agent.exec({
      argv: command, stdin: opts.stdin, ...(rec.env ? { env: rec.env } : {}), ...(c.workingDir ? { cwd: c.workingDir } : {}),
      ...(opts.tty ? { tty: { rows: opts.size?.rows ?? 24, cols: opts.size?.cols ?? 80 } } : {}),
    }).catch((err: unknown) => {
      throw agentToKubelet(err, `exec of ${JSON.stringify(command[0])} in container "${container}"`);
    });
  }

  async attach(pod: V1Pod, container: string, opts: StreamOptions): Promise<StreamedProcess> {
    const { rec, instance } = this.running(pod, container);
    const c = rec.pod.spec!.containers[0]!;
    if (!c.command?.length && !c.args?.length) {
      throw new KubeletError(400, 'BadRequest', `container "${container}" has no command: the VM itself is the container, there is no process to attach to (use kubectl exec)`);
    }
    if (opts.stdin && !c.stdin) throw new KubeletError(400, 'BadRequest', `container "${container}" was not started with stdin: true, so its stdin cannot be attached`);
    return instance.agent.attachMain(container, { stdin: opts.stdin }).catch((err: unknown) => {
      throw agentToKubelet(err, `attach to container "${container}"`);
    });
  }

  async logs(pod: V1Pod, container: string, opts: ContainerLogOptions): Promise<Readable> {
    const rec = this.record(pod, container);
    const where = `container "${container}" in pod "${pod.metadata!.name}"`;
    const instance = rec.instance;
    if (!instance) {
      const s = rec.state.container.state;
      const why = s.kind === 'waiting' ? `is waiting to start: ${s.reason}` : 'has no running VM: its logs lived in the VM';
      throw new KubeletError(400, 'BadRequest', `${where} ${why}`);
    }
    const c = rec.pod.spec!.containers[0]!;
    if (!c.command?.length && !c.args?.length) return consoleLog(instance.vm.consoleLog, opts);
    return instance.agent.logs(container, {
      ...(opts.follow ? { follow: true } : {}), ...(opts.tailLines !== undefined ? { tailLines: opts.tailLines } : {}),
      ...(opts.sinceTime ? { sinceTime: opts.sinceTime } : {}), ...(opts.timestamps ? { timestamps: true } : {}),
      ...(opts.limitBytes !== undefined ? { limitBytes: opts.limitBytes } : {}), ...(opts.previous ? { previous: true } : {}),
      ...(opts.stream && opts.stream !== 'All' ? { stream: opts.stream === 'Stdout' ? 'stdout' as const : 'stderr' as const } : {}),
    }).catch((err: unknown) => {
      if (opts.previous && err instanceof AgentError && err.reason === 'NotFound') {
        throw new KubeletError(400, 'BadRequest', `previous terminated container "${container}" in pod "${pod.metadata!.name}" not found`);
      }
      throw agentToKubelet(err, `logs of ${where}`);
    });
  }

  async portForward(pod: V1Pod, port: number): Promise<Duplex> {
    const rec = this.record(pod);
    if (!rec.instance) throw new KubeletError(400, 'BadRequest', `pod "${pod.metadata!.name}" has no running VM to forward port ${port} to`);
    return rec.instance.agent.connectPort(port).catch((err: unknown) => {
      throw agentToKubelet(err, `connecting to port ${port} in the VM`);
    });
  }

  async usage(pod: V1Pod): Promise<PodUsage | undefined> {
    const instance = this.pods.get(pod.metadata?.uid ?? '')?.instance;
    if (!instance) return undefined;
    const s = await instance.agent.stats({ timeoutMs: 5000 }).catch(() => undefined);
    if (!s) return undefined;
    const root = s.filesystems.find((f) => f.path === '/');
    return {
      timestamp: new Date(s.timestamp),
      cpuUsageCoreNanoSeconds: Math.round(s.cpu.usageSeconds * 1e9),
      memoryWorkingSetBytes: s.memory.workingSetBytes,
      memoryAvailableBytes: s.memory.availableBytes,
      memoryUsageBytes: s.memory.totalBytes - s.memory.freeBytes,
      ...(root ? { fs: { capacityBytes: root.capacityBytes, availableBytes: root.availableBytes, usedBytes: root.usedBytes, inodes: root.inodes, inodesFree: root.inodesFree } } : {}),
    };
  }

  /** The pod's record, and the container named as the pod's (VM pods have one). */
  private record(pod: V1Pod, container?: string): PodRecord {
    const rec = this.pods.get(pod.metadata?.uid ?? '');
    if (!rec) throw new KubeletError(404, 'NotFound', `pod "${pod.metadata?.namespace}/${pod.metadata?.name}" is not running on this node`);
    if (container !== undefined && rec.pod.spec?.containers[0]?.name !== container) {
      throw new KubeletError(404, 'NotFound', `container "${container}" not found in pod "${pod.metadata?.namespace}/${pod.metadata?.name}"`);
    }
    return rec;
  }

  private running(pod: V1Pod, container: string): { rec: PodRecord; instance: VmInstance } {
    const rec = this.record(pod, container);
    if (!rec.instance || rec.removing) {
      const s = rec.state.container.state;
      const why = s.kind === 'waiting' ? `is waiting to start: ${s.reason}` : 'is not running';
      throw new KubeletError(400, 'BadRequest', `container "${container}" in pod "${pod.metadata!.name}" ${why}`);
    }
    return { rec, instance: rec.instance };
  }

  private initialState(pod: V1Pod): PodRuntimeState {
    const c = pod.spec?.containers?.[0];
    return {
      phase: 'Pending',
      hostIP: this.o.hostIP,
      vmReady: false,
      container: { name: c?.name ?? '', image: c?.image ?? '', state: { kind: 'waiting', reason: 'ContainerCreating' }, ready: false, started: false, restartCount: 0 },
    };
  }

  private setWaiting(rec: PodRecord, reason: string, message: string): void {
    // Only a change is news: telling the controller about an unchanged state would make it sync again.
    const c = rec.state.container.state;
    if (rec.state.waiting?.reason === reason && rec.state.waiting.message === message && c.kind === 'waiting' && c.reason === reason) return;
    rec.state = { ...rec.state, waiting: { reason, message }, container: { ...rec.state.container, state: { kind: 'waiting', reason, message } } };
    this.o.changed(rec.pod.metadata!.uid!);
  }

  private fail(rec: PodRecord, reason: string, message: string): void {
    rec.state = { ...rec.state, phase: 'Failed', waiting: { reason, message }, container: { ...rec.state.container, state: { kind: 'waiting', reason, message } } };
    this.o.event(rec.pod, 'Warning', reason, message);
    this.o.changed(rec.pod.metadata!.uid!);
  }
}

/** An agent failure as the kubelet API answers it: the agent's reason kept in the message. */
function agentToKubelet(err: unknown, what: string): KubeletError {
  if (err instanceof KubeletError) return err;
  if (err instanceof AgentError) {
    const status = err.reason === 'NotFound' ? 404 : err.reason === 'InvalidArgument' || err.reason === 'StartFailed' ? 400 : err.reason === 'NotSupported' ? 501 : 500;
    const reason = status === 404 ? 'NotFound' : status === 400 ? 'BadRequest' : status === 501 ? 'NotImplemented' : 'InternalError';
    return new KubeletError(status, reason, `${what}: ${err.message}`);
  }
  return new KubeletError(500, 'InternalError', `${what}: ${(err as Error).message}`);
}
