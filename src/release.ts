// Releasing after fn: unlock, wake the next waiter, put the session's settings back and give it back, all
// bounded, so a call never hangs on a dead network; and tell a lost lock from a failed unlock.

import { MigrationLockLostError } from './errors.js';
import { callSafely, errorMessage, type Logger } from './logger.js';
import type { ResolvedOptions } from './options.js';
import {
  blockProbeSql,
  restoreAllSql,
  strandedLockSql,
  timeoutsOffSql,
  type UnlockRow,
  unlockSql,
} from './protocol.js';
import { poolerAdvice } from './server-checks.js';
import { bounded, type Held, UnansweredError } from './session.js';

const UNLOCK_FAILURE_OUTCOME = {
  own: '; closing the connection releases it',
  pooled: '; destroying the pooled connection releases it',
  borrowed: '; it stays held until that client disconnects',
};

// After fn, everything (unlock, clean-up, giving the session back) is done within this bound.
const RELEASE_BOUND_MS = 15_000;

/**
 * Unlocks, wakes the next waiter and gives the session back. Returns the MigrationLockLostError to
 * throw when it turns out the lock was lost before fn settled; an unlock failure is only reported.
 */
export async function release(
  held: Held,
  key: bigint,
  { logger, hooks, keyLabel = String(key) }: ResolvedOptions,
  fnError: unknown,
): Promise<MigrationLockLostError | undefined> {
  const { session, watch, pid } = held;
  const lostLock = (message: string, cause: unknown) => new MigrationLockLostError(message, key, null, { cause });
  let row: UnlockRow | undefined;
  let unlockError: unknown;
  try {
    row = await bounded(session, unlockAfter(held, key, logger), RELEASE_BOUND_MS);
  } catch (err) {
    unlockError = err;
  }
  await session.release(unlockError !== undefined);
  const released = () =>
    callSafely(logger, 'onReleased', hooks.onReleased, { key, pid, heldMs: performance.now() - held.at });
  if (unlockError === undefined) {
    // Same session, lock gone: fn (or its migrator) released it, e.g. DISCARD ALL or pg_advisory_unlock_all().
    if (row && row.pid === pid && !row.unlocked) {
      return lostLock(
        `Lost migration lock ${keyLabel} while fn ran: its session (pid ${pid}) no longer held it at release (DISCARD ALL or pg_advisory_unlock_all() in fn?)`,
        null,
      );
    }
    released();
    return undefined;
  }
  // fn failed and the session turned out dead: the failure was the lock session going away.
  if (fnError !== undefined && watch.error !== undefined) {
    return lostLock(
      `Lost the session holding migration lock ${keyLabel} (pid ${pid}): ${errorMessage(fnError)}`,
      fnError,
    );
  }
  if (unlockError instanceof UnansweredError) {
    // Say what really happens: the client side is gone, but the server keeps the lock until it notices.
    logger.warn(
      `Could not release migration lock ${keyLabel} on pid ${pid}: ${unlockError.message}. The server keeps the lock until it notices the connection is gone: within about 30 s, by the TCP keepalive set on this session.`,
    );
  } else {
    logger.warn(
      `Could not release migration lock ${keyLabel} on pid ${pid}: ${errorMessage(unlockError)}${UNLOCK_FAILURE_OUTCOME[session.kind]}`,
    );
  }
  callSafely(logger, 'onUnlockError', hooks.onUnlockError, unlockError);
  // Closing or destroying a connection that answers released the lock; the caller's own client still holds it.
  if (session.kind !== 'borrowed' && !(unlockError instanceof UnansweredError)) released();
  return undefined;
}

/** Unlocks after fn, ending a transaction fn left behind where that is ours to end. */
async function unlockAfter(held: Held, key: bigint, logger: Logger): Promise<UnlockRow> {
  const { session } = held;
  // Our own session too, though it is closed next: through a session pooler (PgBouncer) the server connection
  // lives on, and must not keep the holding's tag (which a next holder would fence) until the pooler resets it.
  const restore = restoreAllSql(held.saved);
  const sql = unlockSql(key, held.registered, restore);
  let row: UnlockRow | undefined;
  let cancelled = false;
  let timeoutsOff = false;
  for (let attempt = 1; !row; attempt++) {
    // Whether fn left a transaction block open: the driver may know; if not, the server is asked.
    const known = session.inTransaction?.();
    try {
      if (known === undefined && session.kind !== 'borrowed') await session.query(blockProbeSql);
      [row] = await session.query<UnlockRow>(sql);
      if (known !== undefined) row!.in_transaction = known;
    } catch (err) {
      const code = (err as { code?: string }).code;
      // in_failed_sql_transaction: fn left its transaction aborted. Nothing in it can commit and nothing
      // else can run until it ends, so roll it back and unlock again.
      if (code === '25P02' && attempt <= 2) await session.query('ROLLBACK');
      // query_canceled: fn's own statement_timeout (put back for fn) cancelled the unlock. Turn it off and
      // unlock again; a timeout of a millisecond can cancel that shorter statement too on a busy server, so
      // both are tried a few times (once off, nothing of ours is cancelled).
      else if (code === '57014' && attempt <= 10) {
        cancelled = true;
        if (!timeoutsOff) {
          timeoutsOff = await session.query(timeoutsOffSql).then(
            () => true,
            (e) => ((e as { code?: string }).code === '57014' ? false : Promise.reject(e)),
          );
        }
      } else throw err;
    }
  }
  // A cancelled unlock may have unlocked before the cancel hit: the retry then finds nothing to unlock.
  if (cancelled) row.unlocked = true;
  if (row.pid !== held.pid) {
    // A transaction-mode pooler ran the unlock on another server connection: the lock still sits on the
    // one that took it, which the pooler hands to other clients. End that backend so it cannot linger.
    await session.query(strandedLockSql(key, held.pid));
    logger.warn(
      `Migration lock ${key} was taken on backend ${held.pid} but released from backend ${row.pid}, so it did not exclude anyone; backend ${held.pid} was terminated to free it. ${poolerAdvice(session)}`,
    );
  }
  if (row.in_transaction && session.kind !== 'borrowed') {
    // Going back to the pool (or closed) with it open would hand it to the next user (or cut it anyway).
    // The rollback also undoes the settings put back inside it: put them back again after.
    logger.warn('fn left a transaction open on the lock session: rolling it back before giving the session back');
    await session.query('ROLLBACK');
    await session.query(`SELECT ${restore}`);
  }
  // Our own session is closed next, which stops listening anyway.
  if (session.kind !== 'own') await held.unlisten?.();
  return row;
}
