// The work queue of pod controllers (the API's pods, static pods): one worker per pod UID at a time, at
// most `concurrency` pods at once, and a UID queued again while its worker runs is worked once more
// after it (never twice at the same time, never lost); a UID whose work failed is queued again once its
// back-off has passed (`retryAfter`), and meanwhile `backingOff` says so. What a worker does is the caller's.
export class UidQueue {
  private readonly queue: string[] = [];
  private readonly running = new Set<string>();
  private readonly again = new Set<string>();
  private readonly retries = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  private stopped = false;

  constructor(
    private readonly work: (uid: string) => Promise<void>,
    private readonly concurrency = 4,
  ) {}

  enqueue(uid: string): void {
    if (this.stopped) return;
    if (this.running.has(uid)) {
      this.again.add(uid);
      return;
    }
    if (!this.queue.includes(uid)) this.queue.push(uid);
    this.pump();
  }

  /** Queues `uid` again in `delayMs` (replacing a retry already planned for it). */
  retryAfter(uid: string, delayMs: number): void {
    this.cancelRetry(uid);
    const timer = setTimeout(() => {
      this.retries.delete(uid);
      this.enqueue(uid);
    }, delayMs);
    timer.unref();
    this.retries.set(uid, { at: Date.now() + delayMs, timer });
  }

  /** A retry of `uid` is planned and its time has not come. */
  backingOff(uid: string): boolean {
    const r = this.retries.get(uid);
    return r !== undefined && Date.now() < r.at;
  }

  cancelRetry(uid: string): void {
    clearTimeout(this.retries.get(uid)?.timer);
    this.retries.delete(uid);
  }

  /** Nothing new starts, planned retries included; workers under way finish. */
  stop(): void {
    this.stopped = true;
    for (const uid of [...this.retries.keys()]) this.cancelRetry(uid);
  }

  private pump(): void {
    while (this.running.size < this.concurrency && this.queue.length) {
      const uid = this.queue.shift()!;
      this.running.add(uid);
      void this.work(uid).finally(() => {
        this.running.delete(uid);
        if (this.again.delete(uid)) this.enqueue(uid);
        this.pump();
      });
    }
  }
}
