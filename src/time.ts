// Time as the lock uses it: durations people read, naps a release can cut short, back-off between reconnects.

/** `850ms`, `12.3s`, `4m05s`-style durations for messages. */
export function formatMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  const seconds = Math.round(ms / 1000);
  return `${Math.floor(seconds / 60)}m${seconds % 60}s`;
}

/** A nap that `wake()` or an aborted signal ends early. */
export interface Nap {
  done: Promise<void>;
  wake(): void;
}

/** What waiting needs of time: injected, so the waiting logic can be tested without real time passing. */
export interface Clock {
  /** Milliseconds on a monotonic clock. */
  now(): number;
  nap(ms: number, signal?: AbortSignal): Nap;
}

/**
 * Sleeps `ms`, or less: until `wake()` is called or `signal` aborts. Waiters nap between polls this way,
 * so a release notification (or the caller's abort) ends the nap at once.
 */
export function nap(ms: number, signal?: AbortSignal): Nap {
  let wake!: () => void;
  const done = new Promise<void>((resolve) => {
    const timer = setTimeout(() => wake(), Math.max(0, ms));
    wake = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', wake);
      resolve();
    };
    signal?.addEventListener('abort', wake);
    if (signal?.aborted) wake();
  });
  return { done, wake };
}

export const realClock: Clock = { now: () => performance.now(), nap };

/** `ms` times a random factor in [low, high): many waiters drift apart instead of acting in step. */
export const jitter = (ms: number, low: number, high: number) => ms * (low + Math.random() * (high - low));

/** Exponential back-off with jitter, from `firstMs` up to `maxMs`; `reset()` after a success starts over. */
export class Backoff {
  #attempt = 0;

  constructor(
    readonly firstMs: number,
    readonly maxMs: number,
  ) {}

  /** The attempt the next delay is for (1 for the first). */
  get attempt(): number {
    return this.#attempt + 1;
  }

  /** The next delay: doubling from `firstMs`, capped at `maxMs`, times 0.8 to 1.2. */
  next(): number {
    const base = Math.min(this.maxMs, this.firstMs * 2 ** Math.min(this.#attempt, 30));
    this.#attempt++;
    return jitter(base, 0.8, 1.2);
  }

  reset(): void {
    this.#attempt = 0;
  }
}
