// Lock timeouts in SQL: setting the migration session's lock_timeout, and finding the sessions that blocked a
// migration's statement: seen while it waits (pg_blocking_pids of the sessions wearing the holding's tag), or,
// when nobody looked in time, the oldest transactions holding table locks afterwards.
import type { Query } from '../driver/index.js';

/** A session that held a table lock a migration's statement waited for. */
export interface Blocker {
  pid: number;
  applicationName: string | null;
  /** `active`, `idle in transaction`…; null when the role may not see it. */
  state: string | null;
  /** Its current (or, when idle, last) statement; null when the role may not see it. */
  query: string | null;
  /** When its transaction started: since when it may have held the lock. */
  xactStart: Date | null;
  /** When its current (or last) statement started. */
  queryStart: Date | null;
  /**
   * `seen`: seen blocking the migration's statement while it waited (pg_blocking_pids); `likely`: found after
   * the fact as the oldest transaction holding a table lock (no look in time: no second connection, or a wait
   * shorter than the look's interval).
   */
  seen: 'seen' | 'likely';
}

interface BlockerRow {
  pid: number;
  application_name: string | null;
  state: string | null;
  query: string | null;
  xact_start: Date | null;
  query_start: Date | null;
}

const decode =
  (seen: Blocker['seen']) =>
  (row: BlockerRow): Blocker => ({
    pid: row.pid,
    applicationName: row.application_name,
    state: row.state,
    query: row.query,
    xactStart: row.xact_start === null ? null : new Date(row.xact_start),
    queryStart: row.query_start === null ? null : new Date(row.query_start),
    seen,
  });

const COLUMNS = 'b.pid, b.application_name, b.state, b.query, b.xact_start, b.query_start';

/**
 * The sessions blocking, right now, a lock wait of any session wearing `tag` (the lock session running fn, a
 * `run` command's connections): pg_blocking_pids is asked only of the sessions waiting for a lock, so a look
 * costs little while nothing waits.
 */
export async function blockersOfTag(query: Query, tag: string): Promise<Blocker[]> {
  const rows = await query<BlockerRow>(
    `SELECT DISTINCT ON (b.pid) ${COLUMNS}
       FROM pg_stat_activity w
       CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocking(pid)
       JOIN pg_stat_activity b ON b.pid = blocking.pid
      WHERE w.application_name = $1 AND w.wait_event_type = 'Lock' AND b.application_name IS DISTINCT FROM $1
      ORDER BY b.pid`,
    [tag],
  );
  return rows.map(decode('seen'));
}

/**
 * After a lock timeout nobody saw (its blocker is no longer in pg_blocking_pids once the statement was
 * cancelled): the oldest transactions of this database, other than this session and the holding's work, that
 * hold a lock on a table (a user relation): what an `ALTER TABLE` waits for is most often the oldest of them.
 */
export async function likelyBlockers(query: Query, tag: string, limit = 3): Promise<Blocker[]> {
  const rows = await query<BlockerRow>(
    `SELECT ${COLUMNS}
       FROM pg_stat_activity b
      WHERE b.datname = current_database() AND b.pid <> pg_backend_pid()
        AND b.application_name IS DISTINCT FROM $1 AND b.xact_start IS NOT NULL
        AND EXISTS (SELECT FROM pg_locks l
                     WHERE l.pid = b.pid AND l.granted AND l.locktype = 'relation' AND l.relation >= 16384
                       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
      ORDER BY b.xact_start
      LIMIT $2`,
    [tag, limit],
  );
  return rows.map(decode('likely'));
}

/** Sets the session's lock_timeout (for the rest of the session, not one transaction). */
export async function setLockTimeout(query: Query, ms: number): Promise<void> {
  await query(`SELECT set_config('lock_timeout', $1, false) AS lock_timeout`, [`${ms}ms`]);
}

/** The PostgreSQL error of a lock timeout (and of NOWAIT): lock_not_available. */
export const LOCK_NOT_AVAILABLE = '55P03';
