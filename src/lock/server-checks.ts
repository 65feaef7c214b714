// Servers and poolers a session advisory lock cannot work through: recognised and refused with the fix,
// instead of "locking" nobody.
import type { Query, Session } from '../driver/index.js';
import { MigrationLockError } from '../errors.js';
import { primaryOf } from '../sql/status.js';

/** The name of a PostgreSQL look-alike whose `version()` this is, when its locks cannot be relied on. */
export function unsupportedServer(version: string): string | undefined {
  return /CockroachDB/i.test(version) ? 'CockroachDB' : /-YB-/.test(version) ? 'YugabyteDB' : undefined;
}

/**
 * CockroachDB accepts the advisory-lock functions but they lock nothing; YugabyteDB has no LISTEN/NOTIFY
 * and, unless enabled, no advisory locks. "Locking" there would exclude nobody.
 */
export function refuseUnsupported(key: bigint, version: string, cause?: unknown): void {
  const server = unsupportedServer(version);
  if (!server) return;
  throw new MigrationLockError(
    `${server} cannot hold a PostgreSQL session advisory lock the way pg-migration-lock needs (session-level pg_advisory_lock shared by every session, and LISTEN/NOTIFY), so the lock would exclude nobody. Use the migrator's own locking there, or run migrations from a single job. (server: ${version.slice(0, 80)})`,
    key,
    null,
    cause === undefined ? undefined : { cause },
  );
}

/** What to do about a transaction-mode pooler, with the likely culprit named when the endpoint shows it. */
export function poolerAdvice(session: Pick<Session, 'endpoint'>): string {
  const { host = '', port } = session.endpoint ?? {};
  const culprit =
    port === 6543
      ? " Port 6543 is Supabase's transaction pooler: use the session pooler (port 5432) or the direct host."
      : /-pooler\./.test(host)
        ? ` A "-pooler" host is Neon's pooled endpoint (PgBouncer in transaction mode): use its direct host, ${host.replace('-pooler.', '.')}.`
        : /\.proxy-[a-z0-9]+\..*rds\.amazonaws\.com$/.test(host)
          ? ' This looks like an RDS Proxy endpoint: connect to the database instance endpoint.'
          : '';
  return `A transaction-mode pooler hands each transaction to any server connection, so a session advisory lock excludes nobody.${culprit} Connect directly or through a session-mode pooler: Supabase port 5432 instead of 6543, Neon's host without "-pooler", PgBouncer pool_mode = session, or the database endpoint instead of RDS Proxy.`;
}

/** The session already held the key before we took it: a pooler sharing one server connection, or a lock taken outside this library. */
export function alreadyHeld(session: Session, key: bigint, pid: number): MigrationLockError {
  return new MigrationLockError(
    `This session (backend ${pid}) already holds migration lock ${key}, so taking it again would exclude nobody. ${poolerAdvice(session)}`,
    key,
  );
}

/** Waiting is only meaningful on one session; a pooler that moves us between server connections breaks it. */
export function checkSameSession(session: Session, key: bigint, expectedPid: number, pid: number): void {
  if (pid === expectedPid) return;
  throw new MigrationLockError(
    `The session waiting for migration lock ${key} moved from backend ${expectedPid} to ${pid}. ${poolerAdvice(session)}`,
    key,
  );
}

/** The caller's session is inside a transaction block: waiting there would hold a snapshot. */
export function inTransaction(key: bigint, pid?: number): MigrationLockError {
  return new MigrationLockError(
    `The client passed for migration lock ${key} is inside a transaction block${pid ? ` (backend ${pid})` : ''}: a session waiting there holds a snapshot, which a holder's CREATE INDEX CONCURRENTLY waits for forever, and the lock would outlive a rollback. COMMIT or ROLLBACK first, or pass a pool or a connection string.`,
    key,
  );
}

/**
 * The server is a hot standby: advisory locks work there, but only among the standby's own sessions, so a lock taken
 * there excludes nobody migrating on the primary (and a standby cannot migrate anyway). Names the primary when the
 * standby shows it (pg_stat_wal_receiver, to roles with pg_read_all_stats).
 */
export async function onStandby(query: Query, key: bigint, pid: number): Promise<MigrationLockError> {
  const primary = await primaryOf(query);
  const where = primary ? ` (the primary it replicates from: ${primary.host}:${primary.port})` : '';
  return new MigrationLockError(
    `The server is a read-only standby (pg_is_in_recovery() is true on backend ${pid}): a migration lock taken here excludes nobody on the primary, and migrations cannot run here. Take the lock and migrate on the primary${where}: connect to the primary's host, not a replica or read-only endpoint.`,
    key,
  );
}
