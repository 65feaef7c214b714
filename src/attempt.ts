// One attempt at the lock on one session: the first try (refusing sessions that cannot lock), the wait if
// it is held, and, once taken, fencing off an earlier holding's work before handing the session over.
import { isConnectionLoss } from './driver/errors.js';
import type { Query, Session, SessionSource } from './driver/index.js';
import { describeHolder, MigrationLockBusyError } from './errors.js';
import { fenceStale } from './fence.js';
import type { ResolvedOptions } from './options.js';
import {
  blockProbeSql,
  channelOf,
  type FirstTry,
  firstTrySql,
  type Poll,
  passWakeUpSql,
  pollSql,
  registerSql,
  restoreAllSql,
  restoreTimeoutsSql,
  type SavedSettings,
  type TaggedRow,
  timeoutsOffSql,
  unlockSql,
  unregisterSql,
} from './protocol.js';
import { alreadyHeld, checkSameSession, inTransaction, onStandby, refuseUnsupported } from './server-checks.js';
import { bounded, type Held, type Watch } from './session.js';
import { queryLockStatus } from './status.js';
import type { Clock } from './time.js';
import { DONE, Waiter } from './wait.js';

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

/** query_canceled: a statement_timeout (the role's, before ours are off) cancelled the statement. */
const isCancel = (err: unknown) => (err as { code?: string } | null)?.code === '57014';

/** Carries an error of `isDone` through the waiting loop, so it reaches the caller unwrapped. */
export class IsDoneFailure {
  constructor(readonly error: unknown) {}
}

/** How messages name the key of this call. */
export const label = (setup: AcquireSetup) => setup.options.keyLabel ?? String(setup.key);

/** One session's go at the lock: check, try, wait, fence. */
export async function attempt(
  setup: AcquireSetup,
  session: Session,
  watch: Watch,
  clock: Clock,
  startedAt: number,
  markHealthy: () => void,
): Promise<Held | typeof SKIPPED> {
  const { key, options: opts, tag, unless } = setup;
  const query: Query = (sql, params) => bounded(session, session.query(sql, params));
  const view = { client: session.client, query: session.query };
  const isDone = unless && (() => unless.isDone(view).catch((error) => Promise.reject(new IsDoneFailure(error))));
  // Checked on every session, a reopened one too: a release may have come while we were disconnected.
  if (isDone && (await isDone())) return SKIPPED;

  // A caller's session may sit in a transaction block: ask the driver, else the server (one more round trip).
  const inBlock = session.kind === 'borrowed' ? session.inTransaction?.() : false;
  if (inBlock) throw inTransaction(key);
  if (inBlock === undefined) await query(blockProbeSql);
  const { first, timeoutsOff } = await firstTry(session, query, key, tag, watch);
  markHealthy();
  const { pid, saved } = first;
  const restoreAll = session.kind === 'own' ? "''" : restoreAllSql(saved);
  const took = (row: { stale: string | null }, waitedMs: number, registered: boolean, unlisten?: () => Promise<void>) =>
    handOver(
      setup,
      query,
      { session, watch, pid, waitedMs, at: performance.now(), tag, saved, registered, unlisten },
      {
        stale: row.stale,
        timeoutsOff: timeoutsOff || row.stale !== null,
        restoreAll,
      },
    );
  if (first.locked) return took(first, 0, false);

  // Not ours: put the session's settings back before it is given back.
  const putBack = async () => {
    if (session.kind !== 'own' && watch.error === undefined) await query(`SELECT ${restoreAll}`).catch(() => {});
  };
  if (!opts.wait) {
    const { holder } = await queryLockStatus(query, key);
    await putBack();
    throw new MigrationLockBusyError(
      `Migration lock ${label(setup)} is held by ${describeHolder(holder)}`,
      key,
      holder,
    );
  }

  let registered = false;
  let unlisten: (() => Promise<void>) | undefined;
  let acquired = false;
  const waiter = new Waiter<Poll>({
    key,
    options: opts,
    clock,
    startedAt,
    isDone,
    recheckEveryMs: unless?.recheckEveryMs,
    enclosing: setup.enclosing,
    wire: {
      register: async () => {
        const [row] = await query<{ pid: number; now_ms: number }>(registerSql(key));
        registered = true;
        checkSameSession(session, key, pid, row!.pid);
        return { pid: row!.pid, nowMs: row!.now_ms };
      },
      tryLock: async (prefix) => {
        const [row] = await query<Poll>(prefix + pollSql(key, tag, saved));
        checkSameSession(session, key, pid, row!.pid);
        return row!.locked ? row! : undefined;
      },
      holder: async (prefix) => (await queryLockStatus(query, key, prefix)).holder,
      passWakeUp: async () => {
        await query(passWakeUpSql(key));
      },
    },
  });
  try {
    unlisten = await session.listen?.(channelOf(key), waiter.onPayload);
    const result = await waiter.run();
    if (result === DONE) return SKIPPED;
    acquired = true;
    return await took(result, waiter.waitedMs, registered, unlisten);
  } finally {
    // Leave the waiters' registry and the channel, and put the settings back. Only a session that goes
    // back to a pool or its owner needs it; a broken one is discarded, our own is closed.
    if (!acquired && watch.error === undefined && session.kind !== 'own') {
      await bounded(
        session,
        (async () => {
          await unlisten?.();
          await session.query(registered ? unregisterSql(key, restoreAll) : `SELECT ${restoreAll}`);
        })(),
      ).catch(() => {});
    }
  }
}

/**
 * The first statement on a session (see firstTrySql), with what goes wrong there named: a server that only
 * looks like PostgreSQL, a session that already holds the key or sits in a transaction, and a role whose
 * statement_timeout is so short it cancels the statement itself (then the timeouts go off first).
 */
async function firstTry(
  session: Session,
  query: Query,
  key: bigint,
  tag: string,
  watch: Watch,
): Promise<{ first: Omit<FirstTry, 'saved'> & { saved: SavedSettings }; timeoutsOff: boolean }> {
  let timeoutsOff = false;
  let before: SavedSettings = {};
  let first: FirstTry;
  for (let cancelled = 0; ; ) {
    try {
      [first] = (await query<FirstTry>(firstTrySql(key, tag))) as [FirstTry];
      break;
    } catch (err) {
      // query_canceled by the role's statement_timeout, before we could turn it off: turn it off (that
      // statement may be cancelled too, it is shorter), then retry. Once it is off, nothing of ours is cancelled.
      if (isCancel(err) && ++cancelled <= 10 && watch.error === undefined) {
        if (!timeoutsOff) {
          const [values] = await query<SavedSettings>(timeoutsOffSql).catch((e) =>
            isCancel(e) ? [] : Promise.reject(e),
          );
          if (values) [before, timeoutsOff] = [values, true];
        }
        continue;
      }
      // A server that only looks like PostgreSQL may reject the statement itself: name it if we can.
      if (!isConnectionLoss(err) && watch.error === undefined) {
        const version = await query<{ version: string }>('SELECT version() AS version').catch(() => []);
        refuseUnsupported(key, version[0]?.version ?? '', err);
      }
      throw err;
    }
  }
  refuseUnsupported(key, first.version);
  if (first.standby) throw await onStandby(query, key, first.pid);
  if (first.held) throw alreadyHeld(session, key, first.pid);
  if (first.in_tx) throw inTransaction(key, first.pid);
  const saved = { ...(JSON.parse(first.saved) as SavedSettings), ...before };
  return { first: { ...first, saved }, timeoutsOff };
}

/**
 * The lock is ours: stop any earlier holding's work still running (fencing), give fn its statement timeouts
 * back, and hand over. A fencing failure unlocks before it propagates: fn never runs beside that work.
 */
async function handOver(
  setup: AcquireSetup,
  query: Query,
  held: Held,
  { stale, timeoutsOff, restoreAll }: { stale: string | null; timeoutsOff: boolean; restoreAll: string },
): Promise<Held> {
  try {
    if (stale !== null) {
      await fenceStale(query, setup.key, held.tag, JSON.parse(stale) as TaggedRow[], setup.options, label(setup));
    }
    if (timeoutsOff) await query(`SELECT ${restoreTimeoutsSql(held.saved)}`);
  } catch (err) {
    await held.unlisten?.().catch(() => {});
    await query(unlockSql(setup.key, held.registered, restoreAll)).catch(() => {});
    throw err;
  }
  return held;
}
