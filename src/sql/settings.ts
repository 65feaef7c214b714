// The session settings a lock call changes (keepalive, no server timeout may end it, our statements never
// cancelled) and how they are put back; and telling whether a session sits in a transaction block.
import { literal } from './keys.js';

// Server-side TCP keepalive for the lock session, so the server drops a holder whose host vanished (no FIN,
// no RST) in about 10 + 5 × 4 = 30 s instead of the kernel's two hours, and with it the lock.
// tcp_user_timeout covers a server with unacknowledged data in flight (keepalive only probes an idle
// socket); client_connection_check_interval (PostgreSQL 14+) lets a backend busy in a long statement
// notice. And no server timeout may end the session: it idles while fn works elsewhere (idle_session_timeout,
// PostgreSQL 14+), or inside a transaction fn left open (idle_in_transaction_session_timeout). Held for the
// whole call, waiting included.
export const CALL_SETTINGS: [name: string, value: string][] = [
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
export const OUR_STATEMENTS: [name: string, value: string][] = [
  ['statement_timeout', '0'],
  ['lock_timeout', '0'],
];
export const SAVED = [...CALL_SETTINGS, ...OUR_STATEMENTS].map(([name]) => name).concat('application_name');

/** The settings a session had before the call (null: the server has no such setting). */
export type SavedSettings = Record<string, string | null>;

// A setting this server does not have (idle_session_timeout before 14) is skipped.
export const set = (settings: [string, string][]) =>
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
export const inBlock = `coalesce(current_setting('${PROBE}', true), '') = 'yes'`;
/** The second statement on its own, answering `in_block`. */
export const inBlockSql = `SELECT ${inBlock} AS in_block`;

/** A statement that puts settings back (`restore`: a restoreAllSql or restoreTimeoutsSql expression). */
export const putBackSql = (restore: string) => `SELECT ${restore} AS restored`;

/**
 * The same, as the last step of taking a lock: marked like the statement that took it, so that a holder that
 * then idles (the CLI's, while its CMD works) still shows as taking the lock, not as running one of its settings.
 */
export const putBackAfterTakingSql = (restore: string) => `/* pg-migration-lock: taking */ ${putBackSql(restore)}`;

/** Ends a transaction block fn left open. */
export const rollbackSql = 'ROLLBACK';

/**
 * Run at each checkout of a fleet's shared pool: what a tenant's migration may have left on the session (`SET ROLE`,
 * a `SET` of any setting, search_path, temporary tables) must not reach the next tenant.
 */
export const resetSessionSql = 'SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DISCARD TEMP';
