// Which driver a client source belongs to: checks its shape without touching the network (bad input fails
// before any query, naming what was passed), then hands it to that driver's session source.
import type pg from 'pg';
import { bunSqlSource, checkBunSql, isBunSql } from './bun-sql.js';
import { isConninfo, parseConninfo } from './conninfo.js';
import { isNeonHttp, NEON_HTTP_REFUSED } from './neon.js';
import { isPgClient, isPgPool, isUnconnected, pgSource } from './pg.js';
import { isPostgresJs, postgresJsSource } from './postgres-js.js';
import type { ClientSource, Prepared, Session, SessionOptions, SessionSource } from './types.js';

export type {
  BunSql,
  BunSqlReserved,
  ClientSource,
  PgCompatibleClient,
  PgCompatiblePool,
  PostgresJsReservedSql,
  PostgresJsSql,
  Prepared,
  Query,
  ReservedOf,
  Session,
  SessionOptions,
  SessionSource,
} from './types.js';

const EXPECTED =
  'a pg.Pool, a connected pg.Client, a connection string (a URL or libpq keyword/value), a pg client config, a postgres.js sql or a Bun SQL';
const EXAMPLE_URL = 'postgres://user:password@host:5432/database';

// What a plain pg client config may hold (pg's ClientConfig and ConnectionParameters): anything else in a
// plain object means it is not one, and pg would quietly connect with the PG* environment instead.
const CONFIG_KEYS = new Set([
  'user',
  'database',
  'password',
  'port',
  'host',
  'connectionString',
  'keepAlive',
  'stream',
  'statement_timeout',
  'parseInputDatesAsUTC',
  'ssl',
  'query_timeout',
  'keepAliveInitialDelayMillis',
  'idle_in_transaction_session_timeout',
  'application_name',
  'fallback_application_name',
  'connectionTimeoutMillis',
  'types',
  'options',
  'lock_timeout',
  'client_encoding',
  'binary',
  'enableChannelBinding',
  'Promise',
  'replication',
  'lookup',
  'Client',
  'rows',
  // pg.Pool's own options: one config object often serves a pool and this library.
  'max',
  'min',
  'idleTimeoutMillis',
  'allowExitOnIdle',
  'maxUses',
  'maxLifetimeSeconds',
  'log',
]);
// Any of these says which server to reach; without one, pg would fall back to the PG* environment.
const TARGET_KEYS = ['connectionString', 'host', 'database', 'port', 'user', 'stream'];

/** Checks the shape of `client` without touching the network, so bad input fails before any query. */
export function checkSource(source: unknown): asserts source is ClientSource {
  if (typeof source === 'string') {
    if (source.trim() === '') throw new TypeError('Expected a connection string, got an empty string');
    checkConnectionString(source);
    return;
  }
  // Bun's SQL looks like a postgres.js sql, and Neon's HTTP function too: both are told apart first.
  if (isBunSql(source)) return checkBunSql(source);
  if (isNeonHttp(source)) throw new TypeError(NEON_HTTP_REFUSED);
  if (isPostgresJs(source)) return;
  if (source === null || typeof source !== 'object' || Array.isArray(source)) {
    throw new TypeError(`Expected \`client\` to be ${EXPECTED}, got ${describe(source)}`);
  }
  if (isPgPool(source)) return;
  if (isPgClient(source)) {
    // A pg.Client that was never connected would queue our first query forever.
    if (isUnconnected(source)) {
      throw new TypeError('Expected a connected pg.Client: call `await client.connect()` first, or pass a pg.Pool');
    }
    return;
  }
  const known = knownObject(source);
  if (known) throw new TypeError(`Expected \`client\` to be ${EXPECTED}, got ${known}`);
  const proto = Object.getPrototypeOf(source);
  if (proto !== Object.prototype && proto !== null) {
    throw new TypeError(`Expected \`client\` to be ${EXPECTED}, got ${describe(source)}`);
  }
  const unknown = Object.keys(source).filter((key) => !CONFIG_KEYS.has(key));
  if (unknown.length > 0) {
    throw new TypeError(
      `Expected \`client\` to be ${EXPECTED}, got an object with ${unknown
        .slice(0, 3)
        .map((k) => `\`${k}\``)
        .join(', ')}${unknown.length > 3 ? '…' : ''}, which a pg client config does not have`,
    );
  }
  if (!TARGET_KEYS.some((key) => (source as Record<string, unknown>)[key] !== undefined)) {
    throw new TypeError(
      `Expected \`client\` to be ${EXPECTED}, got a config that names no server (no connectionString, host or database): pass a URL like ${EXAMPLE_URL}`,
    );
  }
}

/** Objects people pass by mistake, named with what to pass instead. */
function knownObject(source: object): string | undefined {
  const value = source as Record<string, unknown>;
  if (typeof value.selectFrom === 'function' && typeof value.connection === 'function') {
    return 'a Kysely instance: pass the pg.Pool of its dialect (or a URL), or use pg-migration-lock/kysely';
  }
  if (value.$client !== undefined && typeof value.execute === 'function') {
    return 'a drizzle database: pass its client (db.$client) or a URL, or use pg-migration-lock/drizzle';
  }
  if (typeof value.createQueryRunner === 'function' && typeof value.initialize === 'function') {
    return 'a TypeORM DataSource: use pg-migration-lock/typeorm, or pass a URL';
  }
  if (typeof value.query === 'function') return `${describe(source)} that is neither a pg.Pool nor a pg.Client`;
  return undefined;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'function') return `a function${value.name ? ` (${value.name})` : ''}`;
  if (typeof value !== 'object') return typeof value;
  const name = (Object.getPrototypeOf(value) as { constructor?: { name?: string } } | null)?.constructor?.name;
  return name && name !== 'Object' ? `an instance of ${name}` : 'an object';
}

/**
 * pg reads a connection string as a URL (or a Unix socket path), and reads anything else as a host
 * name relative to "base": say what is wrong before that. libpq's keyword/value strings are read too (they are
 * turned into a URL where a connection is made, see conninfo.ts). The string is never echoed: it may hold a password.
 */
function checkConnectionString(text: string): void {
  if (text.startsWith('/')) return;
  if (isConninfo(text)) {
    parseConninfo(text);
    return;
  }
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(text)?.[1]?.toLowerCase();
  if (scheme !== 'postgres' && scheme !== 'postgresql' && scheme !== 'socket') {
    throw new TypeError(
      `Expected a PostgreSQL connection string like ${EXAMPLE_URL} (or host=… dbname=… user=…), got ${scheme ? `a ${scheme}: URL` : 'a string that is not a URL'}`,
    );
  }
  try {
    // As pg does: a URL with no host (`postgres://user@/db?host=/socket/dir`) is valid.
    new URL(text.replace('@/', '@localhost/'));
  } catch {
    throw new TypeError(
      `The connection string is not a valid URL (expected ${EXAMPLE_URL}; a port must be 1-65535, and a host in [brackets] must be an IPv6 address)`,
    );
  }
}

/** Where sessions of `source` come from. Validates its shape first, without touching the network. */
export function sessionSource(source: unknown, options: SessionOptions = {}): SessionSource {
  checkSource(source);
  if (isBunSql(source)) return bunSqlSource(source);
  return isPostgresJs(source) ? postgresJsSource(source) : pgSource(source as pg.Pool | pg.ClientConfig, options);
}

/** Runs `fn` on one session from any source, and gives the session back after. */
export async function withSession<T>(
  source: ClientSource | SessionSource,
  fn: (session: Session) => Promise<T>,
  options?: SessionOptions,
): Promise<T> {
  const session = await (isSessionSource(source) ? source : sessionSource(source, options)).open();
  try {
    const result = await fn(session);
    await session.release();
    return result;
  } catch (err) {
    // The session may be broken; a pooled one is discarded rather than returned.
    await session.release(true);
    throw err;
  }
}

export function isSessionSource(value: unknown): value is SessionSource {
  return typeof (value as SessionSource | null)?.open === 'function' && 'reopenable' in (value as object);
}

/**
 * Runs `statement` on `session`: prepared where its driver can, else as one plain statement with its values
 * written in (a driver may treat a statement with parameters differently: postgres.js 3 hooks a connection's close
 * only through a statement without them).
 */
export const runPrepared = <R = Record<string, unknown>>(session: Session, statement: Prepared): Promise<R[]> =>
  session.prepared ? session.prepared<R>(statement) : session.query<R>(inlined(statement));

/**
 * A prepared statement's text with its values written in as literals. Every value is quoted: a bare
 * `-2147483648::int` would read as minus an out-of-range int. E'' strings mean the same whatever
 * standard_conforming_strings says.
 */
function inlined({ text, values }: Prepared): string {
  return text.replace(/\$(\d+)/g, (_, n: string) => {
    const value = values[Number(n) - 1];
    if (value === null || value === undefined) return 'NULL';
    return `E'${String(value).replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
  });
}
