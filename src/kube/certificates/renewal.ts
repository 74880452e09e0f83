// The renewal schedule both certificate managers share (client-cert.ts's ClientCertRotator and
// serving-cert.ts's ServingCertManager), as the kubelet's certificate manager does it: renew at a random
// point between 70% and 90% of the certificate's life; a failed renewal is tried again after 30 s,
// doubling up to 1 h; stop() ends it all, a CSR being waited for included.
import { X509Certificate } from 'node:crypto';
import type { Logger } from '../../observability/log.ts';
import { rotationDeadline } from './csr.ts';

export interface RenewalOptions {
  log: Logger;
  /** What the log lines call it: "client certificate", "kubelet serving certificate". */
  what: string;
  random?: () => number;
}

export abstract class RenewalSchedule {
  private timer?: NodeJS.Timeout;
  protected readonly stopper = new AbortController();
  private failures = 0;

  constructor(private readonly r: RenewalOptions) {}

  stop(): void {
    clearTimeout(this.timer);
    this.stopper.abort();
  }

  /** Gets a new certificate (a CSR, waited for until issued) and puts it in place; resolves with its PEM. */
  protected abstract renew(): Promise<string>;

  /** Schedules the renewal of the certificate `certPem`. */
  protected schedule(certPem: string): void {
    const x = new X509Certificate(certPem);
    const deadline = rotationDeadline(new Date(x.validFrom), new Date(x.validTo), (this.r.random ?? Math.random)());
    this.r.log.info({ notAfter: x.validTo, rotateAt: deadline.toISOString() }, `${this.r.what} rotation scheduled`);
    this.at(deadline.getTime());
  }

  protected at(when: number): void {
    clearTimeout(this.timer);
    // setTimeout holds at most ~24.8 days; a later deadline is reached in steps.
    const delay = Math.max(0, Math.min(when - Date.now(), 2 ** 31 - 1));
    this.timer = setTimeout(() => (Date.now() >= when ? void this.run() : this.at(when)), delay);
    this.timer.unref();
  }

  private async run(): Promise<void> {
    try {
      const cert = await this.renew();
      this.failures = 0;
      this.schedule(cert);
    } catch (err) {
      if (this.stopper.signal.aborted) return;
      const retryMs = Math.min(30_000 * 2 ** this.failures++, 3600_000);
      this.r.log.warn({ err: (err as Error).message, retryInSeconds: retryMs / 1000 }, `${this.r.what} renewal failed; trying again`);
      this.at(Date.now() + retryMs);
    }
  }
}
