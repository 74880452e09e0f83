// The static pod source: the manifest directory, read at start, again on every change fs.watch reports
// (debounced) and every 20 s (fs.watch misses changes on some file systems, and a directory created later
// is only seen by a rescan). Each scan yields the full set of static pods; the difference to the last set
// goes to the handler — a removed pod first, then an added one, so an edited file replaces its pod (its
// UID is a hash of the content) within the node's VM slots.
//
// A file vmlet cannot read is logged once per content (one line: the file and what is wrong) and changes
// nothing else; the pods it had keep running (an editor's half-written save must not stop a VM). A pod
// whose name another file already declares is refused the same way.
import { watch, type FSWatcher } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { V1Pod } from '@kubernetes/client-node';
import type { Logger } from '../observability/log.ts';
import { CONFIG_SEEN_ANNOTATION, isManifestFile, ManifestError, parseManifest } from './manifests.ts';

export interface StaticPodSourceOptions {
  dir: string;
  nodeName: string;
  log: Logger;
  /** Full rescans this often (the kubelet's fileCheckFrequency is 20 s). */
  rescanIntervalMs?: number;
  /** Quiet time after an fs.watch event before the scan. */
  debounceMs?: number;
}

export interface StaticPodChanges {
  added: V1Pod[];
  removed: V1Pod[];
}

interface FileState {
  text: string;
  pods: V1Pod[];
  /** The message logged for this content, when it is broken. */
  error?: string;
}

export class StaticPodSource {
  private readonly files = new Map<string, FileState>();
  private current = new Map<string, V1Pod>();
  private readonly fileOf = new Map<string, string>();
  private watcher?: FSWatcher;
  private timer?: NodeJS.Timeout;
  private debounce?: NodeJS.Timeout;
  private scanning?: Promise<void>;
  private rescan = false;
  private missingLogged = false;
  private handler?: (changes: StaticPodChanges) => void | Promise<void>;

  constructor(private readonly o: StaticPodSourceOptions) {}

  /** The manifest file a static pod comes from. */
  file(uid: string): string | undefined {
    return this.fileOf.get(uid);
  }

  /** Static pods by UID, as of the last scan. */
  pods(): Map<string, V1Pod> {
    return this.current;
  }

  /** Reads the directory and returns what changed since the last scan (the first scan: everything is added). */
  async scan(): Promise<StaticPodChanges> {
    const { dir, nodeName, log } = this.o;
    const entries = await readdir(dir, { withFileTypes: true }).catch((err: NodeJS.ErrnoException) => {
      if (!this.missingLogged) log.warn({ dir, err: err.code ?? err.message }, `pod manifest path ${dir} cannot be read; it is read again every ${Math.round((this.o.rescanIntervalMs ?? 20_000) / 1000)}s`);
      this.missingLogged = true;
      return undefined;
    });
    if (!entries) return { added: [], removed: [] };
    this.missingLogged = false;
    const names = entries.filter((e) => (e.isFile() || e.isSymbolicLink()) && isManifestFile(e.name)).map((e) => e.name).sort();
    const next = new Map<string, V1Pod>();
    const byName = new Map<string, string>();
    const candidates: Array<{ file: string; pod: V1Pod; state: FileState }> = [];
    for (const name of [...this.files.keys()]) if (!names.includes(name)) this.files.delete(name);
    for (const name of names) {
      const file = path.join(dir, name);
      const text = await readFile(file, 'utf8').catch(() => undefined);
      if (text === undefined) continue; // removed between readdir and here
      let state = this.files.get(name);
      if (!state || state.text !== text) {
        const previous = state?.pods ?? [];
        try {
          const seen = new Date().toISOString();
          const pods = parseManifest(file, text, nodeName);
          for (const pod of pods) pod.metadata!.annotations![CONFIG_SEEN_ANNOTATION] = seen;
          state = { text, pods };
        } catch (err) {
          // Whatever the YAML library throws besides (an alias it cannot resolve, ...) is this file's fault too.
          const message = err instanceof ManifestError ? err.message : `${file}: ${(err as Error).message.split('\n')[0]}`;
          state = { text, pods: previous, error: message };
          log.error({ file, err: message }, `static pod manifest ignored: ${message}${previous.length ? ' (its pods keep running as they were)' : ''}`);
        }
        this.files.set(name, state);
      }
      for (const pod of state.pods) candidates.push({ file, pod, state });
    }
    // Two files declaring one pod name: the pod that runs already keeps it, else the first file's; the other is refused.
    const running = (c: (typeof candidates)[number]) => this.current.has(c.pod.metadata!.uid!);
    for (const c of [...candidates.filter(running), ...candidates.filter((x) => !running(x))]) {
      const key = `${c.pod.metadata!.namespace}/${c.pod.metadata!.name}`;
      const owner = byName.get(key);
      if (owner !== undefined) {
        if (!c.state.error?.includes(key)) {
          c.state.error = `${c.file}: pod ${key} is already declared in ${owner}`;
          log.error({ file: c.file, pod: key, declaredIn: owner }, `static pod manifest ignored: ${c.state.error}`);
        }
        continue;
      }
      byName.set(key, c.file);
      next.set(c.pod.metadata!.uid!, c.pod);
      this.fileOf.set(c.pod.metadata!.uid!, c.file);
    }
    const removed = [...this.current.entries()].filter(([uid]) => !next.has(uid)).map(([, p]) => p);
    const added = [...next.entries()].filter(([uid]) => !this.current.has(uid)).map(([, p]) => p);
    this.current = next;
    for (const uid of [...this.fileOf.keys()]) if (!next.has(uid)) this.fileOf.delete(uid);
    return { added, removed };
  }

  /** Watches the directory and rescans; `handler` hears every change (one at a time, in order). */
  start(handler: (changes: StaticPodChanges) => void | Promise<void>): void {
    this.handler = handler;
    this.watchDir();
    this.timer = setInterval(() => this.trigger(), this.o.rescanIntervalMs ?? 20_000);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.handler = undefined;
    clearInterval(this.timer);
    clearTimeout(this.debounce);
    this.watcher?.close();
    this.watcher = undefined;
    await this.scanning?.catch(() => undefined);
  }

  private watchDir(): void {
    if (this.watcher) return;
    try {
      this.watcher = watch(this.o.dir, { persistent: false }, () => {
        clearTimeout(this.debounce);
        this.debounce = setTimeout(() => this.trigger(), this.o.debounceMs ?? 100);
      });
      // The directory went away (or the watch failed): rescans continue, and watch it again once it is back.
      this.watcher.on('error', () => {
        this.watcher?.close();
        this.watcher = undefined;
      });
    } catch {
      this.watcher = undefined;
    }
  }

  /** Scans (once more after the current scan, if one runs) and hands the changes to the handler. */
  private trigger(): void {
    if (!this.handler) return;
    if (this.scanning) {
      this.rescan = true;
      return;
    }
    this.scanning = (async () => {
      do {
        this.rescan = false;
        this.watchDir();
        const changes = await this.scan();
        if (this.handler && (changes.added.length || changes.removed.length)) await this.handler(changes);
      } while (this.rescan && this.handler);
    })()
      .catch((err: unknown) => this.o.log.error({ err }, 'reading static pod manifests failed'))
      .finally(() => {
        this.scanning = undefined;
      });
  }
}
