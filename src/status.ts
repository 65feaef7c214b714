// Looking at a lock from outside: who holds it and who waits (getLockStatus), and the stale-holder remedy
// (releaseLock), which terminates the holder and its holding's tagged work.
import { type ClientSource, type Query, withSession } from './driver/index.js';
import { KNOWN_KEYS, keyParts, type LockKeyInput, parseKey } from './key.js';
import { checkOptionNames } from './option-names.js';
import { canMigrateSql, isTagOf, keyOfTag, lockRowsOf, standbySql, stillThereSql, waitingSince } from './protocol.js';
import { nap } from './time.js';

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
// reading it through to_jsonb keeps older servers working.
const statusSql = (key: bigint) => `
WITH rows AS (
  SELECT l.pid, l.granted, l.objsubid, (to_jsonb(l) ->> 'waitstart')::timestamptz AS waitstart, NULL::bool AS can_migrate
  FROM pg_locks l
  WHERE l.locktype = 'advisory'
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.classid = $1::oid AND l.objid = $2::oid AND l.objsubid IN (1, 2)
  UNION ALL
  SELECT t.pid, true, 0, NULL, ${canMigrateSql('t.usesysid')} FROM (SELECT a.pid, a.usesysid FROM pg_stat_activity a
    WHERE a.datname = current_database() AND ${isTagOf(key, 'a.application_name')} AND a.pid <> pg_backend_pid() OFFSET 0) t)
SELECT r.pid, r.granted, r.objsubid, r.can_migrate, a.application_name, host(a.client_addr) AS client_addr,
       a.backend_start, a.state, a.query, pg_is_in_recovery() AS standby,
       (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS now_ms,
       (extract(epoch FROM clock_timestamp() - r.waitstart) * 1000)::float8 AS blocked_ms
FROM rows r LEFT JOIN pg_stat_activity a ON a.pid = r.pid
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
  });
  const holderRow = rows.find((row) => row.objsubid === 1 && row.granted);
  const waiters = new Map<number, Holder>();
  const work: Holder[] = [];
  for (const row of rows) {
    if (row === holderRow || row.pid === holderRow?.pid || waiters.has(row.pid)) continue;
    if (row.objsubid === 0) work.push({ ...toHolder(row), canMigrate: row.can_migrate === true });
    else if (row.objsubid === 1 && !row.granted) {
      waiters.set(row.pid, { ...toHolder(row), waitingMs: Math.max(0, Math.round(row.blocked_ms ?? 0)) });
    } else if (row.objsubid === 2 && row.granted) {
      const since = waitingSince(row.query);
      const waiter = toHolder(row);
      if (since !== undefined) waiter.waitingMs = Math.max(0, Math.round(row.now_ms - since));
      waiters.set(row.pid, waiter);
    }
  }
  const holder = holderRow ? toHolder(holderRow) : null;
  // No row at all says nothing of the server: ask it then (a free lock on a primary, the common case, pays a round trip).
  const standby = rows[0]?.standby ?? (await query<{ standby: boolean }>(standbySql))[0]!.standby;
  return { key, locked: holder !== null, holder, waiters: [...waiters.values()], work, standby };
}

/**
 * Every migration lock of this database that is held or waited for, or has tagged work running: the keys of
 * the key table (KNOWN_KEYS), keys held by a holding of this library, and keys its waiters wait for (a
 * `--name` key included). Only looks.
 */
export async function findMigrationLocks(client: ClientSource): Promise<LockStatus[]> {
  return withSession(client, async ({ query }) => {
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
    const known = new Set(KNOWN_KEYS.map((entry) => entry.key));
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
    const found: LockStatus[] = [];
    for (const key of [...keys].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)))
      found.push(await queryLockStatus(query, key));
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
    // One statement: the holder, and the tagged work of this key (with `pid`, only the work of that holder's
    // holding: another holding's belongs to whoever holds the lock now).
    const rows = await session.query<{ pid: number; holder: boolean }>(
      `WITH h AS (SELECT l.pid, a.application_name AS tag FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
                  WHERE ${lockRowsOf(k, 1, 'l')} AND l.granted AND l.pid <> pg_backend_pid() AND ($1::int IS NULL OR l.pid = $1))
       SELECT a.pid, a.pid = h.pid AS holder, pg_terminate_backend(a.pid) AS signalled
       FROM pg_stat_activity a LEFT JOIN h ON true
       WHERE a.pid <> pg_backend_pid()
         AND (a.pid = h.pid OR (a.datname = current_database() AND ${isTagOf(k, 'a.application_name')}
              AND ($1::int IS NULL OR a.application_name = h.tag) AND ${canMigrateSql('a.usesysid')}))`,
      [onlyPid ?? null],
    );
    const terminated = rows.map((row) => row.pid);
    const pid = rows.find((row) => row.holder)?.pid ?? null;
    let left = terminated;
    for (const deadline = performance.now() + GONE_WITHIN_MS; left.length > 0 && performance.now() < deadline; ) {
      await nap(10).done;
      left = (await session.query<{ pid: number }>(stillThereSql, [left])).map((row) => row.pid);
    }
    return { released: pid !== null && !left.includes(pid), pid, terminated };
  });
}
