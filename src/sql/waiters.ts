// The waiters: their registry (a shared advisory lock beside the key's), the channel a release wakes them on,
// and the breadcrumb their statements carry, which says since when each waits.
import { advisoryRows, keyParts, lockRowsOf } from './keys.js';

/** The channel a release NOTIFYs on, and waiters LISTEN to. */
export const channelOf = (key: bigint) => `pg_migration_lock_${key}`;

/**
 * Joins the waiters' registry: a shared two-key advisory lock on the key's classid/objid (objsubid 2), which
 * never conflicts, so status can list waiters and a release can pick one to wake.
 */
export function registerSql(key: bigint): string {
  const { hi, lo } = keyParts(key);
  return `SELECT pg_try_advisory_lock_shared(${hi}, ${lo}) AS registered, pg_backend_pid() AS pid,
    (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS now_ms`;
}

/** Leaves the registry (and puts settings back, when `restoreSql` is given). */
export function unregisterSql(key: bigint, restoreSql = "''"): string {
  const { hi, lo } = keyParts(key);
  return `SELECT pg_advisory_unlock_shared(${hi}, ${lo}), ${restoreSql} AS restored`;
}

// Wakes one registered waiter, picked at random (no waiter starves), so N waiters do not stampede the
// server and the CPU at every hand-off; the others keep polling. Nobody registered (the exclusive
// try-lock on the registry key succeeds, and is dropped at once) is the common, uncontended case: then
// neither the pg_locks scan (which reads every lock of the server) nor the NOTIFY runs. A NOTIFY makes
// its transaction take a transaction id, and so a commit record the server must flush to disk.
// pg_lock_status() rather than the pg_locks view: this statement runs at every release, and the view costs more
// to plan than the rest of it.
export function wakeNextWaiterSql(key: bigint): string {
  const { hi, lo, classid, objid } = keyParts(key);
  return wakeNext(`'${channelOf(key)}'`, String(hi), String(lo), String(classid), String(objid));
}

/** {@link wakeNextWaiterSql} with its parts as SQL expressions (the parameters of the prepared unlock). */
export function wakeNext(channel: string, hi: string, lo: string, classid: string, objid: string): string {
  return `(SELECT pg_notify(${channel}, next.pid) FROM (SELECT
      CASE WHEN pg_try_advisory_lock(${hi}, ${lo}) THEN (SELECT NULL::text FROM pg_advisory_unlock(${hi}, ${lo}))
      ELSE (SELECT l.pid::text FROM pg_lock_status() l WHERE ${advisoryRows(classid, objid, 2, 'l')} AND l.granted AND l.pid <> pg_backend_pid() ORDER BY random() LIMIT 1) END
    AS pid OFFSET 0) next WHERE next.pid IS NOT NULL)`;
}

/** A chosen waiter that leaves without the lock passes its wake-up on to the next. */
export const passWakeUpSql = (key: bigint) => `SELECT ${wakeNextWaiterSql(key)}`;

/**
 * A watcher that never takes the lock (`pending --wait`) passes a wake-up naming it to everyone (an empty
 * payload): a lock waiter must not lose its turn to it, and passing on by name could bounce between two
 * watchers forever.
 */
export const wakeEveryoneSql = (key: bigint) =>
  `SELECT pg_notify('${channelOf(key)}', '') WHERE EXISTS (SELECT 1 FROM pg_locks WHERE ${lockRowsOf(key, 2)} AND granted AND pid <> pg_backend_pid())`;

/** An empty payload wakes everyone; a pid, only that waiter. */
export const wakesWaiter = (payload: string, pid: number) => payload === '' || payload === String(pid);

/**
 * Waiting sessions put this breadcrumb, with the server time they started, at the head of every query
 * they send, so `pg_stat_activity` (and so `getLockStatus`) can tell how long each has waited.
 */
export const waitingComment = (key: bigint, sinceMs: number) =>
  `/* pg-migration-lock: waiting for ${key} since ${sinceMs} */ `;

/** When a waiter's query (with its breadcrumb) says it started waiting, in server epoch milliseconds. */
export function waitingSince(query: string | null): number | undefined {
  const since = /^\/\* pg-migration-lock: waiting for -?\d+ since (\d+) \*\//.exec(query ?? '')?.[1];
  return since === undefined ? undefined : Number(since);
}

/** A session's last query was one of ours taking a lock (pg_stat_activity cuts long queries: the head says it). */
export const isLockAttempt = (query: string) => /^\/\* pg-migration-lock: (taking|waiting for)\b/.test(query);
