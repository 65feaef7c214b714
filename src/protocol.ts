// The wire protocol: every SQL text and name the lock puts on the wire (the lock and its waiters' registry
// in pg_locks, the wake-up channel, the session settings and their restore, the waiting breadcrumb, the
// fencing tag), so the lock, status, the CLI and the adapters all speak it from one place.
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { keyParts } from './key.js';

/** A string as an SQL literal. */
export const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;
// Quoted: an unquoted -9223372036854775808 parses as minus an out-of-range 9223372036854775808.
export const sqlKey = (key: bigint) => `'${key}'::bigint`;

/** The channel a release NOTIFYs on, and waiters LISTEN to. */
export const channelOf = (key: bigint) => `pg_migration_lock_${key}`;

/** The `pg_locks` rows of `key` in this database: `objsubid` 1 is the lock, 2 the waiters' registry. */
export function lockRowsOf(key: bigint, objsubid: 1 | 2, alias = ''): string {
  const { classid, objid } = keyParts(key);
  const c = alias ? `${alias}.` : '';
  return `${c}locktype = 'advisory' AND ${c}objsubid = ${objsubid} AND ${c}classid = ${classid} AND ${c}objid = ${objid}
    AND ${c}database = (SELECT oid FROM pg_database WHERE datname = current_database())`;
}

// ---- The fencing tag -------------------------------------------------------------------------------

const TAG_PREFIX = 'pg-migration-lock:';
// PostgreSQL keeps the first 63 bytes of an application_name, and shows anything but printable ASCII as '?'.
const NAME_BYTES = 63;

/**
 * A new holding's tag: `pg-migration-lock:<key>:<token>`, the token six random characters, then `.` and the
 * holder's name (`applicationName`, else `<pid>@<host>`), cut to what PostgreSQL keeps of an application_name.
 */
export function newTag(key: bigint, name = `${process.pid}@${hostname()}`): string {
  const token = [...randomBytes(6)].map((byte) => (byte % 36).toString(36)).join('');
  const tag = `${TAG_PREFIX}${key}:${token}.${name.replace(/[^\x20-\x7e]/g, '?')}`;
  return tag.slice(0, NAME_BYTES);
}

/** SQL: `column` is a holding's tag for `key` (any holding). A plain `pg-migration-lock:<host>:<pid>` never matches. */
export const isTagOf = (key: bigint, column: string) =>
  `${column} ~ ${literal(`^${TAG_PREFIX}${key}:[0-9a-z]{6}([.]|$)`)}`;

/** The key of a holding's tag, or undefined when `name` is not one. */
export function keyOfTag(name: string | null | undefined): bigint | undefined {
  const match = /^pg-migration-lock:(-?\d{1,19}):[0-9a-z]{6}(\.|$)/.exec(name ?? '');
  return match ? BigInt(match[1]!) : undefined;
}

/**
 * SQL: whether role `role` (an oid) could have been doing a holding's work in this database, that is, could change
 * it: a superuser, the holder's own role (or a member of it), or a role that may create in the database or one of
 * its schemas, owns a schema or a table there, or may write to a table. `application_name` is chosen by the client
 * and visible to every role, so anyone who can connect can wear a holding's tag: a role that cannot change the
 * database cannot have been migrating, and must neither block a deploy nor be terminated by one. Evaluated only for
 * backends that wear a tag, which are rare, so the catalog scans cost nothing in the common case.
 */
export const canMigrateSql = (role: string) => `(
    EXISTS (SELECT FROM pg_catalog.pg_roles WHERE oid = ${role} AND rolsuper)
    OR pg_catalog.pg_has_role(${role}, current_user, 'MEMBER')
    OR pg_catalog.has_database_privilege(${role}, current_database(), 'CREATE')
    OR EXISTS (SELECT FROM pg_catalog.pg_namespace n WHERE n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
               AND (n.nspowner = ${role} OR pg_catalog.has_schema_privilege(${role}, n.oid, 'CREATE')))
    OR EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                 AND (c.relowner = ${role} OR pg_catalog.has_table_privilege(${role}, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE'))))`;

/** A backend wearing a holding's tag, as fencing sees it. */
export interface TaggedRow {
  pid: number;
  tag: string;
  role: string | null;
  /** `active`, `idle`, `idle in transaction`…, and since when (server epoch ms), for messages. */
  state: string | null;
  since_ms: number | null;
  /** Its role could change the database (see canMigrateSql): only then is it a holding's work. */
  can_migrate: boolean;
}

/**
 * Backends of this database, but for this one, that carry a tag of `key` other than `exceptTag`: work of another
 * holding, which must not run beside the holder, or a role wearing a tag it cannot have been given (can_migrate
 * false), which is left alone. `terminate` signals the ones that can be a holding's work.
 */
export function taggedSql(key: bigint, exceptTag: string, terminate: boolean): string {
  // pg_stat_get_activity() itself, not the pg_stat_activity view: the view's joins (pg_database, pg_authid)
  // cost more to plan than the whole statement that takes the lock. OFFSET 0 keeps the tag filter below the
  // role check and the signal.
  return `SELECT f.pid, f.tag, f.role, f.state, f.since_ms, f.can_migrate${terminate ? ', CASE WHEN f.can_migrate THEN pg_terminate_backend(f.pid) END AS signalled' : ''}
    FROM (SELECT t.pid, t.tag, pg_get_userbyid(t.usesysid) AS role,
                 -- Another role's state is hidden without pg_read_all_stats; pg_locks, which every role sees, tells
                 -- a session inside a transaction (it holds its virtual transaction id) from an idle one.
                 coalesce(t.state, CASE WHEN EXISTS (SELECT FROM pg_locks l WHERE l.pid = t.pid AND l.locktype = 'virtualxid')
                   THEN 'in a transaction' ELSE 'idle' END) AS state,
                 (extract(epoch FROM t.state_change) * 1000)::float8 AS since_ms, ${canMigrateSql('t.usesysid')} AS can_migrate
      FROM (SELECT a.pid, a.application_name AS tag, a.usesysid, a.state, a.state_change FROM pg_stat_get_activity(NULL) a
        WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND a.pid <> pg_backend_pid()
          AND a.application_name LIKE ${literal(`${TAG_PREFIX}${key}:%`)} AND ${isTagOf(key, 'a.application_name')}
          AND a.application_name <> ${literal(exceptTag)} OFFSET 0) t OFFSET 0) f`;
}

/** The same, as one JSON text column (NULL when there are none): for the statement that takes the lock. */
const staleSql = (key: bigint, tag: string) =>
  `(SELECT json_agg(row_to_json(f))::text FROM (${taggedSql(key, tag, false)}) f)`;

/**
 * Terminates the backends carrying exactly `tag` (a holding's own work, when it lost its session), unless their
 * role cannot change the database: then they only wear the tag.
 */
export const terminateTagSql = (tag: string) =>
  `SELECT pid, pg_terminate_backend(pid) AS signalled FROM pg_stat_activity
   WHERE application_name = ${literal(tag)} AND pid <> pg_backend_pid() AND ${canMigrateSql('usesysid')}`;

/** Whether the server is a standby. */
export const standbySql = 'SELECT pg_is_in_recovery() AS standby';

/** Who this session runs as: named when it may not terminate a backend. */
export const currentUserSql = 'SELECT current_user AS me';

/** Which of `pids` ($1) are still there. */
export const stillThereSql = 'SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])';

// ---- Session settings ----------------------------------------------------------------------------

// Server-side TCP keepalive for the lock session, so the server drops a holder whose host vanished (no FIN,
// no RST) in about 10 + 5 × 4 = 30 s instead of the kernel's two hours, and with it the lock.
// tcp_user_timeout covers a server with unacknowledged data in flight (keepalive only probes an idle
// socket); client_connection_check_interval (PostgreSQL 14+) lets a backend busy in a long statement
// notice. And no server timeout may end the session: it idles while fn works elsewhere (idle_session_timeout,
// PostgreSQL 14+), or inside a transaction fn left open (idle_in_transaction_session_timeout). Held for the
// whole call, waiting included.
const CALL_SETTINGS: [name: string, value: string][] = [
  ['tcp_keepalives_idle', '10'],
  ['tcp_keepalives_interval', '5'],
  ['tcp_keepalives_count', '4'],
  ['tcp_user_timeout', '30000'],
  ['client_connection_check_interval', '5000'],
  ['idle_session_timeout', '0'],
  ['idle_in_transaction_session_timeout', '0'],
];
// Off for our own statements only (a waiter's polls and reports, fencing), so no role or database timeout
// cancels the wait; put back before fn runs, which gets them as configured.
const OUR_STATEMENTS: [name: string, value: string][] = [
  ['statement_timeout', '0'],
  ['lock_timeout', '0'],
];
const SAVED = [...CALL_SETTINGS, ...OUR_STATEMENTS].map(([name]) => name).concat('application_name');

/** The settings a session had before the call (null: the server has no such setting). */
export type SavedSettings = Record<string, string | null>;

// A setting this server does not have (idle_session_timeout before 14) is skipped.
const set = (settings: [string, string][]) =>
  `concat(${settings.map(([name, value]) => `CASE WHEN current_setting('${name}', true) IS NOT NULL THEN set_config('${name}', '${value}', false) END`).join(', ')})`;

/** SQL that puts back `names` as `saved` holds them (an empty string when there is nothing to put back). */
function restore(saved: SavedSettings, names: string[]): string {
  const parts = names
    .filter((name) => typeof saved[name] === 'string')
    .map((name) => `set_config('${name}', ${literal(saved[name]!)}, false)`);
  return parts.length === 0 ? "''" : `concat(${parts.join(', ')})`;
}

/** SQL putting back everything the call changed: as a column of the statement that unlocks. */
export const restoreAllSql = (saved: SavedSettings) => restore(saved, SAVED);
/** SQL putting back the statement timeouts, before fn runs. */
export const restoreTimeoutsSql = (saved: SavedSettings) =>
  restore(
    saved,
    OUR_STATEMENTS.map(([name]) => name),
  );
/**
 * Turns the statement timeouts off, answering their values before: for a session whose first statement of ours
 * the role's own timeout cancelled.
 */
export const timeoutsOffSql = `SELECT s.*, ${set(OUR_STATEMENTS)} AS settings FROM (SELECT ${OUR_STATEMENTS.map(([name]) => `current_setting('${name}', true) AS ${name}`).join(', ')} OFFSET 0) s`;

/** The call's settings, for a connection of ours that only listens (`pending --wait`). */
export const callSettingsSql = `SELECT ${set(CALL_SETTINGS)} AS settings`;

// ---- Transaction blocks --------------------------------------------------------------------------

// Whether a session is inside a transaction block, asked of the server in two statements, whatever the
// protocol: a transaction-local setting made by the first survives into the second only inside a block
// (in autocommit each statement is a transaction of its own). `now() <> statement_timestamp()` cannot
// tell: over the extended protocol one autocommit statement's Parse and Execute get different times.
const PROBE = 'pg_migration_lock.in_block';
/** The first statement of the two: sets the transaction-local marker. */
export const blockProbeSql = `SELECT set_config('${PROBE}', 'yes', true) AS probe`;
/** In the second: whether the marker is still there, that is, whether both ran in one transaction block. */
const inBlock = `coalesce(current_setting('${PROBE}', true), '') = 'yes'`;
/** The second statement on its own, answering `in_block`. */
export const inBlockSql = `SELECT ${inBlock} AS in_block`;

// ---- Taking the lock -----------------------------------------------------------------------------

/** What the first statement on a session answers. */
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
  /** JSON of SavedSettings. */
  saved: string;
  /** JSON of the backends still tagged by another holding of the key (when locked), else null. */
  stale: string | null;
}

/**
 * The first statement on a session, one round trip: read the settings in force (OFFSET 0 keeps that subquery
 * from being merged into the outer ones, which set them), refuse a session that already holds the key, sits in a
 * transaction or is on a standby, try the lock, set the call's settings, and when it is taken, tag the session and look
 * for another holding's work still running.
 */
export function firstTrySql(key: bigint, tag: string): string {
  return `/* pg-migration-lock: taking ${key} */ SELECT t.locked, t.held, t.in_tx, t.standby, t.pid, t.version, t.saved, t.stale,
    CASE WHEN NOT (t.held OR t.in_tx OR t.standby) THEN concat(${set(CALL_SETTINGS)},
      CASE WHEN NOT t.locked OR t.stale IS NOT NULL THEN ${set(OUR_STATEMENTS)} END) END AS settings,
    CASE WHEN t.locked THEN set_config('application_name', ${literal(tag)}, false) END AS tagged
  FROM (SELECT l.*, CASE WHEN l.locked THEN ${staleSql(key, tag)} END AS stale
    FROM (SELECT s.*, CASE WHEN s.held OR s.in_tx OR s.standby THEN false ELSE pg_try_advisory_lock(${sqlKey(key)}) END AS locked
      FROM (SELECT EXISTS (SELECT 1 FROM pg_locks WHERE ${lockRowsOf(key, 1)} AND granted AND pid = pg_backend_pid()) AS held,
              ${inBlock} AS in_tx, pg_is_in_recovery() AS standby, pg_backend_pid() AS pid, version() AS version,
              json_build_object(${SAVED.map((name) => `'${name}', current_setting('${name}', true)`).join(', ')})::text AS saved
            OFFSET 0) s OFFSET 0) l OFFSET 0) t`;
}

/** What a waiter's poll answers. */
export interface Poll {
  locked: boolean;
  pid: number;
  stale: string | null;
}

/** A waiter's try: when it takes the lock, it tags the session, looks for stale work and (if none) puts the timeouts back. */
export function pollSql(key: bigint, tag: string, saved: SavedSettings): string {
  return `SELECT t.locked, t.pid, t.stale,
    CASE WHEN t.locked THEN set_config('application_name', ${literal(tag)}, false) END AS tagged,
    CASE WHEN t.locked AND t.stale IS NULL THEN ${restoreTimeoutsSql(saved)} END AS ready
  FROM (SELECT l.*, CASE WHEN l.locked THEN ${staleSql(key, tag)} END AS stale
    FROM (SELECT pg_try_advisory_lock(${sqlKey(key)}) AS locked, pg_backend_pid() AS pid OFFSET 0) l OFFSET 0) t`;
}

// ---- Waiters' registry and wake-ups --------------------------------------------------------------

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
export function wakeNextWaiterSql(key: bigint): string {
  const { hi, lo } = keyParts(key);
  return `(SELECT pg_notify('${channelOf(key)}', next.pid) FROM (SELECT
      CASE WHEN pg_try_advisory_lock(${hi}, ${lo}) THEN (SELECT NULL::text FROM pg_advisory_unlock(${hi}, ${lo}))
      ELSE (SELECT pid::text FROM pg_locks WHERE ${lockRowsOf(key, 2)} AND granted AND pid <> pg_backend_pid() ORDER BY random() LIMIT 1) END
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

// ---- Releasing -----------------------------------------------------------------------------------

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

// ---- What pg_stat_activity shows -----------------------------------------------------------------

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
export const isLockAttempt = (query: string) => /^\/\* pg-migration-lock: (taking|waiting for) -?\d+/.test(query);
