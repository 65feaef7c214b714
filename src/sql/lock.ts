// Taking and releasing the lock, each in one statement, and what those statements answer, decoded: the first
// try on a session (refusals, settings, the tag, an earlier holding's work), a waiter's try, the unlock.

import { createHash } from 'node:crypto';
import type { Prepared, Query } from '../driver/index.js';
import { mayBeTaggedSql, tagPattern } from './fencing.js';
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
import { wakeNext } from './waiters.js';

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

/** Runs the first statement on a session (see {@link FIRST_TRY}) and decodes its row. */
export async function firstTry(run: RunPrepared, key: bigint, tag: string): Promise<FirstTry> {
  const { classid, objid } = keyParts(key);
  const values = [String(key), tag, classid, objid, tagPattern(key)];
  const [row] = (await run<Json<FirstTry, 'saved'>>({ ...FIRST_TRY, values })) as [Json<FirstTry, 'saved'>];
  return { ...row, saved: JSON.parse(row.saved ?? '{}') as SavedSettings, stale: row.stale === true };
}

/**
 * The first statement on a session, one round trip: read the settings in force (OFFSET 0 keeps that subquery
 * from being merged into the outer ones, which set them), refuse a session that already holds the key, sits in a
 * transaction or is on a standby, try the lock, set the call's settings, and when it is taken, tag the session and
 * ask whether anything else wears a tag of the key (see {@link mayBeTaggedSql}). It runs at every acquisition, so
 * its text never changes (a driver prepares it once per connection) and it is kept cheap: no views, and one
 * nested level per thing that must happen before the next (whether this session holds the key already is read from
 * pg_lock_status() itself, cheaper to plan than the pg_locks view, with no database filter: a backend's advisory
 * locks are all in its own database). $1 the key, $2 the tag, $3 and $4 the key's halves as pg_locks shows them,
 * $5 the LIKE pattern of the key's tags.
 */
const FIRST_TRY =
  prepared(`/* pg-migration-lock: taking */ SELECT l.locked, l.held, l.in_tx, l.standby, l.pid, l.version, l.saved,
    CASE WHEN l.locked THEN ${mayBeTaggedSql('$5::text', '$2::text')} ELSE false END AS stale,
    CASE WHEN NOT (l.held OR l.in_tx OR l.standby) THEN concat(${set(CALL_SETTINGS)},
      CASE WHEN NOT l.locked THEN ${set(OUR_STATEMENTS)} END) END AS settings,
    CASE WHEN l.locked THEN set_config('application_name', $2::text, false) END AS tagged
  FROM (SELECT s.*, CASE WHEN s.held OR s.in_tx OR s.standby THEN false ELSE pg_try_advisory_lock($1::bigint) END AS locked
    FROM (SELECT EXISTS (SELECT FROM pg_lock_status() h WHERE h.pid = pg_backend_pid() AND h.locktype = 'advisory'
                   AND h.objsubid = 1 AND h.classid = $3::oid AND h.objid = $4::oid AND h.granted) AS held,
            ${inBlock} AS in_tx, pg_is_in_recovery() AS standby, pg_backend_pid() AS pid, version() AS version,
            json_build_object(${SAVED.map((name) => `'${name}', current_setting('${name}', true)`).join(', ')})::text AS saved
          OFFSET 0) s OFFSET 0) l`);
/** A statement of constant text, named after it: a changed text is a new statement, never a clash. */
function prepared(text: string): Omit<Prepared, 'values'> {
  return { name: `pgml_${createHash('sha256').update(text).digest('hex').slice(0, 16)}`, text };
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

/**
 * A waiter's try: when it takes the lock, it tags the session, asks whether anything else wears a tag of the key,
 * and puts the statement timeouts back (fencing, in the rare case it has work to do, turns them off again).
 */
function pollSql(key: bigint, tag: string, saved: SavedSettings): string {
  return `SELECT l.locked, l.pid, CASE WHEN l.locked THEN ${mayBeTaggedSql(literal(tagPattern(key)), literal(tag))} ELSE false END AS stale,
    CASE WHEN l.locked THEN set_config('application_name', ${literal(tag)}, false) END AS tagged,
    CASE WHEN l.locked THEN ${restoreTimeoutsSql(saved)} END AS ready
  FROM (SELECT pg_try_advisory_lock(${sqlKey(key)}) AS locked, pg_backend_pid() AS pid OFFSET 0) l`;
}

/** Runs a prepared statement (see `runPrepared` in src/driver). */
export type RunPrepared = <R = Record<string, unknown>>(statement: Prepared) => Promise<R[]>;

export interface UnlockRow {
  unlocked: boolean;
  pid: number;
}

/**
 * The unlock (see {@link UNLOCK}) with its values: `restore` holds the settings to put back (none for a session
 * that is closed next, or whose settings were never changed).
 */
export function unlockStatement(key: bigint, registered: boolean, restore: SavedSettings | undefined): Prepared {
  const { hi, lo, classid, objid } = keyParts(key);
  const values: unknown[] = [String(key), hi, lo, classid, objid, registered];
  for (const name of SAVED) values.push(typeof restore?.[name] === 'string' ? restore[name] : null);
  return { ...UNLOCK, values };
}

/**
 * Unlocks, wakes the next waiter (pg_notify is delivered when this statement commits, just after the unlock),
 * leaves the registry and puts the settings back (each non-null value of $7 on, in SAVED's order), in one round
 * trip. $1 the key, $2 and $3 its halves as int4, $4 and $5 as pg_locks shows them, $6 whether this session joined
 * the waiters' registry.
 */
const UNLOCK = prepared(`SELECT pg_advisory_unlock($1::bigint) AS unlocked, pg_backend_pid() AS pid,
      ${wakeNext("'pg_migration_lock_' || $1::bigint", '$2::int', '$3::int', '$4::oid', '$5::oid')} AS woke,
      CASE WHEN $6::boolean THEN pg_advisory_unlock_shared($2::int, $3::int) END AS unregistered,
      concat(${SAVED.map((name, i) => `CASE WHEN $${i + 7}::text IS NOT NULL THEN set_config('${name}', $${i + 7}::text, false) END`).join(', ')}) AS restored`);

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
