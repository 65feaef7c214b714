// Waiting for the lock: a Waiter polls with try-locks (never blocking inside the server), wakes at once when
// a release names it, reports who holds the lock, and gives up on timeout or abort. Also the watch on
// releases that `pending --wait` uses without ever taking the lock.
import { type ClientSource, sessionSource } from '../driver/index.js';
import { describeHolder, MigrationLockError, MigrationLockTimeoutError } from '../errors.js';
import { callSafely } from '../logger.js';
import { callSettingsSql } from '../sql/settings.js';
import type { Holder } from '../sql/status.js';
import { channelOf, registerSql, waitingComment, wakeEveryoneSql, wakesWaiter } from '../sql/waiters.js';
import { type Clock, formatMs, jitter } from '../time.js';
import type { LockHooks, ResolvedOptions } from './options.js';

/*
 * Why poll: a session blocked inside pg_advisory_lock() holds a snapshot, and a holder running CREATE INDEX
 * CONCURRENTLY waits for that snapshot while the waiter waits for the holder: "deadlock detected", and
 * either side may be the victim. Waiters instead poll with pg_try_advisory_lock() and LISTEN on a per-key
 * channel; the holder NOTIFYs one of them in the statement that unlocks, so it wakes within a round trip.
 * Holders that die (or plain pg_advisory_lock users) cannot notify, so a waiter also retries every
 * pollIntervalMs. Each waiter joins a registry (a shared lock that never conflicts) so status can list
 * waiters and a release can pick one. A try-lock never waits, so no statement of ours runs long.
 */

/** What a Waiter needs of its session: the lock protocol, as operations (the real one speaks SQL). */
export interface WaitWire<A> {
  /** Joins the waiters' registry: this session's backend pid, and the server's clock in epoch ms. */
  register(): Promise<{ pid: number; nowMs: number }>;
  /** One try, its statement prefixed with the waiting breadcrumb: what was acquired, or undefined while held. */
  tryLock(prefix: string): Promise<A | undefined>;
  /** Who holds the lock now. */
  holder(prefix: string): Promise<Holder | null>;
  /** The holding's work (sessions wearing its tag) seen by the last `holder()`. */
  work?(): Holder[];
  /** This waiter was picked by a release but leaves without the lock: wake the next one. */
  passWakeUp(): Promise<void>;
}

export type WaitOptions = Pick<
  ResolvedOptions,
  'timeoutMs' | 'reportEveryMs' | 'pollIntervalMs' | 'signal' | 'logger' | 'keyLabel'
> & { hooks: Pick<LockHooks, 'onWaiting'> };

export interface WaiterSetup<A> {
  wire: WaitWire<A>;
  key: bigint;
  options: WaitOptions;
  clock: Clock;
  /** When the call started (clock time): waiting time and `timeoutMs` count from there. */
  startedAt: number;
  /** Asked at each release heard, and every `recheckEveryMs`: true ends the wait without the lock. */
  isDone?: () => Promise<boolean>;
  recheckEveryMs?: number;
  /** Tags of the holdings this call runs inside: a holder carrying one of them is this call's own caller. */
  enclosing?: ReadonlySet<string>;
}

/** The wait ended without the lock: `isDone` said there is nothing left to do. */
export const DONE: unique symbol = Symbol('pg-migration-lock: nothing left to do');

/** One wait for the lock on one session. Its state lives in fields, changed by `run` and by release payloads. */
export class Waiter<A> {
  /** This session's backend pid, once registered: a release payload naming it picks this waiter. */
  pid = 0;
  /** A release was heard since `isDone` was last asked. */
  released = false;
  /** That release picked this waiter: if it leaves without the lock, it passes the wake-up on. */
  chosen = false;
  /** A release was heard since the last try: the next try comes without a nap. */
  notified = false;
  holder: Holder | null = null;
  #wake: (() => void) | undefined;
  #nextReportAt = 0;
  #nextRecheckAt = Number.POSITIVE_INFINITY;
  readonly #setup: WaiterSetup<A>;

  constructor(setup: WaiterSetup<A>) {
    this.#setup = setup;
  }

  get waitedMs(): number {
    return this.#setup.clock.now() - this.#setup.startedAt;
  }

  /** A release payload arrived on the channel. */
  onPayload = (payload: string): void => {
    const picked = this.pid !== 0 && payload === String(this.pid);
    // Waiters that re-check what is left to do react to every release; others only to theirs or to all.
    if (!(this.#setup.isDone || wakesWaiter(payload, this.pid))) return;
    this.released = true;
    this.chosen ||= picked;
    this.notified = true;
    this.#wake?.();
  };

  /**
   * Waits until the lock is taken (resolves what the wire acquired) or `isDone` says there is nothing left to
   * do (resolves DONE). Rejects with MigrationLockTimeoutError, the abort reason, or the wire's errors. The
   * caller passes release payloads to `onPayload`, listening before this starts, so none is missed.
   */
  async run(): Promise<A | typeof DONE> {
    const { wire, options, clock, isDone, recheckEveryMs } = this.#setup;
    const registration = await wire.register();
    this.pid = registration.pid;
    const prefix = waitingComment(this.#setup.key, Math.round(registration.nowMs));
    await this.#report(prefix);
    if (isDone && recheckEveryMs !== undefined) this.#nextRecheckAt = this.waitedMs + recheckEveryMs;
    const deadline = options.timeoutMs ?? Number.POSITIVE_INFINITY;
    for (;;) {
      this.notified = false;
      if (isDone && (this.released || this.waitedMs >= this.#nextRecheckAt)) {
        const picked = this.chosen;
        this.released = false;
        this.chosen = false;
        if (recheckEveryMs !== undefined) this.#nextRecheckAt = this.waitedMs + recheckEveryMs;
        if (await isDone()) {
          // The release that woke us picked us: pass it on, or a plain waiter would sleep until its poll.
          if (picked) await wire.passWakeUp();
          return DONE;
        }
      }
      const acquired = await wire.tryLock(prefix);
      if (acquired !== undefined) return acquired;
      options.signal?.throwIfAborted();
      if (this.waitedMs >= deadline) {
        this.holder = await wire.holder(prefix);
        throw new MigrationLockTimeoutError(
          `Timed out after ${formatMs(this.waitedMs)} waiting for migration lock ${this.#label}, held by ${describeHolder(this.holder)}`,
          this.#setup.key,
          this.holder,
          this.waitedMs,
        );
      }
      if (this.waitedMs >= this.#nextReportAt) await this.#report(prefix);
      // A release heard while the try was in flight must not be slept through.
      if (!this.notified) {
        const ms = Math.min(
          jitter(options.pollIntervalMs, 0.9, 1.3),
          deadline - this.waitedMs,
          this.#nextReportAt - this.waitedMs,
          this.#nextRecheckAt - this.waitedMs,
        );
        const napping = clock.nap(ms, options.signal);
        this.#wake = napping.wake;
        await napping.done;
        this.#wake = undefined;
      }
      options.signal?.throwIfAborted();
    }
  }

  get #label(): string {
    return this.#setup.options.keyLabel ?? String(this.#setup.key);
  }

  async #report(prefix: string): Promise<void> {
    const { wire, key, options, enclosing } = this.#setup;
    this.holder = await wire.holder(prefix);
    if (this.holder?.applicationName && enclosing?.has(this.holder.applicationName)) {
      throw new MigrationLockError(
        `Migration lock ${this.#label} is held by the very call this one runs inside (pid ${this.holder.pid}): waiting would never end. Run this work in the outer call's fn, on its client.`,
        key,
        this.holder,
      );
    }
    const waitedMs = this.waitedMs;
    // A caller with an onWaiting hook reports waiting its own way (the CLI's live line): the log line steps back to debug.
    const log = options.hooks.onWaiting
      ? options.logger.debug?.bind(options.logger)
      : options.logger.info.bind(options.logger);
    log?.(
      `Waiting for migration lock ${this.#label}, held by ${describeHolder(this.holder)} (waited ${formatMs(waitedMs)})`,
    );
    const work = wire.work?.() ?? [];
    callSafely(options.logger, 'onWaiting', options.hooks.onWaiting, { key, holder: this.holder, work, waitedMs });
    this.#nextReportAt = waitedMs + options.reportEveryMs;
  }
}

/**
 * Calls `onRelease` each time the lock on `key` is released by this library (and a waiter is registered),
 * on a connection of its own that never takes the lock: for `pending --wait`, which re-checks then. The
 * connection joins the waiters' registry (so releases notify, and status lists it) and passes a wake-up
 * naming it to everyone. A connection that breaks only costs the prompt wake-ups. `close()` ends it.
 */
export async function watchReleases(
  source: ClientSource,
  key: bigint,
  onRelease: () => void,
): Promise<{ close(): Promise<void> }> {
  const session = await sessionSource(source).open();
  session.onLost(() => {});
  try {
    let pid = 0;
    // Idle between releases: no server timeout may end it.
    await session.query(callSettingsSql);
    await session.listen?.(channelOf(key), (payload) => {
      if (pid !== 0 && payload === String(pid)) session.query(wakeEveryoneSql(key)).catch(() => {});
      onRelease();
    });
    const [registered] = await session.query<{ pid: number }>(registerSql(key));
    pid = registered!.pid;
  } catch (err) {
    await session.release(true);
    throw err;
  }
  return { close: () => session.release() };
}
