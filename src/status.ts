// Looking at a lock from outside: who holds it and who waits (getLockStatus), and the stale-holder remedy
// (releaseLock), which terminates the holder and its holding's tagged work. The statements are src/sql/status.ts'.
import { type ClientSource, withSession } from './driver/index.js';
import { KNOWN_KEYS, type LockKeyInput, parseKey } from './key.js';
import { checkOptionNames } from './option-names.js';
import { stillThere } from './sql/fencing.js';
import { type LockStatus, migrationLockKeys, queryLockStatus, terminateHolder } from './sql/status.js';
import { nap } from './time.js';

export type { Holder, LockStatus } from './sql/status.js';

/**
 * Every migration lock of this database that is held or waited for, or has tagged work running: the keys of
 * the key table (KNOWN_KEYS), keys held by a holding of this library, and keys its waiters wait for (a
 * `--name` key included). Only looks.
 */
export async function findMigrationLocks(client: ClientSource): Promise<LockStatus[]> {
  return withSession(client, async ({ query }) => {
    const found: LockStatus[] = [];
    for (const key of await migrationLockKeys(query, new Set(KNOWN_KEYS.map((entry) => entry.key)))) {
      found.push(await queryLockStatus(query, key));
    }
    return found;
  });
}

/**
 * Who holds the lock on `key`, and who waits for it. It only looks: nothing is changed.
 *
 * @example
 * const { locked, holder, waiters } = await getLockStatus(process.env.DATABASE_URL, DEFAULT_LOCK_KEY);
 */
export async function getLockStatus(client: ClientSource, key: LockKeyInput): Promise<LockStatus> {
  const k = parseKey(key);
  return withSession(client, (session) => queryLockStatus(session.query, k));
}

export interface ReleaseLockOptions {
  /**
   * Terminate the holder only if it is still this backend: what you looked at in `getLockStatus`,
   * not whoever took the lock since.
   * @default undefined (whichever session holds the lock)
   * @example await releaseLock(pool, key, { pid: status.holder.pid })
   */
  pid?: number;
}

/** What {@link releaseLock} saw and did. */
export interface ReleaseResult {
  /** The lock is no longer held by the backend that held it (false: nobody held it, or it did not let go in time). */
  released: boolean;
  /** The backend that held the lock and was terminated, or null when none held it. */
  pid: number | null;
  /** Every backend terminated: the holder, and the work carrying its holding's (or an earlier holding's) tag. */
  terminated: number[];
}

// pg_terminate_backend only signals; a backend that does not leave within this is reported, not waited for.
const GONE_WITHIN_MS = 10_000;

/**
 * Terminates the backend that holds the lock on `key`, and the work tagged with that holding's fencing tag
 * (a `run` command's statements, fn's extra connections), and waits until they are gone. With no holder,
 * it terminates work that an earlier holding left running under its tag. Nothing else is touched. A running
 * migration on those sessions is interrupted: use it for stale holders.
 *
 * @returns `{ released, pid, terminated }`: `released` true once the holder `pid` is gone; `{ released: false,
 *   pid: null }` when none held it (or, with `options.pid`, when that backend no longer holds it).
 */
export async function releaseLock(
  client: ClientSource,
  key: LockKeyInput,
  options: ReleaseLockOptions = {},
): Promise<ReleaseResult> {
  const k = parseKey(key);
  if (options === null || typeof options !== 'object') throw new TypeError('Expected `options` to be an object');
  checkOptionNames(options, ['pid']);
  const { pid: onlyPid } = options;
  if (onlyPid !== undefined && !(Number.isSafeInteger(onlyPid) && onlyPid > 0)) {
    throw new TypeError(`Expected \`pid\` to be a backend pid (a positive integer), got ${String(onlyPid)}`);
  }
  return withSession(client, async (session) => {
    const rows = await terminateHolder(session.query, k, onlyPid);
    const terminated = rows.map((row) => row.pid);
    const pid = rows.find((row) => row.holder)?.pid ?? null;
    let left = terminated;
    for (const deadline = performance.now() + GONE_WITHIN_MS; left.length > 0 && performance.now() < deadline; ) {
      await nap(10).done;
      left = await stillThere(session.query, left);
    }
    return { released: pid !== null && !left.includes(pid), pid, terminated };
  });
}
