// vmlet's own list+watch ("reflector"), instead of client-node's informer, which can stall silently on a
// half-open connection and stops for good on the first non-410 error. This one:
//   - lists, then watches from the list's resourceVersion with allowWatchBookmarks and a random timeoutSeconds
//     (300–600 s, as client-go does), so a healthy watch costs one request every few minutes;
//   - runs an idle watchdog: no event and no bookmark for `idleTimeoutMs` means a dead connection → re-watch;
//   - relists on 410 Gone (emitting deletes for objects that vanished meanwhile), and backs off on errors;
//   - keeps a local store, and can replay it to the handler on a resync period without any request.
import { createInterface } from 'node:readline';
import type { Logger } from '../observability/log.ts';
import type { AgentMetrics } from '../observability/metrics.ts';
import { Backoff, sleep } from './backoff.ts';
import { describeApiError, httpStatus, type KubeApi } from './client.ts';

export interface KubeObject {
  metadata?: { name?: string; namespace?: string; resourceVersion?: string; uid?: string };
}

export interface ListResult<T> {
  items: T[];
  metadata?: { resourceVersion?: string };
}

export interface ReflectorHandler<T> {
  added?(obj: T): void;
  updated?(obj: T, old: T): void;
  deleted?(obj: T): void;
  /** After each successful list (first sync and every relist). */
  synced?(): void;
}

export interface ReflectorOptions<T extends KubeObject> {
  /** Resource name for logs and metrics, e.g. "nodes". */
  resource: string;
  api: KubeApi;
  /** The list request (its query must match `watchQuery`). */
  list: () => Promise<ListResult<T>>;
  /** Path of the watch, e.g. /api/v1/nodes. */
  watchPath: string;
  /** Query parameters shared with the list (fieldSelector, labelSelector). */
  watchQuery?: Record<string, string>;
  handler: ReflectorHandler<T>;
  log: Logger;
  metrics: AgentMetrics;
  /** No event or bookmark for this long means the connection is dead. The API server bookmarks about every minute. */
  idleTimeoutMs?: number;
  /** Range of the watch's timeoutSeconds. */
  watchTimeoutSeconds?: [number, number];
  /** Replays the store to `handler.updated` this often (0 = never); costs no request. */
  resyncIntervalMs?: number;
}

type WatchEnd = 'closed' | 'idle' | 'gone' | 'error' | 'stopped';

export class Reflector<T extends KubeObject> {
  private readonly store = new Map<string, T>();
  private readonly stopper = new AbortController();
  private readonly backoff = new Backoff(500, 10_000);
  private resourceVersion = '';
  private running?: Promise<void>;
  private resyncTimer?: NodeJS.Timeout;
  private hasSynced = false;

  constructor(private readonly opts: ReflectorOptions<T>) {}

  get synced(): boolean {
    return this.hasSynced;
  }

  /** Objects as last seen. */
  items(): T[] {
    return [...this.store.values()];
  }

  get(namespace: string | undefined, name: string): T | undefined {
    return this.store.get(keyOf({ metadata: { namespace, name } }));
  }

  start(): void {
    if (this.running) return;
    this.running = this.loop();
    const period = this.opts.resyncIntervalMs ?? 0;
    if (period > 0) {
      this.resyncTimer = setInterval(() => {
        for (const obj of this.store.values()) this.opts.handler.updated?.(obj, obj);
      }, period);
      this.resyncTimer.unref();
    }
  }

  async stop(): Promise<void> {
    this.stopper.abort();
    clearInterval(this.resyncTimer);
    await this.running;
  }

  private async loop(): Promise<void> {
    const { log, resource } = this.opts;
    let needList = true;
    while (!this.stopper.signal.aborted) {
      if (needList) {
        try {
          await this.relist();
          needList = false;
        } catch (err) {
          log.debug({ resource, err: describeApiError(err) }, 'list failed');
          await sleep(this.backoff.next(), this.stopper.signal);
          continue;
        }
      }
      const started = Date.now();
      const end = await this.watchOnce();
      if (end === 'stopped') break;
      this.opts.metrics.watchRestarts.inc({ resource, reason: end });
      if (end === 'gone') needList = true;
      // A watch that ends at once (a server shutting down, an error answer) must not turn into a hot loop.
      if (end === 'error' || Date.now() - started < 1000) await sleep(this.backoff.next(), this.stopper.signal);
      else this.backoff.reset();
    }
  }

  private async relist(): Promise<void> {
    const result = await this.opts.list();
    const seen = new Set<string>();
    for (const obj of result.items) {
      const key = keyOf(obj);
      seen.add(key);
      this.apply('ADDED', obj);
    }
    for (const [key, old] of [...this.store]) {
      if (!seen.has(key)) {
        this.store.delete(key);
        this.opts.handler.deleted?.(old);
      }
    }
    this.resourceVersion = result.metadata?.resourceVersion ?? '';
    this.hasSynced = true;
    this.backoff.reset();
    this.opts.handler.synced?.();
  }

  private apply(type: string, obj: T): void {
    const key = keyOf(obj);
    const old = this.store.get(key);
    if (type === 'DELETED') {
      // A delete of something never seen (it came and went between list and watch) is no news.
      if (old) {
        this.store.delete(key);
        this.opts.handler.deleted?.(old);
      }
      return;
    }
    this.store.set(key, obj);
    if (old) {
      if (old.metadata?.resourceVersion !== obj.metadata?.resourceVersion) this.opts.handler.updated?.(obj, old);
    } else {
      this.opts.handler.added?.(obj);
    }
  }

  /** One watch request, until the server closes it, it goes idle, or it fails. */
  private async watchOnce(): Promise<WatchEnd> {
    const { api, resource, log } = this.opts;
    const [lo, hi] = this.opts.watchTimeoutSeconds ?? [300, 600];
    const query = {
      ...this.opts.watchQuery,
      watch: 'true',
      allowWatchBookmarks: 'true',
      resourceVersion: this.resourceVersion,
      timeoutSeconds: String(Math.floor(lo + Math.random() * (hi - lo))),
    };

    const abort = new AbortController();
    const onStop = () => abort.abort();
    this.stopper.signal.addEventListener('abort', onStop, { once: true });
    let idle = false;
    let idleTimer: NodeJS.Timeout | undefined;
    const idleMs = this.opts.idleTimeoutMs ?? 180_000;
    const touch = () => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        idle = true;
        abort.abort();
      }, idleMs);
    };

    try {
      touch();
      api.countWatch(resource);
      let res;
      try {
        res = await api.http.stream(this.opts.watchPath, query, abort.signal);
      } catch (err) {
        const status = httpStatus(err);
        if (!status) throw err;
        api.health.succeeded();
        if (status === 410) return 'gone';
        log.warn({ resource, err: describeApiError(err) }, 'watch refused');
        return 'error';
      }
      api.health.succeeded();
      let end: WatchEnd = 'closed';
      const lines = createInterface({ input: res, crlfDelay: Infinity });
      for await (const line of lines) {
        touch();
        if (!line.trim()) continue;
        let event: { type: string; object: T & { code?: number; metadata?: { resourceVersion?: string } } };
        try {
          event = JSON.parse(line) as typeof event;
        } catch {
          log.warn({ resource, line: line.slice(0, 200) }, 'unparsable watch event ignored');
          continue;
        }
        if (event.type === 'ERROR') {
          const status = event.object as { code?: number; message?: string };
          if (status.code === 410) end = 'gone';
          else {
            log.debug({ resource, status }, 'watch error event');
            end = 'error';
          }
          break;
        }
        if (event.type === 'BOOKMARK') {
          this.resourceVersion = event.object.metadata?.resourceVersion ?? this.resourceVersion;
          continue;
        }
        this.resourceVersion = event.object.metadata?.resourceVersion ?? this.resourceVersion;
        this.apply(event.type, event.object);
      }
      res.destroy();
      return end;
    } catch (err) {
      if (this.stopper.signal.aborted) return 'stopped';
      if (idle) {
        log.info({ resource, idleSeconds: idleMs / 1000 }, 'watch idle for too long; re-establishing');
        return 'idle';
      }
      // A connection cut mid-stream (server restart) or refused: the outage is ApiHealth's to log.
      api.health.failed(describeApiError(err, api.server));
      return 'error';
    } finally {
      clearTimeout(idleTimer);
      this.stopper.signal.removeEventListener('abort', onStop);
      abort.abort();
    }
  }
}

function keyOf(obj: KubeObject): string {
  return `${obj.metadata?.namespace ?? ''}/${obj.metadata?.name ?? ''}`;
}
