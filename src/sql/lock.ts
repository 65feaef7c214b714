// Taking and releasing the lock, each in one statement, and what those statements answer, decoded: the first
// try on a session (refusals, settings, the tag, an earlier holding's work), a waiter's try, the unlock.

import type { Query } from '../driver/index.js';
import { anyTaggedSql } from './fencing.js';
import { keyParts, literal, lockRowsOf, sqlKey } from './keys.js';
import {
  CALL_SETTINGS,
  inBlock,
  OUR_STATEMENTS,
  restoreTimeoutsSql,
  SAVED,
  type SavedSettings,
  set,
} from './settings.js';
import { wakeNextWaiterSql } from './waiters.js';

/** The server's own description, to recognise a look-alike that cannot lock (CockroachDB, YugabyteDB). */
export const versionSql = 'SELECT version() AS version';

/** What the first statement on a session answers, decoded (see {@link firstTry}). */
export interface FirstTry {
  locked: boolean;
  /** This session already holds the key: a transaction-mode pooler, or a lock taken outside this library. */
  held: boolean;
  /** The session is inside a transaction block (when probed, see blockProbeSql): a waiter there would hold a snapshot. */
  in_tx: boolean;
  /** The server is a standby (in recovery): a lock there excludes nobody on the primary. */
  standby: boolean;
  pid: number;
  version: string;
  /** The settings the session had before the call. */
  saved: SavedSettings;
  /** When locked: some backend still wears another holding's tag of the key (see fence.ts). */
  stale: boolean;
}

type Json<T, K extends keyof T> = Omit<T, K> & { [P in K]: string | null };

/** Runs the first statement on a session (see {@link firstTrySql}) and decodes its row. */
export async function firstTry(query: Query, key: bigint, tag: string): Promise<FirstTry> {
  const [row] = (await query<Json<FirstTry, 'saved'>>(firstTrySql(key, tag))) as [Json<FirstTry, 'saved'>];
  return { ...row, saved: JSON.parse(row.saved ?? '{}') as SavedSettings, stale: row.stale === true };
}

/**
 * The first statement on a session, one round trip: read the settings in force (OFFSET 0 keeps that subquery
 * from being merged into the outer ones, which set them), refuse a session that already holds the key, sits in a
 * transaction or is on a standby, try the lock, set the call's settings, and when it is taken, tag the session and look
 * for another holding's work still running.
 */
function firstTrySql(key: bigint, tag: string): string {
  return `/* pg-migration-lock: taking ${key} */ SELECT t.locked, t.held, t.in_tx, t.standby, t.pid, t.version, t.saved, t.stale,
    CASE WHEN NOT (t.held OR t.in_tx OR t.standby) THEN concat(${set(CALL_SETTINGS)},
      CASE WHEN NOT t.locked OR t.stale THEN ${set(OUR_STATEMENTS)} END) END AS settings,
    CASE WHEN t.locked THEN set_config('application_name', ${literal(tag)}, false) END AS tagged
  FROM (SELECT l.*, l.locked AND ${anyTaggedSql(key, tag)} AS stale
    FROM (SELECT s.*, CASE WHEN s.held OR s.in_tx OR s.standby THEN false ELSE pg_try_advisory_lock(${sqlKey(key)}) END AS locked
      FROM (SELECT EXISTS (SELECT 1 FROM pg_locks WHERE ${lockRowsOf(key, 1)} AND granted AND pid = pg_backend_pid()) AS held,
              ${inBlock} AS in_tx, pg_is_in_recovery() AS standby, pg_backend_pid() AS pid, version() AS version,
              json_build_object(${SAVED.map((name) => `'${name}', current_setting('${name}', true)`).join(', ')})::text AS saved
            OFFSET 0) s OFFSET 0) l OFFSET 0) t`;
}

/** What a waiter's poll answers, decoded (see {@link poll}). */
export interface Poll {
  locked: boolean;
  pid: number;
  stale: boolean;
}

/** Runs a waiter's try (see {@link pollSql}), its statement prefixed with `prefix`, and decodes its row. */
export async function poll(
  query: Query,
  prefix: string,
  key: bigint,
  tag: string,
  saved: SavedSettings,
): Promise<Poll> {
  const [row] = (await query<Poll>(prefix + pollSql(key, tag, saved))) as [Poll];
  return { ...row, stale: row.stale === true };
}

/** A waiter's try: when it takes the lock, it tags the session, looks for stale work and (if none) puts the timeouts back. */
function pollSql(key: bigint, tag: string, saved: SavedSettings): string {
  return `SELECT t.locked, t.pid, t.stale,
    CASE WHEN t.locked THEN set_config('application_name', ${literal(tag)}, false) END AS tagged,
    CASE WHEN t.locked AND NOT t.stale THEN ${restoreTimeoutsSql(saved)} END AS ready
  FROM (SELECT l.*, l.locked AND ${anyTaggedSql(key, tag)} AS stale
    FROM (SELECT pg_try_advisory_lock(${sqlKey(key)}) AS locked, pg_backend_pid() AS pid OFFSET 0) l OFFSET 0) t`;
}

export interface UnlockRow {
  unlocked: boolean;
  pid: number;
}

/** Unlocks, wakes the next waiter (pg_notify is delivered when this statement commits, just after the unlock), leaves the registry and puts settings back, in one round trip. */
export function unlockSql(key: bigint, registered: boolean, restoreSql: string): string {
  const { hi, lo } = keyParts(key);
  return `SELECT pg_advisory_unlock(${sqlKey(key)}) AS unlocked, pg_backend_pid() AS pid, ${wakeNextWaiterSql(key)} AS woke,
      ${registered ? `pg_advisory_unlock_shared(${hi}, ${lo})` : 'NULL'} AS unregistered, ${restoreSql} AS restored`;
}

/** Unlocks `key` on this session if (and only if) this session holds it: no WARNING when it does not. */
export const unlockIfHeldSql = (key: bigint) =>
  `SELECT pg_advisory_unlock(${sqlKey(key)}) FROM pg_locks WHERE ${lockRowsOf(key, 1)} AND granted AND pid = pg_backend_pid()`;

/**
 * After a transaction-mode pooler ran our unlock on another server connection: the backend that took the
 * lock unlocks if it is this one, else is terminated (one statement, so it never terminates itself).
 */
export const strandedLockSql = (key: bigint, pid: number) =>
  `SELECT CASE WHEN pid = pg_backend_pid() THEN pg_advisory_unlock(${sqlKey(key)}) ELSE pg_terminate_backend(pid) END
   FROM pg_locks WHERE ${lockRowsOf(key, 1)} AND granted AND pid = ${pid}`;
