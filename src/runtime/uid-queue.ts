// The work queue of pod controllers (the API's pods, static pods): one worker per pod UID at a time, at
// most `concurrency` pods at once, and a UID queued again while its worker runs is worked once more
// after it (never twice at the same time, never lost). What a worker does is the caller's.
export class UidQueue {
  private readonly queue: string[] = [];
  private readonly running = new Set<string>();
  private readonly again = new Set<string>();
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

  /** Nothing new starts; workers under way finish. */
  stop(): void {
    this.stopped = true;
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
