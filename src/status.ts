import { keyParts, type LockKeyInput, parseKey } from './key.js';
import { type ClientSource, type Session, withSession } from './session.js';

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
  /** For waiters: how long this session has been waiting, in milliseconds, when known. */
  waitingMs?: number;
}

export interface LockStatus {
  key: bigint;
  locked: boolean;
  holder: Holder | null;
  /** Sessions waiting for the key: through this library, or blocked in a plain `pg_advisory_lock`. */
  waiters: Holder[];
}

/** The `pg_locks` rows of `key` in this database: `objsubid` 1 is the lock, 2 the waiters' registry. */
export function lockRowsOf(key: bigint, objsubid: 1 | 2): string {
  const { classid, objid } = keyParts(key);
  return `locktype = 'advisory' AND objsubid = ${objsubid} AND classid = ${classid} AND objid = ${objid}
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`;
}

/**
 * Waiting sessions put this breadcrumb, with the server time they started, at the head of every
 * query they send, so `pg_stat_activity` (and so `getLockStatus`) can tell how long each has waited.
 */
export function waitingComment(key: bigint, sinceMs: number): string {
  return `/* pg-migration-lock: waiting for ${key} since ${sinceMs} */ `;
}
const WAITING_SINCE = /^\/\* pg-migration-lock: waiting for -?\d+ since (\d+) \*\//;

// One round trip. The lock row (objsubid 1) gives the holder and plain blocked waiters; the
// two-key shared row (objsubid 2) on the same classid/objid is the registry our pollers join.
// `waitstart` exists from PostgreSQL 14 on; reading it through to_jsonb keeps older servers working.
const STATUS_SQL = `
SELECT l.pid, l.granted, l.objsubid, a.application_name, host(a.client_addr) AS client_addr,
       a.backend_start, a.state, a.query,
       (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS now_ms,
       (extract(epoch FROM clock_timestamp() - (to_jsonb(l) ->> 'waitstart')::timestamptz) * 1000)::float8 AS blocked_ms
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = $1::oid AND l.objid = $2::oid AND l.objsubid IN (1, 2)
ORDER BY l.objsubid, l.granted DESC, a.backend_start`;

interface StatusRow {
  pid: number;
  granted: boolean;
  objsubid: number;
  application_name: string | null;
  client_addr: string | null;
  backend_start: Date | null;
  state: string | null;
  query: string | null;
  now_ms: number;
  blocked_ms: number | null;
}

/** Reads the lock's state on an already open session (`prefix` lets a waiter keep its breadcrumb). */
export async function queryLockStatus(session: Session, key: bigint, prefix = ''): Promise<LockStatus> {
  const { classid, objid } = keyParts(key);
  const rows = await session.query<StatusRow>(prefix + STATUS_SQL, [classid, objid]);
  const toHolder = (row: StatusRow): Holder => ({
    pid: row.pid,
    applicationName: row.application_name,
    clientAddr: row.client_addr,
    backendStart: row.backend_start,
    state: row.state,
    query: row.query,
  });
  const holderRow = rows.find((row) => row.objsubid === 1 && row.granted);
  const waiters = new Map<number, Holder>();
  for (const row of rows) {
    if (row === holderRow || row.pid === holderRow?.pid || waiters.has(row.pid)) continue;
    if (row.objsubid === 1 && !row.granted) {
      waiters.set(row.pid, { ...toHolder(row), waitingMs: Math.max(0, Math.round(row.blocked_ms ?? 0)) });
    } else if (row.objsubid === 2 && row.granted) {
      const since = WAITING_SINCE.exec(row.query ?? '')?.[1];
      const waiter = toHolder(row);
      if (since) waiter.waitingMs = Math.max(0, Math.round(row.now_ms - Number(since)));
      waiters.set(row.pid, waiter);
    }
  }
  const holder = holderRow ? toHolder(holderRow) : null;
  return { key, locked: holder !== null, holder, waiters: [...waiters.values()] };
}

/**
 * Who holds the lock on `key`, and who waits for it.
 *
 * @example
 * const { locked, holder, waiters } = await getLockStatus(process.env.DATABASE_URL, DEFAULT_LOCK_KEY);
 */
export async function getLockStatus(client: ClientSource, key: LockKeyInput): Promise<LockStatus> {
  const k = parseKey(key);
  return withSession(client, (session) => queryLockStatus(session, k));
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

/**
 * Terminates the backend that holds the lock on `key` (and nothing else), and waits until the
 * lock is gone. A running migration on that session is interrupted: use it for stale holders.
 *
 * @returns `{ released: true, pid }` when a holder was terminated, `{ released: false, pid: null }` when none held it
 *   (or, with `options.pid`, when that backend no longer holds it).
 */
export async function releaseLock(
  client: ClientSource,
  key: LockKeyInput,
  options: ReleaseLockOptions = {},
): Promise<{ released: boolean; pid: number | null }> {
  const k = parseKey(key);
  const { pid: onlyPid } = options;
  if (onlyPid !== undefined && !(Number.isSafeInteger(onlyPid) && onlyPid > 0)) {
    throw new TypeError(`Expected \`pid\` to be a backend pid (a positive integer), got ${String(onlyPid)}`);
  }
  const match = `${lockRowsOf(k, 1)} AND granted`;
  return withSession(client, async (session) => {
    const rows = await session.query<{ pid: number }>(
      `SELECT pid, pg_terminate_backend(pid) FROM pg_locks WHERE ${match} AND pid <> pg_backend_pid()
         AND ($1::int IS NULL OR pid = $1)`,
      [onlyPid ?? null],
    );
    const pid = rows[0]?.pid;
    if (pid === undefined) return { released: false, pid: null };
    // pg_terminate_backend only signals; the lock is gone once the backend has exited.
    for (const deadline = Date.now() + 10_000; Date.now() < deadline; ) {
      const gone = await session.query(`SELECT 1 FROM pg_locks WHERE ${match} AND pid = $1`, [pid]);
      if (gone.length === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    return { released: true, pid };
  });
}
