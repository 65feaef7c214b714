// Acquiring the lock: open a session and take the lock on it (take.ts); when the connection breaks
// while waiting, reopen where the source can be (restarts, failovers), with back-off, for as long as allowed.
import { isConnectionLoss, isServerStartingUp } from '../driver/errors.js';
import type { Session } from '../driver/index.js';
import { MigrationLockBusyError, MigrationLockError, MigrationLockTimeoutError } from '../errors.js';
import { errorMessage } from '../logger.js';
import { Backoff, formatMs, realClock } from '../time.js';
import { type AcquireSetup, type Held, label, SKIPPED } from './holding.js';
import { IsDoneFailure, take } from './take.js';
import { type Watch, watchSession } from './watch.js';

// Without timeoutMs, a waiter gives up after this long without a healthy session.
const RECONNECT_FOR_MS = 60_000;

/**
 * Opens a session and takes the lock on it. A waiter whose connection breaks (server restart, failover,
 * network error) opens another session and keeps waiting when the source can be reopened, with back-off;
 * the budget for that starts over after every healthy session. A caller's own client cannot be reopened,
 * so the call fails. Every failure here is a MigrationLockError (or the caller's abort reason, or isDone's
 * own error), and fn never runs on a session that lost the lock.
 */
export async function acquire(setup: AcquireSetup): Promise<Held | typeof SKIPPED> {
  const { source, key, options: opts } = setup;
  const clock = setup.clock ?? realClock;
  const startedAt = clock.now();
  const backoff = new Backoff(250, 5_000);
  let connected = false;
  let brokenSince: number | undefined;
  for (;;) {
    let session: Session | undefined;
    let watch: Watch | undefined;
    let healthy = false;
    try {
      session = await source.open();
      connected = true;
      watch = watchSession(session);
      const held = await take(setup, session, watch, clock, startedAt, () => (healthy = true));
      if (held === SKIPPED) {
        watch.dispose();
        await session.release(watch.error !== undefined);
        return SKIPPED;
      }
      // Lost between the try-lock and here: the lock went with the session, so fn must not run.
      if (watch.error !== undefined) throw watch.error;
      return held;
    } catch (err) {
      const orderly =
        err instanceof MigrationLockBusyError ||
        err instanceof MigrationLockTimeoutError ||
        (opts.signal?.aborted === true && err === opts.signal.reason);
      watch?.dispose();
      // Busy, timed out or aborted: the session is clean and goes back. Anything else may have left it
      // in doubt: a pooled one is destroyed.
      await session?.release(!orderly || watch?.error !== undefined);
      if (orderly || err instanceof MigrationLockError) throw err;
      // The adapter's own re-check failed (e.g. a corrupt migrations directory): its error, as it is.
      if (err instanceof IsDoneFailure) throw err.error;
      const broken = watch?.error !== undefined || isConnectionLoss(err);
      // Never connected (a wrong URL or password, a server that is not there): the driver's own error, at once.
      if (!connected && !(broken && isServerStartingUp(err))) throw err;
      if (!broken) {
        throw new MigrationLockError(`Could not take migration lock ${label(setup)}: ${errorMessage(err)}`, key, null, {
          cause: err,
        });
      }
      if (!source.reopenable) {
        throw new MigrationLockError(
          `Lost the connection while waiting for migration lock ${label(setup)}: ${errorMessage(watch?.error ?? err)}. The client you passed cannot be reopened; pass a pool or a connection string to keep waiting through a server restart or failover.`,
          key,
          null,
          { cause: watch?.error ?? err },
        );
      }
      // A session that worked for a while broke: the next outage gets the whole budget again.
      if (healthy) {
        brokenSince = undefined;
        backoff.reset();
      }
      const now = clock.now();
      brokenSince ??= now;
      const attempt = backoff.attempt;
      const delay = backoff.next();
      const until = opts.timeoutMs !== undefined ? startedAt + opts.timeoutMs : brokenSince + RECONNECT_FOR_MS;
      if (now + delay > until) {
        const waitedMs = now - startedAt;
        if (opts.timeoutMs !== undefined) {
          throw new MigrationLockTimeoutError(
            `Timed out after ${formatMs(waitedMs)} waiting for migration lock ${label(setup)}: the connection was lost (${errorMessage(err)}) and could not be reopened in time`,
            key,
            null,
            waitedMs,
            { cause: err },
          );
        }
        throw new MigrationLockError(
          `Gave up waiting for migration lock ${label(setup)}: no session could be opened for ${formatMs(now - brokenSince)} (${errorMessage(err)})`,
          key,
          null,
          { cause: err },
        );
      }
      opts.logger.warn(
        `Lost the connection while waiting for migration lock ${label(setup)} (${errorMessage(watch?.error ?? err)}); reconnecting in ${formatMs(delay)} (attempt ${attempt})`,
      );
      await clock.nap(delay, opts.signal).done;
      opts.signal?.throwIfAborted();
    }
  }
}
