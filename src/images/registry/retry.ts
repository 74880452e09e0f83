// Retry pacing for registry requests: exponential back-off with jitter, the registry's Retry-After when
// it sends one, and a budget of consecutive failures that progress (bytes that got through) refills.
// (src/kube has a Backoff too; src/images sits below it and must not import upward.)
import { RegistryError } from './errors.ts';

export interface RetryPolicy {
  /** Attempts in a row without progress before giving up (1 = no retry). */
  attempts: number;
  initialDelayMs: number;
  maxDelayMs: number;
  /** A Retry-After longer than this is cut to it, so a registry cannot park a pull for hours. */
  maxRetryAfterMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 5, initialDelayMs: 500, maxDelayMs: 15_000, maxRetryAfterMs: 60_000 };

/** Retry-After (RFC 9110): delay-seconds or an HTTP date; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  if (text === undefined || text.trim() === '') return undefined;
  if (/^\s*\d+\s*$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** Resolves after ms; rejects with an Aborted RegistryError when signal fires. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(aborted());
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    function onAbort(): void {
      clearTimeout(timer);
      reject(aborted());
    }
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function aborted(): RegistryError {
  return new RegistryError({ reason: 'Aborted', detail: 'aborted' });
}

/** One operation's retry bookkeeping. */
export class RetryState {
  private failures = 0;

  constructor(
    private readonly policy: RetryPolicy,
    /** Which errors are worth another attempt; default: those the error itself marks retryable. */
    private readonly retryable: (err: RegistryError) => boolean = (err) => err.retryable,
    private readonly random: () => number = Math.random,
  ) {}

  /** Bytes got through since the last failure: the next failure starts a fresh budget. */
  progressed(): void {
    this.failures = 0;
  }

  /**
   * After a failed attempt: rethrows err when it is not retryable or the budget is spent; otherwise
   * waits (Retry-After, else back-off) and returns, and the caller tries again.
   */
  async failed(err: unknown, signal?: AbortSignal, onRetry?: (delayMs: number, err: RegistryError) => void): Promise<void> {
    if (!(err instanceof RegistryError) || !this.retryable(err)) throw err;
    this.failures += 1;
    if (this.failures >= this.policy.attempts) throw err;
    const ceiling = Math.min(this.policy.maxDelayMs, this.policy.initialDelayMs * 2 ** (this.failures - 1));
    const backoff = Math.round(ceiling / 2 + (this.random() * ceiling) / 2);
    const delay = err.retryAfterMs !== undefined ? Math.min(err.retryAfterMs, this.policy.maxRetryAfterMs) : backoff;
    onRetry?.(delay, err);
    await sleep(delay, signal);
  }
}
