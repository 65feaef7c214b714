// What the drivers that pool their own connections (postgres.js, Bun's SQL) share: telling a session's loss
// once, and a LISTEN connection that may never come.
import type { Session } from './types.js';

/**
 * A session's connection loss, told once: to the listener set then, or to the next one set. `error` stays
 * undefined while the connection lives.
 */
export function lossLatch(): { readonly error: unknown; lose(error: unknown): void; onLost: Session['onLost'] } {
  let lost: unknown;
  let listener: ((error: unknown) => void) | undefined;
  return {
    get error() {
      return lost;
    },
    lose(error) {
      if (lost !== undefined) return;
      lost = error ?? new Error('Connection closed');
      listener?.(lost);
    },
    onLost(onLost) {
      listener = onLost;
      if (lost !== undefined) onLost(lost);
      return () => {
        if (listener === onLost) listener = undefined;
      };
    },
  };
}

/** How long a waiter waits for the driver's listen connection before it falls back to polling. */
const LISTEN_WITHIN_MS = 5_000;

/**
 * A waiter's `listen` through a driver that delivers notifications on a connection of its own (idle between
 * them: it holds no snapshot, so a holder's CREATE INDEX CONCURRENTLY does not wait for it). When that
 * connection does not come within 5 s (too many connections, a slow network) the waiter polls, and the
 * subscription is dropped if it comes later. Resolves the unlisten.
 */
export async function listenWithin(request: PromiseLike<{ unlisten(): unknown }>): Promise<() => Promise<void>> {
  const subscribing = Promise.resolve(request);
  let timer: NodeJS.Timeout | undefined;
  const subscription = await Promise.race([
    subscribing,
    new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), LISTEN_WITHIN_MS);
    }),
  ])
    .catch(() => undefined)
    .finally(() => clearTimeout(timer));
  if (!subscription) {
    subscribing.then((late) => late.unlisten()).then(undefined, () => {});
    return async () => {};
  }
  return async () => {
    await subscription.unlisten();
  };
}
