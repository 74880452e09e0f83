// A bounded cache of webhook answers (TokenReview, SubjectAccessReview): each entry expires after the TTL
// it was stored with, the least recently used entry goes first when the cache is full, and concurrent
// look-ups of one key share one request (the apiserver's caches do the same with singleflight).

/** Milliseconds since some epoch; injected so tests control time. */
export type Clock = () => number;

export class ExpiringCache<V> {
  // A Map iterates in insertion order: re-inserting on a hit keeps the least recently used first.
  private readonly entries = new Map<string, { value: V; expires: number }>();
  private readonly pending = new Map<string, Promise<V>>();

  constructor(
    private readonly maxEntries: number,
    private readonly clock: Clock = Date.now,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  get(key: string): V | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    this.entries.delete(key);
    if (entry.expires <= this.clock()) return undefined;
    this.entries.set(key, entry);
    return entry.value;
  }

  set(key: string, value: V, ttlMs: number): void {
    this.entries.delete(key);
    if (ttlMs <= 0) return;
    this.entries.set(key, { value, expires: this.clock() + ttlMs });
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
  }

  /**
   * The cached value, else the result of `load` (shared by callers that ask while it runs), stored for
   * `ttl(value)` ms. A failed load is not cached: the next caller tries again.
   */
  async getOrLoad(key: string, load: () => Promise<V>, ttl: (value: V) => number): Promise<V> {
    const hit = this.get(key);
    if (hit !== undefined) return hit;
    const running = this.pending.get(key);
    if (running) return running;
    const promise = (async () => {
      try {
        const value = await load();
        this.set(key, value, ttl(value));
        return value;
      } finally {
        this.pending.delete(key);
      }
    })();
    this.pending.set(key, promise);
    return promise;
  }
}
