// The one place that says what a driver's error means for the lock: a connection that broke, a server
// that is not there yet, or a failure to connect at all. pg, postgres.js and Bun SQL errors alike.

// SQLSTATE classes and codes of a connection that broke or a server that is not there (yet): 08 connection
// exception, 57P01–57P05 admin/crash shutdown, "cannot connect now", a dropped database and idle_session_timeout, 25P03
// idle_in_transaction_session_timeout, 53300 too many connections; Node's errno codes (ECONNRESET…);
// postgres.js' own codes for a connection that closed, was cut, or could not connect in time; Bun SQL's.
const LOST =
  /^(08...|57P0[1-5]|25P03|53300|E[A-Z]+|CONNECTION_(CLOSED|DESTROYED|ENDED)|CONNECT_TIMEOUT|ERR_PG_MIGRATION_LOCK_UNANSWERED|ERR_POSTGRES_(CONNECTION_(CLOSED|TIMEOUT|REFUSED)|IDLE_TIMEOUT|LIFETIME_TIMEOUT))$/;

/** The code our own "the session did not answer in time" error carries: it counts as a lost connection. */
export const UNANSWERED = 'ERR_PG_MIGRATION_LOCK_UNANSWERED';

/**
 * The error's code: its SQLSTATE for a server's error. Bun SQL puts that in `errno` (1.4; `sqlState` in its
 * types), under the code ERR_POSTGRES_SERVER_ERROR.
 */
export const codeOf = (err: unknown) => {
  const { code, errno, sqlState } = (err ?? {}) as { code?: unknown; errno?: unknown; sqlState?: unknown };
  if (code !== 'ERR_POSTGRES_SERVER_ERROR') return code;
  return typeof sqlState === 'string' ? sqlState : typeof errno === 'string' ? errno : code;
};
const messageOf = (err: unknown) => (err instanceof Error ? err.message : String(err));

/**
 * The session behind this error is gone (or never came): retrying on a new one may work. Any other SQLSTATE
 * (a wrong password, a missing database, a failed statement) will not go away by retrying.
 */
export function isConnectionLoss(err: unknown): boolean {
  const code = codeOf(err);
  if (typeof code === 'string') return LOST.test(code);
  // A FATAL without a code, or pg's own errors for a socket that closed or a connect that timed out.
  if ((err as { severity?: unknown } | null)?.severity === 'FATAL') return true;
  return /Connection terminated|not queryable|timeout expired/.test(messageOf(err));
}

/** A server that is starting up, shutting down or full: worth retrying even before we ever connected. */
export function isServerStartingUp(err: unknown): boolean {
  return /^(57P03|53300)$/.test(String(codeOf(err) ?? ''));
}

// Errors raised while opening a connection: network errno codes, SQLSTATE classes 08 (connection
// exception), 28 (authentication), 3D000 (no such database), 57P03 (server starting up).
// (and Bun SQL's own codes for a refused, timed-out or failed connect or authentication).
const CONNECT =
  /^(ECONNREFUSED|ECONNRESET|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|08...|28...|3D000|57P03|ERR_POSTGRES_(CONNECTION_(REFUSED|TIMEOUT)|TLS_.*|AUTHENTICATION_.*|UNSUPPORTED_AUTHENTICATION_METHOD))$/;

/** The error says we could not connect (unreachable, refused, authentication, no such database, TLS). */
export function isConnectFailure(err: unknown): boolean {
  const code = codeOf(err);
  if (typeof code === 'string' && CONNECT.test(code)) return true;
  return /connection timeout|Connection terminated unexpectedly|self[- ]signed certificate|does not support SSL|SASL/i.test(
    messageOf(err),
  );
}

/** The session behind this error cannot be used again: a FATAL (or PANIC) from the server, or a lost connection. */
export function endsSession(err: unknown): boolean {
  const severity = (err as { severity?: unknown } | null)?.severity;
  return severity === 'FATAL' || severity === 'PANIC' || isConnectionLoss(err);
}
