// Fencing in SQL: the tag a holding's work carries (its application_name), the backends that still carry an
// earlier holding's tag and whether their role could have been doing that work, and terminating them.
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Query } from '../driver/index.js';
import { literal } from './keys.js';

const TAG_PREFIX = 'pg-migration-lock:';
// Asked once: os.hostname() is a system call, and a tag is made at every acquisition.
let hostName: string | undefined;
const host = () => (hostName ??= hostname());
// PostgreSQL keeps the first 63 bytes of an application_name, and shows anything but printable ASCII as '?'.
const NAME_BYTES = 63;
// Random bytes drawn 1 KiB at a time: one call into the system's generator per ~170 tags, not one per tag
// (it was the costliest part of an uncontended call's JavaScript).
let drawn = Buffer.alloc(0);
let next = 0;
function randomByte(): number {
  if (next === drawn.length) [drawn, next] = [randomBytes(1024), 0];
  return drawn[next++]!;
}

/**
 * A new holding's tag: `pg-migration-lock:<key>:<token>`, the token six random characters, then `.` and the
 * holder's name (`applicationName`, else `<pid>@<host>`), cut to what PostgreSQL keeps of an application_name.
 */
export function newTag(key: bigint, name = `${process.pid}@${host()}`): string {
  let token = '';
  for (let i = 0; i < 6; i++) token += (randomByte() % 36).toString(36);
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
function taggedSql(key: bigint, exceptTag: string, terminate: boolean): string {
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

/**
 * Whether any backend may wear another holding's tag of `key`: the test the statements that take the lock make at
 * every acquisition, so it is the cheapest that cannot miss one (a prefix match, no regular expression, no
 * catalog lookup). `pattern` and `tag` are SQL expressions (literals, or a prepared statement's parameters). A yes is rare, and may be wrong (a backend of another database, or a name that only starts like
 * a tag): only then are the backends read whole and checked (see {@link taggedBackends}).
 */
export const mayBeTaggedSql = (pattern: string, tag: string) =>
  `EXISTS (SELECT FROM pg_stat_get_activity(NULL) a
    WHERE a.application_name LIKE ${pattern} AND a.application_name <> ${tag} AND a.pid <> pg_backend_pid())`;

/** The LIKE pattern every tag of `key` matches (and, rarely, a name that only looks like one). */
export const tagPattern = (key: bigint) => `${TAG_PREFIX}${key}:%`;

/**
 * Terminates the backends carrying exactly `tag` (a holding's own work, when it lost its session), unless their
 * role cannot change the database: then they only wear the tag.
 */
const terminateTagSql = (tag: string) =>
  `SELECT pid, pg_terminate_backend(pid) AS signalled FROM pg_stat_activity
   WHERE application_name = ${literal(tag)} AND pid <> pg_backend_pid() AND ${canMigrateSql('usesysid')}`;

/** The backends wearing another holding's tag of `key` (see {@link taggedSql}); `terminate` signals those that can be a holding's work. */
export const taggedBackends = (
  query: Query,
  key: bigint,
  exceptTag: string,
  terminate: boolean,
): Promise<TaggedRow[]> => query<TaggedRow>(taggedSql(key, exceptTag, terminate));

/** Terminates the backends carrying exactly `tag` (see {@link terminateTagSql}); answers their pids. */
export const terminateTagged = async (query: Query, tag: string): Promise<number[]> =>
  (await query<{ pid: number }>(terminateTagSql(tag))).map((row) => row.pid);

/** Which of `pids` are still there. */
export async function stillThere(query: Query, pids: number[]): Promise<number[]> {
  return (await query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])', [pids])).map(
    (row) => row.pid,
  );
}

/** Who this session runs as. */
export async function currentUser(query: Query): Promise<string> {
  return (await query<{ me: string }>('SELECT current_user AS me'))[0]!.me;
}

/**
 * The client port the server sees for this session, and the port it listens on: through a pooler or proxy the
 * server sees the pooler's connection, not this one's (see `run`, which tags its command only when direct).
 */
export async function portsSeen(query: Query): Promise<{ clientPort: number | null; port: string }> {
  const [row] = await query<{ client_port: number | null; port: string }>(
    "SELECT inet_client_port() AS client_port, current_setting('port') AS port",
  );
  return { clientPort: row!.client_port, port: row!.port };
}
