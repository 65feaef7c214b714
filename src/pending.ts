import type pg from 'pg';
import type { LockKeyInput } from './key.js';
import { type LockContext, type MigrationLockOptions, SKIPPED, withMigrationLockUnless } from './lock.js';
import { type ClientSource, type Session, type SessionSource, sessionSource } from './session.js';

export { SKIPPED };

/** Thrown out of the first `open()` when the check found nothing to do: it carries the session back out. */
class NothingToDo {}

/**
 * For adapters: check before queueing. `isDone(session)` runs first, on the session that would then wait
 * for the lock (one connection per call, not one for the check and one for the lock); when it resolves
 * true, the call resolves {@link SKIPPED} without taking the lock. Otherwise it queues like
 * `withMigrationLockUnless`, whose waiters ask `isDone` again at each release. Safe because each
 * migrator re-checks what is pending under the lock: a check that says "not done" only costs a wait.
 *
 * Options and key are validated (by the lock) before any connection is made.
 */
export async function lockUnlessDone<T>(
  client: ClientSource,
  key: LockKeyInput,
  fn: (ctx: LockContext) => T | Promise<T>,
  options: MigrationLockOptions,
  isDone: (client: pg.ClientBase) => Promise<boolean>,
): Promise<T | typeof SKIPPED> {
  const source = sessionSource(client, { applicationName: options?.applicationName });
  let checked = false;
  // The lock opens its session through this source. The first one is checked before it queues; the lock
  // rethrows what its first open() throws as-is (nothing was connected yet), which carries "nothing to
  // do" (or the check's own error) out. Sessions reopened later (a waiter reconnecting) are not checked
  // here: the lock's own isDone calls cover them from the next release on.
  const checking: SessionSource = {
    reopenable: source.reopenable,
    borrowed: source.borrowed,
    async open(): Promise<Session> {
      const session = await source.open();
      if (checked) return session;
      checked = true;
      let done: boolean;
      try {
        done = await isDone(session.client as pg.ClientBase);
      } catch (err) {
        await session.release(true);
        throw err;
      }
      if (!done) return session;
      await session.release();
      throw new NothingToDo();
    },
  };
  try {
    return await withMigrationLockUnless(checking, key, fn, options, isDone);
  } catch (err) {
    if (err instanceof NothingToDo) return SKIPPED;
    throw err;
  }
}
