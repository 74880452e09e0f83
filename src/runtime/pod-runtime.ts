// The pod runtime: virtual-kubelet's provider, without polling. The Kubernetes side (src/kube/pods/)
// hands it pods bound to this node (`sync`, `remove`); it makes each one a VM (pull, clone, boot, agent,
// main process), keeps a PodRuntimeState per pod UID, and says when that state changed (`changed`) and
// what the pod's owner should hear (`event`). Kubernetes objects come in; no API call goes out from here
// except through the lookups it is given (ConfigMaps and Secrets for env).
//
// Restart safety: each VM's directory is `<vmDir>/<pod-uid>` with a pod.json beside the driver's
// vm.json; `adopt()` takes running VMs over after a vmlet restart instead of booting them again.
import type { V1Container, V1Pod, V1Service } from '@kubernetes/client-node';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Duplex, Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { consoleLog } from './pod/console-log.ts';
import { AgentError, type MainExitEvent } from '../agent/host/client.ts';
import { VmError, type Hypervisor, type PortForward } from '../drivers/hypervisor.ts';
import { pullImage } from '../images/pull.ts';
import type { RegistryClient } from '../images/registry/client.ts';
import type { CredentialStore, PullSecret } from '../images/registry/credentials.ts';
import type { ImageStore, StoredImage } from '../images/store/image-store.ts';
import {
  KubeletError, type ContainerLogOptions, type KubeletProvider, type PodUsage, type StreamedProcess, type StreamOptions,
} from '../kubelet/provider.ts';
import type { Logger } from '../observability/log.ts';
import { resolveEnv, type EnvFacts, type EnvLookups } from './pod/env.ts';
import { PodSpecError } from './pod/errors.ts';
import { vmSize, type NodeVmSizing } from './pod/sizing.ts';
import { RestartBackoff, type RestartBackoffOptions } from './pod/restart-backoff.ts';
import { agentProbeTarget } from './probes/agent-target.ts';
import { HOOK_FAILURE, POST_START_TIMEOUT_MS, runHandler, type ProbeTarget } from './probes/handlers.ts';
import { ContainerProber } from './probes/prober.ts';
import type { ContainerRuntimeState, PodRuntimeState } from './pod/status.ts';
import { checkPod, checkRuntimeClass, engineContainers, initContainerPlace, podWarnings, vmContainer, vmContainerIndex, type RuntimeClassRef } from './pod/validate.ts';
import { PodVolumes, uniqueShares } from './pod-volumes.ts';
import { VmInstance } from './vm-instance.ts';
import { SidecarEngineError, SidecarEngineUnavailable } from '../sidecars/errors.ts';
import type { SidecarEngine } from '../sidecars/engine.ts';
import { SidecarSet } from './sidecar-set.ts';

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
  /** The cluster's Services, for service-link variables (none without an API server). */
  services?(): Promise<V1Service[]>;
  /** The RuntimeClass a pod names (spec.runtimeClassName); undefined when it does not exist. */
  runtimeClass?(name: string): Promise<RuntimeClassRef | undefined>;
  /** RuntimeClass handlers this node runs (default ["vmlet"]). */
  runtimeHandlers?: string[];
  /** Crash-loop back-off of restarted containers and rebooted VMs (default: the kubelet's 10 s to 5 min). */
  restartBackoff?: RestartBackoffOptions;
  /** The Docker-API engine of hybrid pods' sidecars (socket path, unix://, tcp://); default: its discovery. */
  sidecarEngine?: string;
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
  /** checkPod and the RuntimeClass passed, and the owner was warned about what is not applied. */
  admitted?: boolean;
  /** Failed pulls in a row: the second and later wait as ImagePullBackOff. */
  pullFailures?: number;
  /** The main process's (or, without one, the VM's) crash-loop back-off. */
  backoff: RestartBackoff;
  /** After the VM died, or a start failed on the pod's config: no new start before this time. */
  notBefore?: number;
  /** The config error (reason: message) of the last start, kept in view while the pod waits to retry. */
  configError?: string;
  /** Aborted when the pod is removed or has finished: ends back-off waits, init containers and timers. */
  done: AbortController;
  /** activeDeadlineSeconds. */
  deadline?: NodeJS.Timeout;
  /** The VM container's probes, for its current run. */
  prober?: ContainerProber;
  /** Why vmlet killed the current run (a probe, postStart): the message of its termination. */
  killedFor?: string;
  /** Hybrid pods: the sidecar containers on the container engine. */
  sidecars?: SidecarSet;
  /** The VM container's image (as the spec names it) that the current VM was booted from. */
  vmImage?: string;
  /** When config volumes were last refreshed, and the refresh under way. */
  volumesAt?: number;
  refreshing?: Promise<void>;
}

/** How often a running pod's configMap/secret/downwardAPI/projected volumes are compared with their sources. */
const VOLUME_REFRESH_MS = 15_000;

/**
 * How soon a start that failed on the pod's config (a missing ConfigMap, Secret or key, a hostPath that is
 * not there, an image absent with pull policy Never) is tried again: the kubelet's pod worker back-off.
 */
const CONFIG_RETRY_MS = 10_000;

/** What pod.json in a VM directory records: enough to adopt the VM after a restart. */
interface PodMeta {
  uid: string;
  namespace: string;
  name: string;
  container: string;
  imageDigest: string;
  /** The image as the pod's spec named it (absent in pod.json of vmlet before it was kept). */
  image?: string;
  startedAt: string;
  restartCount: number;
  /** Init containers have all completed in this VM (a VM adopted before that is booted again). */
  initialized?: boolean;
}

const POD_META = 'pod.json';

export class PodRuntime implements KubeletProvider {
  private readonly pods = new Map<string, PodRecord>();
  /** UIDs waiting for a VM slot, first come first served. */
  private readonly queue: string[] = [];

  private readonly volumes: PodVolumes;

  constructor(private readonly o: PodRuntimeOptions) {
    this.volumes = new PodVolumes({ vmDir: o.vmDir, lookups: o.lookups });
  }

  /** The sidecar engine, connected when a hybrid pod first needs it (dockerode is loaded then, not before). */
  private engineP?: Promise<SidecarEngine>;

  private engine(): Promise<SidecarEngine> {
    this.engineP ??= import('../sidecars/engine.ts')
      .then(({ SidecarEngine }) => SidecarEngine.connect(this.o.sidecarEngine ? { socket: this.o.sidecarEngine } : {}))
      .catch((err: unknown) => {
        this.engineP = undefined; // asked again next time: the engine may come up
        throw err;
      });
    return this.engineP;
  }

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
      rec = { pod, state: this.initialState(pod), backoff: new RestartBackoff(this.o.restartBackoff), done: new AbortController() };
      this.pods.set(uid, rec);
    }
    rec.pod = pod;
    // A sidecar whose image changed in the spec is restarted with it.
    rec.sidecars?.update(pod);
    if (rec.removing || rec.state.phase === 'Failed' || rec.state.phase === 'Succeeded') return;
    // So is the VM container: a new VM from the new image (the old one stopped as on deletion).
    if (rec.instance && !rec.busy && rec.vmImage !== undefined && vmContainer(pod).image !== rec.vmImage) {
      const instance = rec.instance;
      rec.busy = this.replaceVm(rec, instance).finally(() => {
        rec.busy = undefined;
        this.o.changed(uid);
      });
      await rec.busy;
      return;
    }
    this.armDeadline(rec);
    if (rec.instance && !rec.busy) this.refreshVolumes(rec, rec.instance);
    if (rec.instance || rec.busy) return;
    if (rec.notBefore !== undefined && Date.now() < rec.notBefore) return;

    if (!rec.admitted) {
      try {
        checkPod(pod, { hostPathPrefixes: this.o.hostPathPrefixes });
        const rc = pod.spec?.runtimeClassName;
        if (rc && this.o.runtimeClass) checkRuntimeClass(pod, await this.o.runtimeClass(rc), this.o.runtimeHandlers ?? ['vmlet']);
      } catch (err) {
        if (!(err instanceof PodSpecError)) throw err;
        this.fail(rec, err.reason, err.message);
        return;
      }
      rec.admitted = true;
      for (const w of podWarnings(pod)) this.o.event(pod, 'Warning', 'UnsupportedPodSpecField', w);
    }
    if (!this.queue.includes(uid)) this.queue.push(uid);
    if (this.queue[0] !== uid || this.activeCount() >= this.o.vmSlots) {
      const ahead = this.queue.indexOf(uid);
      const message = `all ${this.o.vmSlots} VM slots of node ${this.o.nodeName} are in use; the pod starts when one frees (${ahead} pod${ahead === 1 ? '' : 's'} ahead of it)`;
      // A config error of the last try stays in view: it is what the owner has to fix.
      if (!rec.configError) this.setWaiting(rec, 'WaitingForVmSlot', message);
      if (!rec.toldWaiting) this.o.event(pod, 'Normal', 'WaitingForVmSlot', message);
      rec.toldWaiting = true;
      return;
    }
    this.queue.shift();
    rec.busy = this.start(rec).finally(() => {
      rec.busy = undefined;
      // A start that ended without a VM (an error, a config to fix) frees its slot for the next in line.
      if (!rec.instance) this.kickQueue();
    });
    await rec.busy;
  }

  private async start(rec: PodRecord): Promise<void> {
    const pod = rec.pod;
    const uid = pod.metadata!.uid!;
    const container = vmContainer(pod);
    const { o } = this;
    let image: StoredImage;
    // Where a start's time goes (ms since it began), logged once the container runs (bench/pods.ts reads it).
    const t0 = Date.now();
    const took: Record<string, number> = {};
    try {
      // Without CPU or memory in the container's resources, the image's own VM config sizes the VM.
      const r = container.resources;
      const sized = [r?.limits, r?.requests].some((q) => q?.cpu !== undefined || q?.memory !== undefined);
      // A hybrid pod needs its engine: found before a VM is booted for nothing.
      const hybrid = engineContainers(pod).length > 0;
      if (hybrid && !rec.sidecars) await this.engine();
      const size = sized ? vmSize(container, o.defaults) : undefined;
      const services = (await o.services?.()) ?? [];
      const facts: EnvFacts = { nodeName: o.nodeName, hostIP: o.hostIP, podIP: o.hostIP, services, ...(size ? { vm: size } : {}) };
      const env = await resolveEnv(pod, container, o.lookups, facts);
      rec.env = env;
      // Init containers run in the same VM: their mounts are the VM's too.
      const volumes = await this.volumes.prepare(pod, [...(pod.spec!.initContainers ?? []), container], facts, env);
      took.prepared = Date.now() - t0;
      image = await this.pull(rec, container);
      took.pulled = Date.now() - t0;
      const sizeText = size ? `${size.cpus} vCPU, ${size.memoryMiB} MiB` : "the image's CPUs and memory";
      this.setWaiting(rec, 'ContainerCreating', `booting a VM (${sizeText})`);
      const instance = await VmInstance.launch({
        store: o.store, driver: o.driver, vmDir: o.vmDir, image, id: uid, name: `${pod.metadata!.namespace}/${pod.metadata!.name}`,
        ...(size ? { cpus: size.cpus, memoryMiB: size.memoryMiB } : {}), network: { mode: 'user', forwards: hybrid ? vmPortForwards(container, o.hostIP) : [] },
        shares: uniqueShares(volumes),
        ...(o.bootTimeoutMs ? { bootTimeoutMs: o.bootTimeoutMs } : {}),
        onPhase: (phase, ms) => {
          took[phase] = took.pulled! + ms;
          // The driver's part: VM created and started, guest booted, agent greeted (from the disk clone on).
          const bootMs = took.pulled! + ms - took.cloned!;
          if (phase === 'ready') o.log.info({ uid, bootMs, startedToReadyMs: took.pulled! + ms - took.started! }, `VM booted to agent-ready in ${bootMs} ms`);
        },
      });
      if (rec.removing) {
        await instance.stop(5000);
        return;
      }
      rec.instance = instance;
      rec.vmImage = container.image;
      const meta: PodMeta = {
        uid, namespace: pod.metadata!.namespace!, name: pod.metadata!.name!, container: container.name,
        imageDigest: image.digest, ...(container.image ? { image: container.image } : {}), startedAt: new Date().toISOString(), restartCount: rec.state.container.restartCount,
        initialized: (pod.spec!.initContainers ?? []).length === 0,
      };
      await this.saveMeta(instance, meta);
      o.event(pod, 'Normal', 'Created', `Created VM ${uid} (${instance.vm.spec.cpus} vCPU, ${instance.vm.spec.memoryMiB} MiB) from ${container.image}`);
      this.watch(rec, instance);
      for (const v of volumes) {
        await instance.agent.mount({ tag: v.share.tag, mountPath: v.mountPath, readOnly: v.readOnly, ...(v.subPath ? { subPath: v.subPath } : {}) }).catch((err: Error) => {
          throw new PodSpecError('FailedMount', `MountVolume.SetUp failed for volume "${v.volume}" at ${v.mountPath}: ${err.message}`);
        });
      }
      // A pod's hostname is its name (or spec.hostname), as in a container; best effort, a guest that
      // cannot set it still runs the pod.
      await instance.agent.setHostname(pod.spec!.hostname ?? pod.metadata!.name!).catch((err: Error) => o.log.warn({ uid, err: err.message }, 'setting the hostname in the VM failed'));
      took.setUp = Date.now() - t0;
      rec.configError = undefined;
      rec.state = { ...rec.state, vmReady: true, podIP: o.hostIP };
      const imageID = `${container.image}@${image.digest}`;
      if (hybrid) this.sidecarsOf(rec, facts);
      if (!(await this.runInitContainers(rec, instance, imageID, facts))) return;
      if (meta.initialized === false) await this.saveMeta(instance, { ...meta, initialized: true });
      const argv = [...(container.command ?? []), ...(container.args ?? [])];
      const now = new Date();
      rec.state = { ...rec.state, phase: 'Running', waiting: undefined, initialized: true, container: { ...rec.state.container, image: container.image ?? '', imageID, containerID: `vmlet://${uid}`, state: { kind: 'running', startedAt: now } } };
      if (argv.length > 0 && (await this.startMain(rec, instance)) === 'failed') return;
      rec.state = { ...rec.state, startTime: rec.state.startTime ?? now };
      o.event(pod, 'Normal', 'Started', argv.length > 0 ? `Started container ${container.name} in the VM: ${argv.join(' ').slice(0, 200)}` : `Started VM ${uid} (no command: the VM is the container)`);
      if (hybrid) this.startSidecars(rec, facts);
      await this.containerStarted(rec, instance, now);
      o.log.info({ uid, ms: { ...took, running: Date.now() - t0 } }, 'pod container running');
      o.changed(uid);
    } catch (err) {
      const e = err as Error & { reason?: string };
      if (rec.removing || rec.done.signal.aborted) return;
      if (err instanceof SidecarEngineUnavailable) {
        // Waits (retried with the caller's back-off) until the engine answers; the VM was not booted.
        const message = `pod has containers that run on the container engine (${engineContainers(pod).map((x) => x.container.name).join(', ')}) and ${err.message}; start the engine or set sidecarEngine (--sidecar-engine)`;
        this.setWaiting(rec, 'SidecarEngineUnavailable', message);
        o.event(pod, 'Warning', 'SidecarEngineUnavailable', message);
        throw err;
      }
      if (err instanceof PodSpecError) {
        this.setWaiting(rec, err.reason, err.message);
        if (rec.instance) await this.release(rec, 5000);
        // InvalidVmSize is final: fail() posts its Event.
        if (err.reason === 'InvalidVmSize') {
          this.fail(rec, err.reason, err.message);
          return;
        }
        // The rest is tried again after CONFIG_RETRY_MS (the owner may create the ConfigMap meanwhile); its
        // Event is posted again only when the error changes.
        const said = `${err.reason}: ${err.message}`;
        if (rec.configError !== said) o.event(pod, 'Warning', err.reason === 'FailedMount' ? 'FailedMount' : err.reason === 'ErrImageNeverPull' ? 'ErrImageNeverPull' : 'Failed', err.message);
        rec.configError = said;
        rec.notBefore = Date.now() + CONFIG_RETRY_MS;
        void sleep(CONFIG_RETRY_MS, rec.done.signal).then(() => {
          if (!rec.done.signal.aborted) this.o.changed(uid);
        });
        return;
      }
      if (e instanceof VmError && e.reason === 'InvalidVmSize') {
        // The image's own bounds (memorySizeMin, ...), known only once it is pulled: final as well.
        const message = `spec.containers[${vmContainerIndex(pod)}] (${container.name}).resources: ${e.message}; change the container's resources.limits`;
        this.fail(rec, 'InvalidVmSize', message);
        return;
      }
      const pulling = rec.state.waiting?.reason === 'ErrImagePull' || rec.state.waiting?.reason === 'ImagePullBackOff';
      const reason = e.reason === 'BootFailed' || e.reason === 'BootTimeout' ? 'VmBootFailed' : (pulling ? rec.state.waiting!.reason : 'CreateContainerError');
      this.setWaiting(rec, reason, e.message.split('\n')[0]!);
      o.event(pod, 'Warning', 'Failed', e.message.split('\n')[0]!);
      if (rec.instance) await this.release(rec, 5000);
      throw err;
    }
  }

  /**
   * Runs the pod's init containers in order, each to completion: those with the VM's image in its VM, as
   * processes of the agent (so `kubectl logs -c <init>` reads their output), the others on the container
   * engine (SidecarSet.runInit); a native sidecar (restartPolicy Always) is started on the engine and keeps
   * running, and the next one waits until it counts as started. A failed one is started again after its
   * back-off, or, with restartPolicy Never, fails the pod. Resolves false when the pod will not go on
   * (failed, removed, the VM died).
   */
  private async runInitContainers(rec: PodRecord, instance: VmInstance, imageID: string, facts: EnvFacts): Promise<boolean> {
    const pod = rec.pod;
    const uid = pod.metadata!.uid!;
    const inits = pod.spec!.initContainers ?? [];
    if (inits.length === 0) return true;
    rec.state = {
      ...rec.state, initialized: false, initContainers: [],
      container: { ...rec.state.container, state: { kind: 'waiting', reason: 'PodInitializing' } },
    };
    this.o.changed(uid);
    for (const ic of inits) {
      const place = initContainerPlace(pod, ic);
      const set = place === 'vm' ? undefined : rec.sidecars;
      if (place !== 'vm' && !set) return false; // removed meanwhile
      if (place === 'native') {
        if (!(await set!.startNative(ic.name)) || rec.instance !== instance) return false;
        continue;
      }
      const env = place === 'vm' ? await resolveEnv(pod, ic, this.o.lookups, facts) : {};
      const argv = [...(ic.command ?? []), ...(ic.args ?? [])];
      const backoff = new RestartBackoff(this.o.restartBackoff);
      const state: ContainerRuntimeState = {
        name: ic.name, image: ic.image ?? '', ...(place === 'vm' ? { imageID, containerID: `vmlet://${uid}-${ic.name}` } : {}),
        state: { kind: 'waiting', reason: 'PodInitializing' }, ready: false, started: false, restartCount: 0,
      };
      rec.state.initContainers!.push(state);
      for (let run = 0; ; run++) {
        const startedAt = new Date();
        if (set) {
          // On the engine: one run; a run that could not start waits with its reason and is tried again.
          const r = await set.runInit(ic.name, state.restartCount, (at, containerID) => {
            state.state = { kind: 'running', startedAt: at };
            state.started = true;
            state.containerID = containerID;
            this.o.changed(uid);
          });
          if (!r || rec.done.signal.aborted || rec.instance !== instance) return false;
          if (r.kind === 'failed') {
            state.state = { kind: 'waiting', reason: r.reason, message: r.message };
            this.o.changed(uid);
            await sleep(Math.max(backoff.next(0), 1000), rec.done.signal);
            if (rec.done.signal.aborted || rec.instance !== instance) return false;
            run--;
            continue;
          }
          state.imageID = r.imageID;
          const terminated = { kind: 'terminated' as const, exitCode: r.exitCode, reason: r.reason, ...(r.message ? { message: r.message } : {}), startedAt: r.startedAt, finishedAt: r.finishedAt };
          const verdict = await this.initExited(rec, instance, ic, state, terminated, backoff);
          if (verdict === 'next') break;
          if (verdict === 'stop') return false;
          continue;
        }
        const attempt = new AbortController();
        const exited = waitForMainExit(instance, ic.name, AbortSignal.any([rec.done.signal, attempt.signal]));
        let ev: { exitCode: number; finishedAt: string; reason?: string; message?: string } | undefined;
        try {
          await instance.agent.startMain({ id: ic.name, argv, env, ...(ic.workingDir ? { cwd: ic.workingDir } : {}) });
          state.state = { kind: 'running', startedAt };
          state.started = true;
          if (run === 0) this.o.event(pod, 'Normal', 'Started', `Started init container ${ic.name} in the VM: ${argv.join(' ').slice(0, 200)}`);
          this.o.changed(uid);
          ev = await exited;
        } catch (err) {
          if (!(err instanceof AgentError) || err.reason !== 'StartFailed') throw err;
          const message = `failed to start init container "${ic.name}" in the VM: ${err.message}`;
          this.o.event(pod, 'Warning', 'Failed', `Error: ${message}`);
          ev = { exitCode: 128, finishedAt: new Date().toISOString(), reason: 'StartError', message };
        } finally {
          attempt.abort();
        }
        if (!ev) return false;
        const terminated = {
          kind: 'terminated' as const, exitCode: ev.exitCode, reason: ev.reason ?? (ev.exitCode === 0 ? 'Completed' : 'Error'),
          ...(ev.message ? { message: ev.message } : {}), startedAt, finishedAt: new Date(ev.finishedAt),
        };
        const verdict = await this.initExited(rec, instance, ic, state, terminated, backoff);
        if (verdict === 'next') break;
        if (verdict === 'stop') return false;
      }
    }
    rec.state = { ...rec.state, initialized: true };
    return true;
  }

  /**
   * An init container's run ended: 'next' init container after an exit 0; else the pod fails (restartPolicy
   * Never: 'stop') or the container is run again ('again') after its back-off.
   */
  private async initExited(
    rec: PodRecord, instance: VmInstance, ic: V1Container, state: ContainerRuntimeState,
    terminated: Extract<ContainerRuntimeState['state'], { kind: 'terminated' }>, backoff: RestartBackoff,
  ): Promise<'next' | 'stop' | 'again'> {
    const pod = rec.pod;
    const uid = pod.metadata!.uid!;
    state.state = terminated;
    state.started = false;
    this.o.changed(uid);
    if (terminated.exitCode === 0) return 'next';
    if ((pod.spec!.restartPolicy ?? 'Always') === 'Never') {
      rec.state = { ...rec.state, phase: 'Failed', waiting: { reason: 'InitContainerFailed', message: `init container ${ic.name} exited with ${terminated.exitCode}` } };
      this.o.event(pod, 'Warning', 'Failed', `Init container ${ic.name} exited with ${terminated.exitCode} and restartPolicy is Never: the pod failed`);
      this.finish(rec);
      return 'stop';
    }
    const wait = backoff.next(terminated.finishedAt.getTime() - (terminated.startedAt ?? terminated.finishedAt).getTime());
    state.lastTermination = terminated;
    if (wait > 0) {
      state.state = { kind: 'waiting', reason: 'CrashLoopBackOff', message: backOffMessage(wait, ic.name, pod) };
      this.o.event(pod, 'Warning', 'BackOff', `Back-off restarting failed container ${ic.name} in pod ${podKey(pod)}`);
      this.o.changed(uid);
      await sleep(wait, rec.done.signal);
      if (rec.done.signal.aborted || rec.instance !== instance) return 'stop';
    }
    state.restartCount++;
    return 'again';
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

  /** The pod's imagePullSecrets that exist (for the sidecar engine's pulls). */
  private async pullSecrets(pod: V1Pod): Promise<PullSecret[]> {
    const names = (pod.spec?.imagePullSecrets ?? []).map((r) => r.name).filter((n): n is string => Boolean(n));
    if (!this.o.pullSecret) return [];
    const found = await Promise.all(names.map((n) => this.o.pullSecret!(pod.metadata!.namespace!, n)));
    return found.filter((x): x is PullSecret => x !== undefined);
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

  /**
   * Starts (or starts again) the VM container's main process. A command the VM cannot start (not found,
   * not executable, a missing working directory) is the container's exit with StartError, as on any node,
   * and goes through the restart policy like any other exit.
   */
  private async startMain(rec: PodRecord, instance: VmInstance): Promise<'started' | 'failed'> {
    const container = vmContainer(rec.pod);
    const argv = [...(container.command ?? []), ...(container.args ?? [])];
    try {
      await instance.agent.startMain({
        id: container.name, argv, env: rec.env ?? {}, ...(container.workingDir ? { cwd: container.workingDir } : {}),
        ...(container.stdin ? { stdin: true, stdinOnce: Boolean(container.stdinOnce) } : {}),
      });
      return 'started';
    } catch (err) {
      if (!(err instanceof AgentError) || err.reason !== 'StartFailed') throw err;
      const message = `failed to start container "${container.name}" in the VM: ${err.message}`;
      this.o.event(rec.pod, 'Warning', 'Failed', `Error: ${message}`);
      this.mainExited(rec, instance, { exitCode: 128, reason: 'StartError', message, finishedAt: new Date() });
      return 'failed';
    }
  }

  /**
   * The VM container's process ended (exit, or a start that failed): restart it in the VM after its
   * back-off (restartPolicy Always, or OnFailure with a non-zero code), or the pod is done.
   */
  private mainExited(rec: PodRecord, instance: VmInstance, exit: { exitCode: number; reason: string; message?: string; finishedAt: Date }): void {
    const uid = rec.pod.metadata!.uid!;
    const pod = rec.pod;
    const policy = pod.spec!.restartPolicy ?? 'Always';
    rec.prober?.stop();
    rec.prober = undefined;
    const running = rec.state.container.state;
    const startedAt = running.kind === 'running' ? running.startedAt : undefined;
    const terminated = { kind: 'terminated' as const, ...exit, ...(startedAt ? { startedAt } : {}) };
    if (!(policy === 'Always' || (policy === 'OnFailure' && exit.exitCode !== 0))) {
      const succeeded = exit.exitCode === 0 && exit.reason !== 'StartError';
      rec.state = { ...rec.state, phase: succeeded ? 'Succeeded' : 'Failed', container: { ...rec.state.container, state: terminated, ready: false } };
      this.finish(rec);
      void this.release(rec, 10_000);
      this.o.changed(uid);
      return;
    }
    const wait = rec.backoff.next(startedAt ? exit.finishedAt.getTime() - startedAt.getTime() : 0);
    const name = rec.state.container.name;
    rec.state.container = {
      ...rec.state.container, lastTermination: { exitCode: exit.exitCode, reason: exit.reason, ...(exit.message ? { message: exit.message } : {}), ...(startedAt ? { startedAt } : {}), finishedAt: exit.finishedAt },
      ready: false, started: false,
      state: wait > 0 ? { kind: 'waiting', reason: 'CrashLoopBackOff', message: backOffMessage(wait, name, pod) } : terminated,
    };
    if (wait > 0) this.o.event(pod, 'Warning', 'BackOff', `Back-off restarting failed container ${name} in pod ${podKey(pod)}`);
    this.o.changed(uid);
    void sleep(wait, rec.done.signal).then(async () => {
      if (rec.done.signal.aborted || rec.removing || rec.instance !== instance) return;
      // Each attempt counts, one that cannot start included (the kubelet counts containers it created).
      const startedAt = new Date();
      rec.state.container = { ...rec.state.container, restartCount: rec.state.container.restartCount + 1, state: { kind: 'running', startedAt }, ready: false, started: false };
      await this.saveMeta(instance, { restartCount: rec.state.container.restartCount }).catch(() => undefined);
      if ((await this.startMain(rec, instance)) !== 'started') return;
      this.o.event(pod, 'Normal', 'Started', `Started container ${name} in the VM again (restartPolicy ${policy}, restart ${rec.state.container.restartCount})`);
      await this.containerStarted(rec, instance, startedAt);
      this.o.changed(uid);
    }).catch((err: Error) => this.o.log.warn({ uid, err: err.message }, 'restarting the main process failed'));
  }

  /** Main-process exits and VM exits become container states. */
  private watch(rec: PodRecord, instance: VmInstance): void {
    const uid = rec.pod.metadata!.uid!;
    instance.agent.on('main-exit', (ev: MainExitEvent) => {
      if (rec.removing || ev.id !== rec.state.container.name || rec.state.container.state.kind !== 'running') return;
      const message = rec.killedFor;
      rec.killedFor = undefined;
      this.mainExited(rec, instance, { exitCode: ev.exitCode, reason: ev.exitCode === 0 ? 'Completed' : 'Error', ...(message ? { message } : {}), finishedAt: new Date(ev.finishedAt) });
    });
    void instance.vm.exited.then(async (exit) => {
      if (rec.removing || rec.instance !== instance) return;
      rec.instance = undefined;
      rec.prober?.stop();
      rec.prober = undefined;
      const finishedAt = exit.at;
      const policy = rec.pod.spec!.restartPolicy ?? 'Always';
      const running = rec.state.container.state;
      const startedAt = running.kind === 'running' ? running.startedAt : undefined;
      const terminated = { kind: 'terminated' as const, exitCode: 137, reason: exit.reason === 'GuestShutdown' ? 'Completed' : 'VmExited', message: exit.message, finishedAt, ...(startedAt ? { startedAt } : {}) };
      this.o.event(rec.pod, 'Warning', 'VmExited', `The VM exited: ${exit.reason}: ${exit.message}`);
      await instance.dispose();
      if (policy === 'Never') {
        rec.state = { ...rec.state, phase: 'Failed', vmReady: false, container: { ...rec.state.container, ready: false, state: terminated } };
        this.finish(rec);
        void this.stopSidecars(rec, rec.pod.spec?.terminationGracePeriodSeconds ?? 30);
        this.kickQueue();
        this.o.changed(uid);
        return;
      }
      // A VM that died is booted again from a fresh clone of its image, after the container's back-off.
      const wait = rec.backoff.next(startedAt ? finishedAt.getTime() - startedAt.getTime() : 0);
      const name = rec.state.container.name;
      rec.notBefore = Date.now() + wait;
      rec.state = {
        ...rec.state, vmReady: false,
        container: {
          ...rec.state.container, ready: false, started: false, restartCount: rec.state.container.restartCount + 1,
          lastTermination: { exitCode: 137, reason: terminated.reason, message: exit.message, ...(startedAt ? { startedAt } : {}), finishedAt },
          state: wait > 0 ? { kind: 'waiting', reason: 'CrashLoopBackOff', message: backOffMessage(wait, name, rec.pod) } : { kind: 'waiting', reason: 'ContainerCreating', message: 'booting the VM again from a fresh clone of its image' },
        },
      };
      if (wait > 0) this.o.event(rec.pod, 'Warning', 'BackOff', `Back-off booting the VM of container ${name} in pod ${podKey(rec.pod)} again`);
      this.kickQueue();
      this.o.changed(uid);
      if (wait > 0) {
        void sleep(wait, rec.done.signal).then(() => {
          if (!rec.done.signal.aborted) this.o.changed(uid);
        });
      }
    });
  }

  /**
   * ConfigMap, Secret, downwardAPI and projected volumes of a running pod are written again when what they
   * hold changed (a new ConfigMap, a token near its expiry), at most every VOLUME_REFRESH_MS; the guest sees
   * the new version at once through virtiofs (one rename of `..data`). emptyDir sizeLimit is checked at the
   * same pace, as the kubelet's eviction manager does: over it, the pod is evicted and its VM stopped.
   */
  private refreshVolumes(rec: PodRecord, instance: VmInstance): void {
    const now = Date.now();
    if (rec.refreshing || now - (rec.volumesAt ?? 0) < VOLUME_REFRESH_MS) return;
    rec.volumesAt = now;
    const pod = rec.pod;
    const facts: EnvFacts = { nodeName: this.o.nodeName, hostIP: this.o.hostIP, podIP: this.o.hostIP };
    const still = () => rec.instance === instance;
    rec.refreshing = (async () => {
      const written = await this.volumes.refresh(pod, facts, still, (message) => this.o.event(pod, 'Warning', 'FailedMount', message));
      if (written.length) this.o.log.info({ uid: pod.metadata!.uid, volumes: written }, 'volumes updated in the VM');
      const evicted = still() ? await this.volumes.overLimit(pod) : undefined;
      if (evicted && still()) await this.evict(rec, evicted);
    })().finally(() => {
      rec.refreshing = undefined;
    });
  }

  /** The pod is evicted (Failed, reason Evicted, in the kubelet's words) and its VM stopped. */
  private evict(rec: PodRecord, message: string): Promise<void> {
    return this.endPod(rec, { reason: 'Evicted', message, eventType: 'Warning', killed: 'killed: the pod was evicted' });
  }

  /**
   * The pod fails for good while it runs (evicted, past its deadline), as the kubelet ends one: Failed with
   * the reason, its running container terminated (137), an Event, no restarts, the VM stopped within the
   * grace period (after a start under way has settled).
   */
  private async endPod(rec: PodRecord, o: { reason: string; message: string; eventType: EventType; killed: string }): Promise<void> {
    const pod = rec.pod;
    const running = rec.state.container.state;
    rec.state = {
      ...rec.state, phase: 'Failed', waiting: { reason: o.reason, message: o.message },
      container: {
        ...rec.state.container, ready: false,
        ...(running.kind === 'running' ? { state: { kind: 'terminated', exitCode: 137, reason: 'Error', message: o.killed, startedAt: running.startedAt, finishedAt: new Date() } } : {}),
      },
    };
    const queued = this.queue.indexOf(pod.metadata!.uid!);
    if (queued >= 0) this.queue.splice(queued, 1);
    this.finish(rec);
    this.o.event(pod, o.eventType, o.reason, o.message);
    this.o.changed(pod.metadata!.uid!);
    await rec.busy?.catch(() => undefined);
    await this.release(rec, Math.max(pod.spec?.terminationGracePeriodSeconds ?? 30, 1) * 1000);
  }

  /** What probes and hooks of the VM container run against: its VM, through the agent. */
  private target(rec: PodRecord, instance: VmInstance): ProbeTarget {
    const c = vmContainer(rec.pod);
    return agentProbeTarget({
      agent: () => (rec.instance === instance ? instance.agent : undefined),
      ...(rec.env ? { env: rec.env } : {}), ...(c.workingDir ? { cwd: c.workingDir } : {}), podIP: this.o.hostIP,
    });
  }

  /**
   * The VM container has just started (its main process, or the VM itself when it has no command): its
   * postStart hook, then its probes. A failed postStart kills the container, as on any node, and the
   * restart policy takes it from there.
   */
  private async containerStarted(rec: PodRecord, instance: VmInstance, startedAt: Date): Promise<void> {
    const pod = rec.pod;
    const uid = pod.metadata!.uid!;
    const c = vmContainer(pod);
    const target = this.target(rec, instance);
    const postStart = c.lifecycle?.postStart;
    if (postStart) {
      const r = await runHandler(postStart, target, c, POST_START_TIMEOUT_MS, { pod: pod.metadata!, signal: rec.done.signal });
      for (const e of r.events ?? []) this.o.event(pod, e.type, e.reason, e.message);
      if (!r.ok && !rec.done.signal.aborted && rec.instance === instance) {
        this.o.event(pod, 'Warning', HOOK_FAILURE.postStart.reason, HOOK_FAILURE.postStart.message);
        this.o.log.warn({ uid, message: r.message }, 'postStart hook failed; killing the container');
        await this.killContainer(rec, instance, `${HOOK_FAILURE.postStart.waitingReason}: ${r.message}`, undefined);
        return;
      }
    }
    this.startProbes(rec, instance, startedAt);
  }

  /** The VM container's probes for its current run (also for a VM adopted after a vmlet restart). */
  private startProbes(rec: PodRecord, instance: VmInstance, startedAt: Date): void {
    const pod = rec.pod;
    const uid = pod.metadata!.uid!;
    const c = vmContainer(pod);
    if (rec.done.signal.aborted || rec.instance !== instance) return;
    rec.prober?.stop();
    rec.prober = new ContainerProber({
      container: c, target: this.target(rec, instance), startedAt: startedAt.getTime(),
      onStarted: () => {
        rec.state.container = { ...rec.state.container, started: true };
        this.o.changed(uid);
      },
      onReady: (ready) => {
        rec.state.container = { ...rec.state.container, ready };
        this.o.changed(uid);
      },
      onRestart: (_reason, message, graceSeconds) => {
        this.o.event(pod, 'Normal', 'Killing', message);
        void this.killContainer(rec, instance, message, graceSeconds);
      },
      onEvent: (type, reason, message) => this.o.event(pod, type, reason, message),
    });
    rec.prober.start();
  }

  /**
   * Kills the VM container for a restart (failed liveness or startup probe, failed postStart): its
   * preStop hook, then its main process (SIGTERM, SIGKILL at the grace period's end), whose exit goes
   * through the restart policy; a container without a command is its VM, which is killed and booted
   * again.
   */
  private async killContainer(rec: PodRecord, instance: VmInstance, why: string, graceSeconds: number | undefined): Promise<void> {
    const c = vmContainer(rec.pod);
    rec.prober?.stop();
    rec.prober = undefined;
    const grace = graceSeconds ?? rec.pod.spec?.terminationGracePeriodSeconds ?? 30;
    this.o.log.info({ uid: rec.pod.metadata!.uid, why }, 'killing the container');
    rec.killedFor = why;
    if (!c.command?.length && !c.args?.length) {
      await this.runPreStop(rec, instance, Date.now() + grace * 1000);
      await instance.vm.kill().catch(() => undefined);
      return;
    }
    await this.stopContainer(rec, instance, Date.now() + Math.max(grace, 1) * 1000);
  }

  /**
   * The VM container's image changed in the spec (`kubectl set image`): as the kubelet restarts a container
   * whose definition changed, its VM is stopped (preStop, then the guest asked to shut down within the
   * grace period) and the pod goes back to the head of the slot queue to boot a new VM from the new image.
   * Sidecars keep running; init containers run again in the new VM, as after a VM crash. No back-off.
   */
  private async replaceVm(rec: PodRecord, instance: VmInstance): Promise<void> {
    const pod = rec.pod;
    const uid = pod.metadata!.uid!;
    const c = vmContainer(pod);
    this.o.event(pod, 'Normal', 'Killing', `Container ${c.name} definition changed (image ${rec.vmImage} -> ${c.image}), will be restarted`);
    rec.prober?.stop();
    rec.prober = undefined;
    const grace = Math.max(pod.spec?.terminationGracePeriodSeconds ?? 30, 1);
    const deadline = Date.now() + grace * 1000;
    await this.runPreStop(rec, instance, deadline);
    const running = rec.state.container.state;
    const message = `the VM was stopped: the container's image changed to ${c.image}`;
    // Not running any more before the VM stops: its main process's exit is not a crash to restart.
    rec.instance = undefined;
    rec.vmImage = undefined;
    rec.state = {
      ...rec.state, vmReady: false,
      container: {
        ...rec.state.container, ready: false, started: false, restartCount: rec.state.container.restartCount + 1,
        ...(running.kind === 'running' ? { lastTermination: { exitCode: 137, reason: 'Error', message, startedAt: running.startedAt, finishedAt: new Date() } } : {}),
        state: { kind: 'waiting', reason: 'ContainerCreating', message: `booting a new VM from ${c.image}` },
      },
    };
    this.o.changed(uid);
    await instance.stop(Math.max(deadline - Date.now(), 5000)).catch((err: Error) => this.o.log.warn({ uid, err: err.message }, 'stopping a VM failed'));
    rec.notBefore = undefined;
    if (!this.queue.includes(uid)) this.queue.unshift(uid);
  }

  /** preStop, then SIGTERM to the main process and SIGKILL at `deadline`: the kubelet's container stop. */
  private async stopContainer(rec: PodRecord, instance: VmInstance, deadline: number): Promise<void> {
    const c = vmContainer(rec.pod);
    await this.runPreStop(rec, instance, deadline);
    if (!c.command?.length && !c.args?.length) return;
    if (rec.state.container.state.kind !== 'running') return;
    await instance.agent.stopMain(c.name, { signal: 'SIGTERM', graceMs: Math.max(deadline - Date.now(), 1000) })
      .catch((err: Error) => this.o.log.warn({ uid: rec.pod.metadata!.uid, err: err.message }, 'stopping the main process failed'));
  }

  /** The VM container's preStop hook, if any, within the time left before `deadline`. */
  private async runPreStop(rec: PodRecord, instance: VmInstance, deadline: number): Promise<void> {
    const c = vmContainer(rec.pod);
    const preStop = c.lifecycle?.preStop;
    if (!preStop || rec.state.container.state.kind !== 'running') return;
    const r = await runHandler(preStop, this.target(rec, instance), c, Math.max(deadline - Date.now(), 1000), { pod: rec.pod.metadata! });
    for (const e of r.events ?? []) this.o.event(rec.pod, e.type, e.reason, e.message);
    if (!r.ok && !r.timedOut) {
      this.o.event(rec.pod, 'Warning', HOOK_FAILURE.preStop.reason, HOOK_FAILURE.preStop.message);
      this.o.log.warn({ uid: rec.pod.metadata!.uid, message: r.message }, 'preStop hook failed');
    }
  }

  /** The pod has finished (Succeeded or Failed): no more restarts, back-offs or deadline. */
  private finish(rec: PodRecord): void {
    rec.prober?.stop();
    rec.prober = undefined;
    rec.done.abort();
    if (rec.deadline) clearTimeout(rec.deadline);
  }

  /**
   * activeDeadlineSeconds: counted from the pod's start time (when this node first took it); once passed,
   * the pod fails with DeadlineExceeded and its VM is stopped, as the kubelet does.
   */
  private armDeadline(rec: PodRecord): void {
    const seconds = rec.pod.spec?.activeDeadlineSeconds;
    if (seconds === undefined || rec.deadline || rec.done.signal.aborted) return;
    const start = rec.state.startTime ?? new Date();
    rec.state.startTime = start;
    const left = Math.max(0, start.getTime() + seconds * 1000 - Date.now());
    rec.deadline = setTimeout(() => void this.deadlineExceeded(rec), left);
    rec.deadline.unref();
  }

  private async deadlineExceeded(rec: PodRecord): Promise<void> {
    if (rec.removing || rec.state.phase === 'Succeeded' || rec.state.phase === 'Failed') return;
    await this.endPod(rec, {
      reason: 'DeadlineExceeded', message: 'Pod was active on the node longer than the specified deadline',
      eventType: 'Normal', killed: 'killed: the pod\'s activeDeadlineSeconds passed',
    });
  }

  /** Updates pod.json in the VM's directory (what adopt() reads after a restart). */
  private async saveMeta(instance: VmInstance, meta: Partial<PodMeta>): Promise<void> {
    const file = path.join(instance.dir, POD_META);
    const current = JSON.parse(await readFile(file, 'utf8').catch(() => '{}')) as Partial<PodMeta>;
    await writeFile(file, JSON.stringify({ ...current, ...meta }));
  }

  /** Stops the pod's VM within its grace period (preStop is issue 5's next step) and forgets it. */
  async remove(pod: V1Pod): Promise<void> {
    const uid = pod.metadata!.uid!;
    const rec = this.pods.get(uid);
    const idx = this.queue.indexOf(uid);
    if (idx >= 0) this.queue.splice(idx, 1);
    if (!rec) return;
    rec.removing = true;
    // Readiness goes on while the pod terminates (the kubelet's behaviour); liveness and startup stop.
    const prober = rec.prober;
    prober?.terminating();
    rec.prober = undefined;
    this.finish(rec);
    await rec.busy?.catch(() => undefined);
    const grace = pod.metadata?.deletionGracePeriodSeconds ?? pod.spec?.terminationGracePeriodSeconds ?? 30;
    const deadline = Date.now() + Math.max(grace, 1) * 1000;
    // Sidecars stop in parallel with the VM container, within the same grace period.
    const sidecarsStopped = this.stopSidecars(rec, grace);
    const instance = rec.instance;
    if (instance) {
      this.o.event(pod, 'Normal', 'Killing', `Stopping container ${rec.state.container.name} (VM ${uid}, grace period ${grace}s)`);
      await this.stopContainer(rec, instance, deadline);
    }
    prober?.stop();
    await this.release(rec, Math.max(deadline - Date.now(), 5000));
    await sidecarsStopped;
    this.pods.delete(uid);
  }

  private async release(rec: PodRecord, graceMs: number): Promise<void> {
    const instance = rec.instance;
    rec.instance = undefined;
    await Promise.all([
      instance?.stop(graceMs).catch((err: Error) => this.o.log.warn({ err: err.message }, 'stopping a VM failed')),
      this.stopSidecars(rec, graceMs / 1000),
    ]);
    this.kickQueue();
  }

  // ----- hybrid pods: the sidecar containers (src/runtime/sidecar-set.ts) -----

  /** The pod's containers on the engine, as one set made before its init containers run (kept while the VM is booted again). */
  private sidecarsOf(rec: PodRecord, facts: EnvFacts): SidecarSet {
    rec.sidecars ??= this.sidecarSet(rec, facts);
    return rec.sidecars;
  }

  /**
   * The VM container runs: its sidecars start (in the background: pulls may take a while); those still
   * running from before the VM was booted again, and native sidecars, are kept.
   */
  private startSidecars(rec: PodRecord, facts: EnvFacts): void {
    void this.sidecarsOf(rec, facts).start().catch((err: Error) => this.o.log.warn({ uid: rec.pod.metadata!.uid, err: err.message }, 'starting sidecars failed'));
  }

  private sidecarSet(rec: PodRecord, facts: EnvFacts): SidecarSet {
    const pod = rec.pod;
    const uid = pod.metadata!.uid!;
    const set: SidecarSet = new SidecarSet({
      engine: () => this.engine(), pod, hostIP: this.o.hostIP, log: this.o.log,
      ...(this.o.restartBackoff ? { restartBackoff: this.o.restartBackoff } : {}),
      event: (type, reason, message) => this.o.event(rec.pod, type, reason, message),
      changed: () => {
        if (rec.sidecars !== set) return;
        rec.state = { ...rec.state, sidecars: set.states(), nativeSidecars: set.nativeStates() };
        this.o.changed(uid);
      },
      env: (c) => resolveEnv(rec.pod, c, this.o.lookups, facts),
      mounts: async (c, env) => (await this.volumes.prepare(rec.pod, [c], facts, env)).map((v) => ({
        hostPath: v.subPath ? path.join(v.share.hostPath, v.subPath) : v.share.hostPath, containerPath: v.mountPath, readOnly: v.readOnly,
      })),
      pullSecrets: () => this.pullSecrets(rec.pod),
    });
    rec.state = { ...rec.state, sidecars: set.states(), nativeSidecars: set.nativeStates() };
    return set;
  }

  /** The pod's sidecars are stopped within `graceSeconds` and removed from the engine. */
  private async stopSidecars(rec: PodRecord, graceSeconds: number): Promise<void> {
    const set = rec.sidecars;
    if (!set) return;
    rec.sidecars = undefined;
    await set.stop(Math.max(1, graceSeconds)).catch((err: Error) => this.o.log.warn({ uid: rec.pod.metadata!.uid, err: err.message }, 'stopping sidecars failed'));
    const stopped = (list: ContainerRuntimeState[]) => list.map((st) => (st.state.kind === 'running'
      ? { ...st, ready: false, started: false, state: { kind: 'terminated' as const, exitCode: 143, reason: 'Completed', startedAt: st.state.startedAt, finishedAt: new Date() } }
      : { ...st, ready: false }));
    rec.state = { ...rec.state, sidecars: stopped(set.states()), nativeSidecars: stopped(set.nativeStates()) };
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
      // A VM adopted before its init containers all completed is booted again: they run from the start.
      if (!pod || !instance || (meta.initialized === false && (pod.spec?.initContainers ?? []).length > 0)) {
        if (instance) await instance.stop(10_000).catch(() => undefined);
        removed.push(uid);
        continue;
      }
      const container = vmContainer(pod);
      const startedAt = new Date(meta.startedAt ?? Date.now());
      const rec: PodRecord = {
        pod,
        instance,
        backoff: new RestartBackoff(this.o.restartBackoff),
        done: new AbortController(),
        state: {
          ...this.initialState(pod),
          phase: 'Running', startTime: pod.status?.startTime ? new Date(pod.status.startTime) : startedAt, podIP: this.o.hostIP, vmReady: true, initialized: true,
          initContainers: (pod.spec!.initContainers ?? []).map((ic) => completedInit(ic, pod, uid, meta.imageDigest!)),
          container: {
            name: container.name, image: container.image ?? '', imageID: `${container.image}@${meta.imageDigest}`, containerID: `vmlet://${uid}`,
            state: { kind: 'running', startedAt }, ready: true, started: true, restartCount: meta.restartCount ?? 0,
          },
        },
      };
      // pod.json of an older vmlet lacks the image: taken as the spec's (a change made while vmlet was down
      // then goes unnoticed until the next one).
      rec.vmImage = meta.image ?? container.image;
      this.pods.set(uid, rec);
      this.watch(rec, instance);
      if (engineContainers(pod).length > 0) {
        // Running sidecars are kept (same engine containers), exited ones restarted.
        const set = this.sidecarSet(rec, { nodeName: this.o.nodeName, hostIP: this.o.hostIP, podIP: this.o.hostIP });
        rec.sidecars = set;
        void set.adopt().catch((err: Error) => this.o.log.warn({ uid, err: err.message }, 'adopting sidecars failed'));
      }
      // Probes start over, as after a kubelet restart: readiness keeps its last verdict until the first
      // result (the pod stays Ready meanwhile).
      this.startProbes(rec, instance, startedAt);
      // The env of `kubectl exec` sessions, resolved again (pod.json does not keep it: it may hold Secrets).
      void (this.o.services?.() ?? Promise.resolve([]))
        .then((services) => resolveEnv(pod, container, this.o.lookups, { nodeName: this.o.nodeName, hostIP: this.o.hostIP, podIP: this.o.hostIP, services }))
        .then((env) => (rec.env ??= env), (err: Error) => this.o.log.warn({ uid, err: err.message }, 'resolving the env of an adopted pod failed'));
      adopted.push(uid);
    }
    // Sidecars of pods that are gone (deleted while vmlet was down): only with an engine configured, so
    // that a node without hybrid pods does not load dockerode for this.
    if (this.o.sidecarEngine) void this.removeOrphanSidecars(alive);
    return { adopted, removed };
  }

  private async removeOrphanSidecars(alive: (uid: string) => V1Pod | undefined): Promise<void> {
    try {
      const engine = await this.engine();
      let orphans = (await engine.list()).filter((s) => s.pod.uid && !alive(s.pod.uid) && !this.pods.has(s.pod.uid));
      // Two passes: the engine refuses to remove a network's owner before the containers that joined it.
      for (let pass = 0; pass < 2 && orphans.length > 0; pass++) {
        const left: typeof orphans = [];
        for (const s of orphans) {
          this.o.log.info({ uid: s.pod.uid, container: s.engineName }, 'removing the sidecar container of a pod that is gone');
          await engine.remove(s.id, { force: true }).catch((err: Error) => {
            if (pass === 1) throw err;
            left.push(s);
          });
        }
        orphans = left;
      }
    } catch (err) {
      this.o.log.warn({ err: (err as Error).message }, 'removing sidecars of pods that are gone failed');
    }
  }

  /** vmlet is stopping: VMs keep running, to be adopted by the next vmlet. */
  async detachAll(): Promise<void> {
    await Promise.all([...this.pods.values()].map(async (r) => {
      r.sidecars?.detach();
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
    if (command.length === 0) throw new KubeletError(400, 'BadRequest', 'you must specify a command to run');
    const set = this.sidecarOf(pod, container);
    if (set) return set.exec(container, command, opts).catch((err: unknown) => {
      throw engineToKubelet(err, `exec of ${JSON.stringify(command[0])} in container "${container}"`);
    });
    const { rec, instance } = this.running(pod, container);
    const c = vmContainer(rec.pod);
    return instance.agent.exec({
      argv: command, stdin: opts.stdin, ...(rec.env ? { env: rec.env } : {}), ...(c.workingDir ? { cwd: c.workingDir } : {}),
      ...(opts.tty ? { tty: { rows: opts.size?.rows ?? 24, cols: opts.size?.cols ?? 80 } } : {}),
    }).catch((err: unknown) => {
      throw agentToKubelet(err, `exec of ${JSON.stringify(command[0])} in container "${container}"`);
    });
  }

  async attach(pod: V1Pod, container: string, opts: StreamOptions): Promise<StreamedProcess> {
    const set = this.sidecarOf(pod, container);
    if (set) return set.attach(container, opts).catch((err: unknown) => {
      throw engineToKubelet(err, `attach to container "${container}"`);
    });
    const { rec, instance } = this.running(pod, container);
    const c = specContainer(rec.pod, container)!;
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
    const set = this.sidecarOf(pod, container);
    if (set) {
      const id = set.containerId(container, opts.previous === true);
      if (!id) {
        const s = set.stateOf(container).state;
        if (opts.previous) throw new KubeletError(400, 'BadRequest', `previous terminated container "${container}" in pod "${pod.metadata!.name}" not found`);
        throw new KubeletError(400, 'BadRequest', `${where} ${s.kind === 'waiting' ? `is waiting to start: ${s.reason}` : 'has no container'}`);
      }
      return set.logs(id, {
        ...(opts.follow && !opts.previous ? { follow: true } : {}), ...(opts.tailLines !== undefined ? { tailLines: opts.tailLines } : {}),
        ...(opts.sinceTime ? { sinceTime: opts.sinceTime } : {}), ...(opts.timestamps ? { timestamps: true } : {}),
        ...(opts.limitBytes !== undefined ? { limitBytes: opts.limitBytes } : {}), ...(opts.stream ? { stream: opts.stream } : {}),
      }).catch((err: unknown) => {
        throw engineToKubelet(err, `logs of ${where}`);
      });
    }
    const instance = rec.instance;
    if (!instance) {
      const s = rec.state.container.state;
      const why = s.kind === 'waiting' ? `is waiting to start: ${s.reason}` : 'has no running VM: its logs lived in the VM';
      throw new KubeletError(400, 'BadRequest', `${where} ${why}`);
    }
    const c = specContainer(rec.pod, container)!;
    const main = rec.state.container;
    if (c.name === main.name && main.state.kind === 'waiting' && main.restartCount === 0 && !opts.previous) {
      throw new KubeletError(400, 'BadRequest', `${where} is waiting to start: ${main.state.reason}`);
    }
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
    if (container !== undefined && !specContainer(rec.pod, container)) {
      throw new KubeletError(404, 'NotFound', `container "${container}" not found in pod "${pod.metadata?.namespace}/${pod.metadata?.name}"`);
    }
    return rec;
  }

  /** The pod's sidecar set when `container` names one of its sidecars (404 for an unknown name). */
  private sidecarOf(pod: V1Pod, container: string): SidecarSet | undefined {
    const rec = this.record(pod, container);
    if (!isSidecar(rec.pod, container)) return undefined;
    if (!rec.sidecars || rec.removing) {
      throw new KubeletError(400, 'BadRequest', `container "${container}" in pod "${pod.metadata!.name}" is not running (its sidecars are not started${rec.state.waiting ? `: ${rec.state.waiting.reason}` : ''})`);
    }
    return rec.sidecars;
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
    this.finish(rec);
    rec.state = { ...rec.state, phase: 'Failed', waiting: { reason, message }, container: { ...rec.state.container, state: { kind: 'waiting', reason, message } } };
    this.o.event(rec.pod, 'Warning', reason, message);
    this.o.changed(rec.pod.metadata!.uid!);
  }
}

/** An init container of an adopted pod: it completed before (the VM would not be adopted otherwise). */
function completedInit(ic: V1Container, pod: V1Pod, uid: string, imageDigest: string): ContainerRuntimeState {
  const posted = pod.status?.initContainerStatuses?.find((s) => s.name === ic.name);
  const t = posted?.state?.terminated;
  return {
    name: ic.name, image: ic.image ?? '', imageID: `${ic.image}@${imageDigest}`, containerID: `vmlet://${uid}-${ic.name}`,
    state: { kind: 'terminated', exitCode: 0, reason: 'Completed', ...(t?.startedAt ? { startedAt: new Date(t.startedAt) } : {}), finishedAt: t?.finishedAt ? new Date(t.finishedAt) : new Date() },
    ready: false, started: false, restartCount: posted?.restartCount ?? 0,
  };
}

/** A container of the pod by name: the VM container, an init container (they run in the same VM) or a sidecar. */
function specContainer(pod: V1Pod, name: string): V1Container | undefined {
  return [...(pod.spec?.containers ?? []), ...(pod.spec?.initContainers ?? [])].find((c) => c.name === name);
}

/** Is `name` one of the pod's containers on the engine (a sidecar, a native sidecar, an init container there)? */
function isSidecar(pod: V1Pod, name: string): boolean {
  return engineContainers(pod).some((x) => x.container.name === name);
}

/** Resolves after `ms`, or at once when `signal` aborts (never rejects). */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return delay(ms, undefined, { signal }).catch(() => undefined);
}

/** "name_namespace(uid)": how the kubelet names a pod in its messages. */
function podKey(pod: V1Pod): string {
  return `${pod.metadata!.name}_${pod.metadata!.namespace}(${pod.metadata!.uid})`;
}

/** The waiting message of a container in CrashLoopBackOff, in the kubelet's words. */
function backOffMessage(waitMs: number, container: string, pod: V1Pod): string {
  return `back-off ${RestartBackoff.format(waitMs)} restarting failed container=${container} pod=${podKey(pod)}`;
}

/**
 * The exit of main process `id` (register before starting it); undefined when `signal` aborts or the
 * VM exits first.
 */
function waitForMainExit(instance: VmInstance, id: string, signal: AbortSignal): Promise<MainExitEvent | undefined> {
  return new Promise((resolve) => {
    const onExit = (ev: MainExitEvent) => {
      if (ev.id === id) done(ev);
    };
    const onAbort = () => done(undefined);
    function done(ev: MainExitEvent | undefined) {
      instance.agent.off('main-exit', onExit);
      signal.removeEventListener('abort', onAbort);
      resolve(ev);
    }
    instance.agent.on('main-exit', onExit);
    signal.addEventListener('abort', onAbort, { once: true });
    void instance.vm.exited.then(() => done(undefined));
  });
}

/** The VM container's containerPorts, forwarded from the pod IP (the host's) so that sidecars reach the VM there. */
function vmPortForwards(c: V1Container, hostIP: string): PortForward[] {
  return (c.ports ?? []).filter((p) => p.containerPort > 0).map((p) => ({
    protocol: p.protocol === 'UDP' ? 'udp' as const : 'tcp' as const, hostAddress: hostIP, hostPort: p.containerPort, guestPort: p.containerPort,
  }));
}

/** A sidecar engine failure as the kubelet API answers it. */
function engineToKubelet(err: unknown, what: string): KubeletError {
  if (err instanceof KubeletError) return err;
  if (err instanceof SidecarEngineError) {
    const status = err.reason === 'NotFound' ? 404 : err.reason === 'Conflict' || err.reason === 'InvalidSpec' ? 400 : 500;
    return new KubeletError(status, status === 404 ? 'NotFound' : status === 400 ? 'BadRequest' : 'InternalError', `${what}: ${err.message}`);
  }
  return new KubeletError(500, 'InternalError', `${what}: ${(err as Error).message}`);
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
