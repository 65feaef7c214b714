// What a holding is: the session that holds the lock and what releasing it needs (Held), how a call names its
// key (label), what it was set up with, and what a call resolves to when it ended without the lock (SKIPPED).
import type { Query, Session, SessionSource } from '../driver/index.js';
import type { SavedSettings } from '../sql/settings.js';
import type { Clock } from '../time.js';
import type { ResolvedOptions } from './options.js';
import type { Watch } from './watch.js';

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

/** What a call resolves to when its `isDone` ended the wait: it never took the lock and never ran `fn`. */
export const SKIPPED: unique symbol = Symbol('pg-migration-lock: skipped');

/** What an adapter's `isDone` is asked on: the session the call opened, as its driver's client and as SQL. */
export interface SessionView<C> {
  client: C;
  query: Query;
}

/** Lets a call end without the lock when there is nothing left to do (adapters: nothing pending). */
export interface Unless<C> {
  /**
   * Asked on each session before it tries the lock, at each release heard while waiting, and every
   * `recheckEveryMs`. True ends the call with SKIPPED. Safe as long as what `fn` does re-checks under the lock.
   */
  isDone(session: SessionView<C>): Promise<boolean>;
  /** While waiting, ask `isDone` this often even without hearing a release (a session that cannot LISTEN). */
  recheckEveryMs?: number;
}

export interface AcquireSetup {
  source: SessionSource;
  key: bigint;
  options: ResolvedOptions;
  tag: string;
  unless?: Unless<unknown>;
  /** Tags of the holdings this call runs inside (a nested call must not wait for its own caller). */
  enclosing?: ReadonlySet<string>;
  clock?: Clock;
}

/** How messages name the key of this call. */
export const label = (setup: AcquireSetup) => setup.options.keyLabel ?? String(setup.key);
