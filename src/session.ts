// The lock's hold on a session: it watches the session die, bounds every statement of ours (a dead
// network must not hang a call), and says what a held session carries until it is released.
import { UNANSWERED } from './driver/errors.js';
import type { Session } from './driver/index.js';
import type { SavedSettings } from './protocol.js';
import { formatMs } from './time.js';

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

/** A session holding the lock, and what releasing it needs. */
export interface Held {
  session: Session;
  watch: Watch;
  pid: number;
  waitedMs: number;
  /** performance.now() when the lock was taken. */
  at: number;
  /** This holding's fencing tag: the session's application_name while fn runs. */
  tag: string;
  /** The settings to put back before a pooled or borrowed session is given back (none for our own). */
  saved: SavedSettings;
  /** The session sits in the waiters' registry (and LISTENs): undone with the unlock. */
  registered: boolean;
  unlisten?: () => Promise<void>;
}

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
