// Looking at a lock in SQL: who holds a key and who waits (one statement, decoded into a LockStatus), which
// migration locks a database has at all, terminating a stale holder and its work, and the other small
// questions asked of the catalog (a standby, a key held, a schema there).
import type { Query } from '../driver/index.js';
import { canMigrateSql, isTagOf, keyOfTag } from './fencing.js';
import { keyParts, lockRowsOf } from './keys.js';
import { type Progress, progressOf, progressSql } from './progress.js';
import { waitingSince } from './waiters.js';

/** A session seen in `pg_locks` + `pg_stat_activity`. */
export interface Holder {
  /** Backend pid (`pg_backend_pid()` of that session). */
  pid: number;
  applicationName: string | null;
  /** Client address, or null for a Unix-socket connection (or when not visible to this role). */
  clientAddr: string | null;
  backendStart: Date | null;
  state: string | null;
  /** The session's current or last query (PostgreSQL shows it only to the same role or pg_read_all_stats). */
  query: string | null;
  /** When that query began (`pg_stat_activity.query_start`), when visible. */
  queryStart: Date | null;
  /**
   * For the holder and its `work`: the progress of the command it runs, for the commands with a
   * `pg_stat_progress_*` view (CREATE INDEX [CONCURRENTLY], VACUUM, ANALYZE, CLUSTER, COPY on PostgreSQL 14+).
   */
  progress?: Progress;
  /** For waiters: how long this session has been waiting, in milliseconds, when known. */
  waitingMs?: number;
  /**
   * For `work`: whether its role could change this database (see the README's Guarantees), so that it can be a
   * holding's work. `false`: it only wears a holding's tag (any role that can connect can set an
   * application_name); fencing neither waits for it nor terminates it.
   */
  canMigrate?: boolean;
}

export interface LockStatus {
  key: bigint;
  locked: boolean;
  holder: Holder | null;
  /** Sessions waiting for the key: through this library, or blocked in a plain `pg_advisory_lock`. */
  waiters: Holder[];
  /**
   * Other sessions carrying a holding's fencing tag of the key: the holder's work (a `run` command's
   * connections, fn's extra ones), or work an earlier holding left running, which the next holder terminates;
   * an entry with `canMigrate: false` only wears the tag.
   */
  work: Holder[];
  /** The server is a read-only standby: a lock there excludes nobody on the primary (the library refuses to lock there). */
  standby: boolean;
}

// One round trip. The lock row (objsubid 1) gives the holder and plain blocked waiters; the two-key
// shared row (objsubid 2) on the same classid/objid is the registry our pollers join; sessions carrying a
// tag of the key (objsubid 0 here) are the holdings' work. `waitstart` exists from PostgreSQL 14 on;
// reading it through to_jsonb keeps older servers working. The progress views are joined for the holder and the work only.
const statusSql = (key: bigint) => `
WITH rows AS (
  SELECT l.pid, l.granted, l.objsubid, (to_jsonb(l) ->> 'waitstart')::timestamptz AS waitstart, NULL::bool AS can_migrate
  FROM pg_locks l
  WHERE l.locktype = 'advisory'
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.classid = $1::oid AND l.objid = $2::oid AND l.objsubid IN (1, 2)
  UNION ALL
  SELECT t.pid, true, 0, NULL, ${canMigrateSql('t.usesysid')} FROM (SELECT a.pid, a.usesysid FROM pg_stat_activity a
    WHERE a.datname = current_database() AND ${isTagOf(key, 'a.application_name')} AND a.pid <> pg_backend_pid() OFFSET 0) t),
progress (pid, command, phase, done, total) AS (${progressSql})
SELECT r.pid, r.granted, r.objsubid, r.can_migrate, a.application_name, host(a.client_addr) AS client_addr,
       a.backend_start, a.state, a.query, a.query_start, pg_is_in_recovery() AS standby,
       p.command AS progress_command, p.phase AS progress_phase, p.done AS progress_done, p.total AS progress_total,
       (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS now_ms,
       (extract(epoch FROM clock_timestamp() - r.waitstart) * 1000)::float8 AS blocked_ms
FROM rows r LEFT JOIN pg_stat_activity a ON a.pid = r.pid
  LEFT JOIN LATERAL (SELECT * FROM progress p WHERE p.pid = r.pid AND r.granted AND r.objsubid IN (0, 1) LIMIT 1) p ON true
ORDER BY r.objsubid = 0, r.objsubid, r.granted DESC, a.backend_start`;

interface StatusRow {
  pid: number;
  granted: boolean;
  objsubid: number;
  can_migrate: boolean | null;
  standby: boolean;
  application_name: string | null;
  client_addr: string | null;
  backend_start: Date | null;
  state: string | null;
  query: string | null;
  query_start: Date | null;
  progress_command: string | null;
  progress_phase: string | null;
  progress_done: number | null;
  progress_total: number | null;
  now_ms: number;
  blocked_ms: number | null;
}

/** Reads the lock's state on an open session (`prefix` lets a waiter keep its breadcrumb). */
export async function queryLockStatus(query: Query, key: bigint, prefix = ''): Promise<LockStatus> {
  const { classid, objid } = keyParts(key);
  const rows = await query<StatusRow>(prefix + statusSql(key), [classid, objid]);
  const toHolder = (row: StatusRow): Holder => ({
    pid: row.pid,
    applicationName: row.application_name,
    clientAddr: row.client_addr,
    backendStart: row.backend_start,
    state: row.state,
    query: row.query,
    queryStart: row.query_start,
  });
  const holderRow = rows.find((row) => row.objsubid === 1 && row.granted);
  const waiters = new Map<number, Holder>();
  const work: Holder[] = [];
  for (const row of rows) {
    if (row === holderRow || row.pid === holderRow?.pid || waiters.has(row.pid)) continue;
    if (row.objsubid === 0) work.push(withProgress({ ...toHolder(row), canMigrate: row.can_migrate === true }, row));
    else if (row.objsubid === 1 && !row.granted) {
      waiters.set(row.pid, { ...toHolder(row), waitingMs: Math.max(0, Math.round(row.blocked_ms ?? 0)) });
    } else if (row.objsubid === 2 && row.granted) {
      const since = waitingSince(row.query);
      const waiter = toHolder(row);
      if (since !== undefined) waiter.waitingMs = Math.max(0, Math.round(row.now_ms - since));
      waiters.set(row.pid, waiter);
    }
  }
  const holder = holderRow ? withProgress(toHolder(holderRow), holderRow) : null;
  // No row at all says nothing of the server: ask it then (a free lock on a primary, the common case, pays a round trip).
  const standby =
    rows[0]?.standby ?? (await query<{ standby: boolean }>('SELECT pg_is_in_recovery() AS standby'))[0]!.standby;
  return { key, locked: holder !== null, holder, waiters: [...waiters.values()], work, standby };
}

/** The holder (or work) with its command's progress, when a progress view lists it. */
function withProgress(holder: Holder, row: StatusRow): Holder {
  const progress = progressOf(row);
  return progress ? { ...holder, progress } : holder;
}

/**
 * The keys of every migration lock of this database that is held or waited for, or has tagged work running:
 * the keys of `known`, keys held by a holding of this library, and keys its waiters wait for. Only looks.
 */
export async function migrationLockKeys(query: Query, known: ReadonlySet<bigint>): Promise<bigint[]> {
  // Held advisory locks, our waiters' registry rows (their last query bears the waiting breadcrumb), and
  // sessions carrying a tag.
  const rows = await query<{ objsubid: number; classid: string | null; objid: string | null; name: string | null }>(
    `SELECT l.objsubid, l.classid::int8::text AS classid, l.objid::int8::text AS objid, a.application_name AS name
     FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND (l.objsubid = 1 OR (l.objsubid = 2 AND a.query LIKE '/* pg-migration-lock: waiting for %'))
     UNION ALL
     SELECT 0, NULL, NULL, application_name FROM pg_stat_activity
     WHERE datname = current_database() AND pid <> pg_backend_pid()
       AND application_name ~ '^pg-migration-lock:-?[0-9]+:[0-9a-z]{6}([.]|$)'`,
  );
  const keys = new Set<bigint>();
  for (const { objsubid, classid, objid, name } of rows) {
    const tagged = keyOfTag(name);
    if (objsubid === 0) {
      if (tagged !== undefined) keys.add(tagged);
      continue;
    }
    const key = BigInt.asIntN(64, (BigInt(classid!) << 32n) | BigInt(objid!));
    // Another application's advisory lock is none of ours: only known keys, our holdings and our waiters.
    if (objsubid === 2 || known.has(key) || tagged === key) keys.add(key);
  }
  return [...keys].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/**
 * Terminates the backend holding `key` (only `onlyPid`, when given) and the tagged work of the key, in one statement:
 * with `onlyPid`, only the work of that holder's holding (another holding's belongs to whoever holds the lock now),
 * and never a backend whose role cannot change the database (it only wears a tag). Answers the pids signalled.
 */
export async function terminateHolder(
  query: Query,
  key: bigint,
  onlyPid: number | undefined,
): Promise<{ pid: number; holder: boolean }[]> {
  return query<{ pid: number; holder: boolean }>(
    `WITH h AS (SELECT l.pid, a.application_name AS tag FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE ${lockRowsOf(key, 1, 'l')} AND l.granted AND l.pid <> pg_backend_pid() AND ($1::int IS NULL OR l.pid = $1))
     SELECT a.pid, a.pid = h.pid AS holder, pg_terminate_backend(a.pid) AS signalled
     FROM pg_stat_activity a LEFT JOIN h ON true
     WHERE a.pid <> pg_backend_pid()
       AND (a.pid = h.pid OR (a.datname = current_database() AND ${isTagOf(key, 'a.application_name')}
            AND ($1::int IS NULL OR a.application_name = h.tag) AND ${canMigrateSql('a.usesysid')}))`,
    [onlyPid ?? null],
  );
}

/** Whether another session holds `key` in this database right now (one cheap look, no lock taken). */
export async function isHeld(query: Query, key: bigint): Promise<boolean> {
  const [row] = await query<{ held: boolean }>(
    `SELECT EXISTS (SELECT FROM pg_locks WHERE ${lockRowsOf(key, 1)} AND granted) AS held`,
  );
  return row?.held === true;
}

/** The primary a standby replicates from, when it shows it (pg_stat_wal_receiver, to roles with pg_read_all_stats). */
export async function primaryOf(query: Query): Promise<{ host: string; port: number } | undefined> {
  const [row] = await query<{ host: string | null; port: number | null }>(
    'SELECT sender_host AS host, sender_port AS port FROM pg_stat_wal_receiver',
  ).catch(() => []);
  return row?.host ? { host: row.host, port: row.port ?? 5432 } : undefined;
}

/** Who this session runs as, and whose backend `pid` is (and whether that role is a superuser), for messages that say which role needs which right. */
export async function rolesOf(
  query: Query,
  pid: number | null,
): Promise<{ me: string; holder: string | null; holderIsSuper: boolean | null }> {
  const [row] = await query<{ me: string; holder: string | null; holder_is_super: boolean | null }>(
    `SELECT current_user AS me, a.usename AS holder, r.rolsuper AS holder_is_super
     FROM (SELECT 1) one
     LEFT JOIN pg_stat_activity a ON a.pid = $1
     LEFT JOIN pg_roles r ON r.oid = a.usesysid`,
    [pid],
  );
  return { me: row!.me, holder: row!.holder, holderIsSuper: row!.holder_is_super };
}
