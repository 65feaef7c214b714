// What a failed statement tells: PostgreSQL's message and SQLSTATE code, and the statement, wherever a migrator put
// them (pg's error, knex's "<sql> - <message>", drizzle's "Failed query: …" and its cause, TypeORM's QueryFailedError).
import { errorMessage } from '../logger.js';

/** A failure as the CLI says it: the message (the server's when there is one), its code, the statement if known. */
export interface DescribedFailure {
  /** PostgreSQL's message (one line), else the error's first line. */
  message: string;
  /** The SQLSTATE code, when PostgreSQL answered with an error. */
  code?: string;
  /** The failing statement, all of its lines with whitespace collapsed, cut to {@link STATEMENT_MAX} characters. */
  statement?: string;
  /** The failing migration, when the migrator named it (a property `migration` on the error or a cause). */
  migration?: string;
}

/** How much of a statement a failure line shows. */
export const STATEMENT_MAX = 160;

/** `division by zero (SQLSTATE 22012) in: SELECT 1/0`. */
export function sayFailure({ message, code, statement }: DescribedFailure): string {
  return `${message}${code ? ` (SQLSTATE ${code})` : ''}${statement ? ` in: ${statement}` : ''}`;
}

/** The server's error, its statement and the migration, from the error or its causes (drizzle, TypeORM wrap it). */
export function describeFailure(err: unknown): DescribedFailure {
  const chain = causes(err);
  const database = chain.find(isDatabaseError);
  const statement = chain.map(statementOf).find((s) => s !== undefined);
  const migration = chain
    .map((e) => (e as { migration?: unknown }).migration)
    .find((m): m is string => typeof m === 'string');
  let message: string;
  let sql = statement;
  if (database) {
    message = errorMessage(database).trim();
    // knex prefixes the server's message with the statement: "<sql> - <message>" (the sql may span lines).
    const cut = message.lastIndexOf(' - ');
    if (cut > 0 && sql === undefined) {
      sql = message.slice(0, cut);
      message = message.slice(cut + 3);
    }
    message = message.split('\n')[0]!.trim();
  } else {
    message = errorMessage(err).trim();
    // drizzle's own "Failed query: <sql>\nparams: …" without a database error under it.
    const failed = /^Failed query: ([\s\S]*?)\nparams:/.exec(message);
    if (failed) sql ??= failed[1];
    message = message.split('\n')[0]!.trim();
  }
  return {
    message,
    ...(database !== undefined && { code: (database as { code: string }).code }),
    ...(sql !== undefined && sql.trim() !== '' && { statement: cutStatement(sql) }),
    ...(migration !== undefined && { migration }),
  };
}

/** The statement on one line, whitespace collapsed, cut with "…". */
export function cutStatement(sql: string): string {
  const line = sql.replace(/\s+/g, ' ').trim();
  return line.length > STATEMENT_MAX ? `${line.slice(0, STATEMENT_MAX - 1)}…` : line;
}

function causes(err: unknown): unknown[] {
  const chain: unknown[] = [];
  for (let e = err; e && typeof e === 'object' && chain.length < 6 && !chain.includes(e); ) {
    chain.push(e);
    const next = e as { cause?: unknown; driverError?: unknown; originalError?: unknown };
    e = next.driverError ?? next.cause ?? next.originalError;
  }
  return chain;
}

/** pg's DatabaseError (and whatever copies its fields): a SQLSTATE code and a severity. */
function isDatabaseError(e: unknown): boolean {
  const { code, severity } = e as { code?: unknown; severity?: unknown };
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) && typeof severity === 'string';
}

/** The statement a wrapper names: drizzle's and TypeORM's `query`, ours `statement`. */
function statementOf(e: unknown): string | undefined {
  const { query, statement } = e as { query?: unknown; statement?: unknown };
  if (typeof statement === 'string') return statement;
  return typeof query === 'string' ? query : undefined;
}
