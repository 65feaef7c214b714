import pg from 'pg';
import { pgQuery } from '../driver/pg.js';
import { rolesOf } from '../sql/status.js';
import type { LockStatus } from '../status.js';
import { CliError } from './errors.js';

/** What PostgreSQL shows in pg_stat_activity for another role's session without pg_read_all_stats. */
export const HIDDEN_QUERY = '<insufficient privilege>';

interface Roles {
  /** The role this CLI connected as. */
  me: string;
  /** The role of the session `pid`, and whether it is a superuser (null when the session is gone). */
  holder: string | null;
  holderIsSuper: boolean | null;
}

/** Who we are and whose session `pid` is: for messages that say which role needs which right. */
async function roles(connection: pg.ClientConfig, pid: number | null): Promise<Roles> {
  const client = new pg.Client(connection);
  client.on('error', () => {});
  await client.connect();
  try {
    return await rolesOf(pgQuery(client), pid);
  } finally {
    await client.end().catch(() => {});
  }
}

const quoted = (role: string) => `"${role.replace(/"/g, '""')}"`;

/**
 * The error for a `release` that PostgreSQL refused (SQLSTATE 42501): which role lacks which right. Terminating
 * another role's session needs that role's privileges or pg_signal_backend; a superuser's, a superuser.
 */
export async function releaseRefused(connection: pg.ClientConfig, pid: number, err: unknown): Promise<CliError> {
  let who: Roles;
  try {
    who = await roles(connection, pid);
  } catch {
    who = { me: 'this role', holder: null, holderIsSuper: null };
  }
  const reason = err instanceof Error ? ` (${err.message})` : '';
  if (who.holderIsSuper) {
    return new CliError(
      `Not released: pid ${pid} is a session of superuser role ${quoted(who.holder!)}, which only a superuser can terminate; role ${quoted(who.me)} is not one (pg_signal_backend is not enough)${reason}`,
      1,
      'Run release as a superuser, or stop that process where it runs.',
    );
  }
  const holder = who.holder ? `role ${quoted(who.holder)}` : 'another role';
  return new CliError(
    `Not released: role ${quoted(who.me)} may not terminate pid ${pid} of ${holder}: that needs membership in pg_signal_backend (or in ${holder})${reason}`,
    1,
    `As an administrator: GRANT pg_signal_backend TO ${quoted(who.me)};`,
  );
}

/**
 * When pg_stat_activity hid other roles' sessions from us: what `status` could not show, and which right
 * or role would show it. Undefined when everything was visible.
 */
export async function visibilityNote(connection: pg.ClientConfig, status: LockStatus): Promise<string | undefined> {
  const sessions = [status.holder, ...status.waiters].filter((session) => session !== null);
  const hidden = sessions.filter((session) => session.query === HIDDEN_QUERY);
  if (hidden.length === 0) return undefined;
  let who: Roles;
  try {
    who = await roles(connection, hidden[0]!.pid);
  } catch {
    who = { me: 'this role', holder: null, holderIsSuper: null };
  }
  const owner = who.holder ? `, or as role ${quoted(who.holder)}` : '';
  return `Role ${quoted(who.me)} cannot see the query, state, client address and start time of other roles' sessions (${hidden.length} of ${sessions.length} shown as ${HIDDEN_QUERY}): GRANT pg_read_all_stats TO ${quoted(who.me)}, or run status as a superuser${owner}.`;
}
