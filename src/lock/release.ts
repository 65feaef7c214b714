// Releasing after fn: unlock, wake the next waiter, put the session's settings back and give it back, all
// bounded, so a call never hangs on a dead network; and tell a lost lock from a failed unlock.

import { runPrepared } from '../driver/index.js';
import { MigrationLockLostError } from '../errors.js';
import { callSafely, errorMessage, type Logger } from '../logger.js';
import { strandedLockSql, type UnlockRow, unlockStatement } from '../sql/lock.js';
import { blockProbeSql, inBlockSql, rollbackSql, type SavedSettings, timeoutsOffSql } from '../sql/settings.js';
import type { Held } from './holding.js';
import type { ResolvedOptions } from './options.js';
import { poolerAdvice } from './server-checks.js';
import { bounded, UnansweredError } from './watch.js';

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

/**
 * Unlocks after fn. A transaction block fn left open on the lock session is rolled back first, whoever owns the
 * session: committed after the unlock, its work would not have been done under the lock; and the unlock, the
 * wake-up and the settings put back (`application_name` among them: the holding's tag) must not run inside it, or
 * a later ROLLBACK would undo them and leave the session carrying the tag for the next holder to terminate.
 */
async function unlockAfter(held: Held, key: bigint, logger: Logger): Promise<UnlockRow> {
  const { session } = held;
  await endLeftTransaction(held, logger);
  // Our own session too, though it is closed next: through a session pooler (PgBouncer) the server connection
  // lives on, and must not keep the holding's tag (which a next holder would fence) until the pooler resets it.
  const unlock = unlockStatement(key, held.registered, held.saved);
  let row: UnlockRow | undefined;
  let cancelled = false;
  // A statement_timeout (the role's, put back for fn) must not cancel the unlock halfway: the unlock takes effect
  // at once, but the rest of its statement (the tag taken off) would be rolled back, and the next holder would then
  // fence this session as an earlier holding's work. So with one in force, the timeouts go off first.
  let timeoutsOff = !hasStatementTimeout(held.saved) || (await turnTimeoutsOff(session));
  for (let attempt = 1; !row; attempt++) {
    try {
      [row] = await runPrepared<UnlockRow>(session, unlock);
    } catch (err) {
      // query_canceled: fn's own statement_timeout (put back for fn) cancelled the unlock. Turn it off and
      // unlock again; a timeout of a millisecond can cancel that shorter statement too on a busy server, so
      // both are tried a few times (once off, nothing of ours is cancelled).
      if ((err as { code?: string }).code === '57014' && attempt <= 10) {
        cancelled = true;
        if (!timeoutsOff) timeoutsOff = await turnTimeoutsOff(session, 1);
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
  // Our own session is closed next, which stops listening anyway.
  if (session.kind !== 'own') await held.unlisten?.();
  return row;
}

const hasStatementTimeout = (saved: SavedSettings) => !['0', '', undefined, null].includes(saved.statement_timeout);

/**
 * Turns the statement timeouts off; a timeout of a millisecond can cancel that short statement too on a busy
 * server, so it is tried up to `tries` times. Resolves whether they are off.
 */
export async function turnTimeoutsOff(session: Held['session'], tries = 10): Promise<boolean> {
  for (let attempt = 1; attempt <= tries; attempt++) {
    const off = await session.query(timeoutsOffSql).then(
      () => true,
      (e) => ((e as { code?: string }).code === '57014' ? false : Promise.reject(e)),
    );
    if (off) return true;
  }
  return false;
}

/** Whether the session sits in a transaction block (open or aborted). */
export async function inTransactionBlock(session: Held['session']): Promise<boolean> {
  // The driver may know from the server's last ReadyForQuery; if not, the server is asked (one more round trip).
  let open = session.inTransaction?.();
  if (open === undefined) {
    open = await session.query(blockProbeSql).then(
      () => false,
      // in_failed_sql_transaction: nothing runs until the block ends.
      (err) => ((err as { code?: string }).code === '25P02' ? true : Promise.reject(err)),
    );
    if (!open)
      [{ in_block: open }] = (await session.query<{ in_block: boolean }>(inBlockSql)) as [{ in_block: boolean }];
  }
  return open;
}

/** Rolls back a transaction block fn left open (or aborted) on the lock session, with a warning saying so. */
async function endLeftTransaction({ session }: Held, logger: Logger): Promise<void> {
  if (!(await inTransactionBlock(session))) return;
  logger.warn(
    'fn left a transaction open on the lock session: rolling it back, since its work was not committed under the lock (a COMMIT after the unlock would be outside it); commit inside fn',
  );
  await session.query(rollbackSql);
}
