// The lock's watch on a session: it notices the session die, and bounds every statement of ours (a dead
// network must not hang a call).
import { UNANSWERED } from '../driver/errors.js';
import type { Session } from '../driver/index.js';
import { formatMs } from '../time.js';

/** Notices the session dying (backend terminated, socket closed) and remembers why. */
export function watchSession(session: Session) {
  let lostError: unknown;
  let onLost: ((error: unknown) => void) | undefined;
  const dispose = session.onLost((error) => {
    lostError = error;
    onLost?.(error);
  });
  return {
    get error() {
      return lostError;
    },
    set onLost(callback: ((error: unknown) => void) | undefined) {
      onLost = callback;
    },
    dispose,
  };
}
export type Watch = ReturnType<typeof watchSession>;

// How long one statement of ours may take before the session counts as gone. Ours never wait inside
// the server (try-locks only), so only a dead network or a wedged server takes this long.
const STATEMENT_BOUND_MS = 15_000;
/** A statement of ours that got no answer in time: the session was cut. */
export class UnansweredError extends Error {
  readonly code = UNANSWERED;
  constructor(ms: number) {
    super(`the session did not answer within ${formatMs(ms)} (network or server gone): it was cut`);
  }
}

/** Resolves like `promise`, or cuts the session and rejects after `ms`. */
export function bounded<T>(session: Session, promise: Promise<T>, ms = STATEMENT_BOUND_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      session.destroy();
      reject(new UnansweredError(ms));
    }, ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
