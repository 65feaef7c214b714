// Taking the lock on one session: the first try (refusing sessions that cannot lock), the wait if
// it is held, and, once taken, fencing off an earlier holding's work before handing the session over.
import { isConnectionLoss } from '../driver/errors.js';
import { type Query, runPrepared, type Session } from '../driver/index.js';
import { describeHolder, MigrationLockBusyError } from '../errors.js';
import {
  type FirstTry,
  firstTry as firstTryOn,
  type Poll,
  poll,
  type RunPrepared,
  unlockStatement,
  versionSql,
} from '../sql/lock.js';
import {
  blockProbeSql,
  putBackAfterTakingSql,
  putBackSql,
  restoreAllSql,
  restoreTimeoutsSql,
  type SavedSettings,
  timeoutsOffSql,
} from '../sql/settings.js';
import { type Holder, queryLockStatus } from '../sql/status.js';
import { channelOf, passWakeUpSql, registerSql, unregisterSql } from '../sql/waiters.js';
import type { Clock } from '../time.js';
import { fenceStale } from './fence.js';
import { type AcquireSetup, type Held, label, SKIPPED } from './holding.js';
import { turnTimeoutsOff } from './release.js';
import { alreadyHeld, checkSameSession, inTransaction, onStandby, refuseUnsupported } from './server-checks.js';
import { DONE, Waiter } from './wait.js';
import { bounded, type Watch } from './watch.js';

/** query_canceled: a statement_timeout (the role's, before ours are off) cancelled the statement. */
const isCancel = (err: unknown) => (err as { code?: string } | null)?.code === '57014';

/** Carries an error of `isDone` through the waiting loop, so it reaches the caller unwrapped. */
export class IsDoneFailure {
  constructor(readonly error: unknown) {}
}

/** One session's go at the lock: check, try, wait, fence. */
export async function take(
  setup: AcquireSetup,
  session: Session,
  watch: Watch,
  clock: Clock,
  startedAt: number,
  markHealthy: () => void,
): Promise<Held | typeof SKIPPED> {
  const { key, options: opts, tag, unless } = setup;
  const query: Query = (sql, params) => bounded(session, session.query(sql, params));
  const run: RunPrepared = (statement) => bounded(session, runPrepared(session, statement));
  const view = { client: session.client, query: session.query };
  const isDone = unless && (() => unless.isDone(view).catch((error) => Promise.reject(new IsDoneFailure(error))));
  // Checked on every session, a reopened one too: a release may have come while we were disconnected.
  if (isDone && (await isDone())) return SKIPPED;

  // A caller's session may sit in a transaction block: ask the driver, else the server (one more round trip).
  const inBlock = session.kind === 'borrowed' ? session.inTransaction?.() : false;
  if (inBlock) throw inTransaction(key);
  if (inBlock === undefined) await query(blockProbeSql);
  const { first, timeoutsOff } = await firstTry(session, query, run, key, tag, watch);
  markHealthy();
  const { pid, saved } = first;
  const restoreAll = session.kind === 'own' ? "''" : restoreAllSql(saved);
  const took = (row: { stale: boolean }, waitedMs: number, registered: boolean, unlisten?: () => Promise<void>) =>
    handOver(
      setup,
      query,
      { session, watch, pid, waitedMs, at: performance.now(), tag, saved, registered, unlisten },
      {
        stale: row.stale,
        timeoutsOff,
      },
    );
  if (first.locked) return took(first, 0, false);

  // Not ours: put the session's settings back before it is given back.
  const putBack = async () => {
    if (session.kind !== 'own' && watch.error === undefined) await query(putBackSql(restoreAll)).catch(() => {});
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
  let work: Holder[] = [];
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
        const row = await poll(query, prefix, key, tag, saved);
        checkSameSession(session, key, pid, row.pid);
        return row.locked ? row : undefined;
      },
      holder: async (prefix) => {
        const status = await queryLockStatus(query, key, prefix);
        // Work that only wears the tag is none of the holding's.
        work = status.work.filter((session) => session.canMigrate !== false);
        return status.holder;
      },
      work: () => work,
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
          await session.query(registered ? unregisterSql(key, restoreAll) : putBackSql(restoreAll));
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
  run: RunPrepared,
  key: bigint,
  tag: string,
  watch: Watch,
): Promise<{ first: FirstTry; timeoutsOff: boolean }> {
  let timeoutsOff = false;
  let before: SavedSettings = {};
  let first: FirstTry;
  for (let cancelled = 0; ; ) {
    try {
      first = await firstTryOn(run, key, tag);
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
        const version = await query<{ version: string }>(versionSql).catch(() => []);
        refuseUnsupported(key, version[0]?.version ?? '', err);
      }
      throw err;
    }
  }
  refuseUnsupported(key, first.version);
  if (first.standby) throw await onStandby(query, key, first.pid);
  if (first.held) throw alreadyHeld(session, key, first.pid);
  if (first.in_tx) throw inTransaction(key, first.pid);
  return { first: { ...first, saved: { ...first.saved, ...before } }, timeoutsOff };
}

/**
 * The lock is ours: stop any earlier holding's work still running (fencing), give fn its statement timeouts
 * back, and hand over. A fencing failure unlocks before it propagates: fn never runs beside that work.
 */
async function handOver(
  setup: AcquireSetup,
  query: Query,
  held: Held,
  { stale, timeoutsOff }: { stale: boolean; timeoutsOff: boolean },
): Promise<Held> {
  try {
    if (stale) {
      // Our fencing statements must not be cancelled by the role's timeouts, which fn gets back after.
      if (!timeoutsOff && !(await bounded(held.session, turnTimeoutsOff(held.session)))) {
        throw new Error("the role's statement_timeout cancelled turning it off, ten times");
      }
      await fenceStale(query, setup.key, held.tag, setup.options, label(setup));
    }
    if (stale || timeoutsOff) await query(putBackAfterTakingSql(restoreTimeoutsSql(held.saved)));
  } catch (err) {
    await held.unlisten?.().catch(() => {});
    const restore = held.session.kind === 'own' ? undefined : held.saved;
    await bounded(held.session, runPrepared(held.session, unlockStatement(setup.key, held.registered, restore))).catch(
      () => {},
    );
    throw err;
  }
  return held;
}
