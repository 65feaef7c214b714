// The one door adapters come through: their `lock` option (a key plus the core's options), the core's
// check-before-queue lock, sessions borrowed from a migrator's own connection, importing the migrator, and
// what their fleet factories share (a target's connection, entering a tenant's schema).
import { createRequire } from 'node:module';
import type pg from 'pg';
import { type SessionView, SKIPPED, type Unless } from '../src/acquire.js';
import {
  type ClientSource,
  type Query,
  type Session,
  type SessionSource,
  sessionSource,
  withSession,
} from '../src/driver/index.js';
import { connectionConfig } from '../src/driver/pg.js';
import { missingMigrator } from '../src/errors.js';
import type { FleetTarget } from '../src/fleet/target.js';
import type { FleetLockOptions, FleetMigrator } from '../src/fleet/types.js';
import { defaultKeyOf, describeKey, type LockKeyInput, parseKey } from '../src/key.js';
import { withMigrationLockUnless } from '../src/lock.js';
import { type Logger, resolveLogger } from '../src/logger.js';
import type { LockContext, MigrationLockOptions } from '../src/options.js';

export { isPostgresJs } from '../src/driver/postgres-js.js';
export type { PostgresJsReservedSql, PostgresJsSql } from '../src/driver/types.js';
export { unlockIfHeldSql } from '../src/protocol.js';
export type { ClientSource, FleetLockOptions, FleetMigrator, FleetTarget, Logger, Query, Session, SessionSource };
export { defaultKeyOf, type SessionView, SKIPPED, withSession };

/**
 * An adapter's `lock` option: the key, plus every option of `withMigrationLock`.
 * @example { key: lockKey('billing'), timeoutMs: 5 * 60_000, logger: pino() }
 */
export interface AdapterLockOptions extends MigrationLockOptions {
  /**
   * The advisory-lock key (per database). Replicas migrating the same tables must share it; apps with
   * migration tables of their own in one database may share it too (they take turns), or each use their own
   * (e.g. `lockKey('billing')`) to migrate side by side. The default depends on the migrator (see each adapter).
   */
  key?: LockKeyInput;
}

/** What an adapter locks with: the key (checked up front), the core's options, and a logger for its own notes. */
export interface AdapterLock {
  key: bigint;
  options: MigrationLockOptions;
  logger: Logger;
}

/**
 * The `lock` option of an adapter call, checked before anything is sent: a bad key is a RangeError or TypeError
 * here. `tool` picks the default key from the key table (node-pg-migrate's and kysely's own, else the default).
 */
export function adapterLock(
  lock: AdapterLockOptions | undefined,
  tool: string,
  defaultKey?: LockKeyInput,
): AdapterLock {
  if (lock !== undefined && (lock === null || typeof lock !== 'object')) {
    throw new TypeError(`pg-migration-lock/${tool}: expected \`lock\` to be an object of lock options`);
  }
  const { key: given, ...options } = lock ?? {};
  const key = parseKey(given ?? defaultKey ?? defaultKeyOf(tool).key);
  return { key, options: { keyLabel: describeKey(key), ...options }, logger: resolveLogger(options.logger) };
}

/**
 * Runs `migrate` under the lock on a session of `source`, unless `workLeft` finds nothing to do first (then no
 * lock is taken, and it resolves SKIPPED). `workLeft` is asked on the lock's own session before it queues, at
 * each release it hears while waiting, and every `recheckEveryMs` (for sessions that cannot hear releases).
 * The migrator re-checks under the lock, so a wrong "something pending" only costs a wait.
 */
export function lockedRun<C, T>(
  source: ClientSource | SessionSource,
  lock: AdapterLock,
  migrate: (ctx: LockContext<C>) => T | Promise<T>,
  workLeft: (session: SessionView<C>) => Promise<boolean>,
  recheckEveryMs?: number,
): Promise<T | typeof SKIPPED> {
  const unless: Unless<C> = { isDone: async (session) => !(await workLeft(session)), recheckEveryMs };
  return withMigrationLockUnless(source, lock.key, migrate, lock.options, unless);
}

/**
 * A session borrowed from a migrator's own pool connection: used as-is and left to the migrator, which is
 * told (by `discarded()`) when the session must not go back to its pool (the lock may still sit on it).
 */
export function borrowedPgSession(client: pg.ClientBase): { source: SessionSource; discarded: () => boolean } {
  const inner = sessionSource(client);
  let discard = false;
  return {
    discarded: () => discard,
    source: {
      ...inner,
      open: async () => {
        const session = await inner.open();
        return {
          ...session,
          release: async (destroy?: boolean) => {
            discard ||= destroy === true;
            await session.release(destroy);
          },
        };
      },
    },
  };
}

/** An SQL identifier, quoted. */
export const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;

/**
 * Imports a migrator package for an adapter, only when the adapter is used: importing the adapter loads
 * nothing. A missing package is an error that names what to install.
 */
export async function importPeer<T>(adapter: string, pkg: string, load: () => Promise<T>): Promise<T> {
  try {
    return await load();
  } catch (err) {
    const code = (err as { code?: string }).code ?? '';
    // Only the package itself missing, not something it imports: 'drizzle-orm/…' or 'postgres', quoted.
    if (!/MODULE_NOT_FOUND/.test(code) || !new RegExp(`'${pkg}(/[^']*)?'`).test(String(err))) throw err;
    throw missingMigrator(adapter, pkg, err);
  }
}

/**
 * `require(pkg)`, resolved from this package like `import(pkg)`: for a CommonJS migrator (TypeORM) an app
 * loaded with require, it is the module already in require's cache, where an ESM import would parse its
 * whole tree of re-exports again (tens of milliseconds).
 */
export function requirePeer<T>(pkg: string): T {
  return createRequire(import.meta.url)(pkg) as T;
}

/**
 * A fleet target's connection as a `pg` client config, as the library opens its own: named (host and pid, unless
 * `applicationName`), with TCP keepalive and a bounded connect.
 */
export function targetConfig(target: FleetTarget, applicationName?: string): pg.ClientConfig {
  return connectionConfig(target.connection, applicationName);
}

/**
 * The search path a fleet migrates a schema target with: the tenant's schema first (unqualified names are
 * created and found there), then `public` (shared tables and the extensions installed there stay reachable).
 */
export const tenantSearchPath = (schema: string): string[] => [schema, 'public'];

/**
 * For a schema target, on the locked session before the migrator starts: creates the schema when it does not
 * exist (under the target's lock, so two runs never race to create it), and with `setSearchPath` puts it first
 * in the session's search_path (for migrators that do not set it themselves).
 */
export async function enterSchema(query: Query, schema: string, setSearchPath: boolean): Promise<void> {
  // Checked first: CREATE SCHEMA IF NOT EXISTS needs the CREATE right on the database even when the schema exists.
  const [row] = await query<{ present: boolean }>(
    'SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = $1) AS present',
    [schema],
  );
  if (!row?.present) await query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(schema)}`);
  if (setSearchPath) {
    await query("SELECT pg_catalog.set_config('search_path', $1, false)", [
      tenantSearchPath(schema).map(quoteIdent).join(', '),
    ]);
  }
}

/** SQL on a node-postgres client, as the core's `Query`. */
export const pgQuery =
  (client: pg.ClientBase): Query =>
  async <R>(sql: string, params?: unknown[]) =>
    (await client.query(sql, params)).rows as R[];

/**
 * Runs `use` on a per-target resource made by `open` (a knex, a pool, a data source), and closes it after,
 * whatever happens: a fleet's migrators keep nothing open between targets.
 */
export async function usingTarget<R, T>(
  open: () => Promise<R> | R,
  close: (resource: R) => Promise<unknown>,
  use: (resource: R) => Promise<T>,
): Promise<T> {
  const resource = await open();
  try {
    return await use(resource);
  } finally {
    await close(resource).catch(() => {});
  }
}

/** Checks a fleet factory's config object up front. */
export function checkFleetConfig(tool: string, config: unknown, what: string): void {
  if (config === null || typeof config !== 'object') {
    throw new TypeError(`pg-migration-lock/${tool}: expected fleet(${what}) to get an object`);
  }
}
