// The one door adapters come through: their `lock` option (KeyedLockOptions, checked once), the core's
// check-before-queue lock, sessions borrowed from a migrator's own connection, importing the migrator, and
// what their fleets share (a target's connection or pool, entering a tenant's schema, the migrator's frame).
import { createRequire } from 'node:module';
import type pg from 'pg';
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
import type { FleetAppliedRule, FleetLockOptions, FleetMigrator } from '../src/fleet/types.js';
import { defaultKeyOf, describeKey, type LockKeyInput, parseKey } from '../src/key.js';
import type { KeyedLockOptions } from '../src/keyed.js';
import { type SessionView, SKIPPED, type Unless } from '../src/lock/holding.js';
import { withMigrationLockUnless } from '../src/lock/lock.js';
import { LOCK_OPTION_NAMES, type LockContext, type MigrationLockOptions, resolveOptions } from '../src/lock/options.js';
import { type Logger, resolveLogger } from '../src/logger.js';
import { checkOptionNames } from '../src/option-names.js';
import { MIGRATOR, traceMigrate } from './kit/telemetry.js';

export { isPostgresJs } from '../src/driver/postgres-js.js';
export type { PostgresJsReservedSql, PostgresJsSql } from '../src/driver/types.js';
export { unlockIfHeldSql } from '../src/sql/lock.js';

import { enterSchema as enterSchemaSql } from '../src/sql/schema.js';

export type {
  ClientSource,
  FleetAppliedRule,
  FleetLockOptions,
  FleetMigrator,
  FleetTarget,
  KeyedLockOptions,
  Logger,
  Query,
  Session,
  SessionSource,
};
export { defaultKeyOf, type SessionView, SKIPPED, withSession };

/** What an adapter locks with: the key (checked up front), the core's options, and a logger for its own notes. */
export interface CheckedLock {
  key: bigint;
  /** The migrator: the adapter's name, for telemetry. */
  tool?: string;
  options: MigrationLockOptions;
  logger: Logger;
}

/**
 * The `lock` option of an adapter call, checked before anything is sent: a bad key is a RangeError or TypeError
 * here, and so is a bad option (the core's own checks). `tool` picks the default key from the key table
 * (node-pg-migrate's and kysely's own, else the default). A label given with the key (the CLI's, which parsed
 * and named it) is kept: the key is named once.
 */
export function checkLock(lock: KeyedLockOptions | undefined, tool: string, defaultKey?: LockKeyInput): CheckedLock {
  if (lock !== undefined && (lock === null || typeof lock !== 'object')) {
    throw new TypeError(`pg-migration-lock/${tool}: expected \`lock\` to be an object of lock options`);
  }
  // Errors in the options come now, before any connection, not when the lock is first tried.
  if (lock) checkOptionNames(lock, [...LOCK_OPTION_NAMES, 'key'], 'lock option');
  const { key: given, ...options } = lock ?? {};
  resolveOptions(options);
  const key = parseKey(given ?? defaultKey ?? defaultKeyOf(tool).key);
  return {
    key,
    tool,
    options: { ...options, keyLabel: options.keyLabel ?? describeKey(key) },
    logger: resolveLogger(options.logger),
  };
}

/**
 * Runs `migrate` under the lock on a session of `source`, unless `workLeft` finds nothing to do first (then no
 * lock is taken, and it resolves SKIPPED). `workLeft` is asked on the lock's own session before it queues, at
 * each release it hears while waiting, and every `recheckEveryMs` (for sessions that cannot hear releases).
 * The migrator re-checks under the lock, so a wrong "something pending" only costs a wait.
 */
export function lockedRun<C, T>(
  source: ClientSource | SessionSource,
  lock: CheckedLock,
  migrate: (ctx: LockContext<C>) => T | Promise<T>,
  workLeft: (session: SessionView<C>) => Promise<boolean>,
  recheckEveryMs?: number,
): Promise<T | typeof SKIPPED> {
  const unless: Unless<C> = { isDone: async (session) => !(await workLeft(session)), recheckEveryMs };
  // The migrator named for the lock's own spans and metrics (a symbol-keyed option: see MIGRATOR).
  const options = { ...lock.options, [MIGRATOR]: lock.tool };
  return withMigrationLockUnless(source, lock.key, traceMigrate(lock.key, lock.tool, migrate), options, unless);
}

export { rejectingLockTimeout, resultOfFailure } from './kit/results.js';

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

export { quoteIdent } from '../src/sql/schema.js';

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
export const enterSchema = (query: Query, schema: string, setSearchPath: boolean): Promise<void> =>
  enterSchemaSql(query, schema, setSearchPath ? tenantSearchPath(schema) : undefined);

export { pgQuery } from '../src/driver/pg.js';

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

/**
 * What runs on a target's locked session before its migrator: for a schema target, entering the schema (see
 * {@link enterSchema}); nothing for a database target.
 */
export function schemaEntry(
  target: FleetTarget,
  setSearchPath: boolean,
): ((query: Query) => Promise<void>) | undefined {
  const { schema } = target;
  return schema === undefined ? undefined : (query) => enterSchema(query, schema, setSearchPath);
}

/** A `pg.Pool` of one connection on a fleet target, for migrators that take a pool (drizzle, kysely). */
export async function targetPool(target: FleetTarget, applicationName?: string): Promise<pg.Pool> {
  const { default: pgModule } = await import('pg');
  const pool = new pgModule.Pool({ ...targetConfig(target, applicationName), max: 1 });
  // An idle connection that dies must not crash the process: the lock notices a lost session itself.
  pool.on('error', () => {});
  return pool;
}

/** An adapter's part of a fleet migrator: how it opens a target, checks it and migrates it. */
export interface FleetParts<R> {
  name: string;
  /** The key of a database target, when the migrator has one of its own (node-pg-migrate's, kysely's). */
  key?: bigint;
  /** Makes the per-target resource (a knex, a pool, a data source); `pool` is the run's shared one, if any. */
  open(target: FleetTarget, pool: pg.Pool | undefined, lock: FleetLockOptions | undefined): Promise<R>;
  /** Closes what `open` made (never the run's shared `pool`). */
  close(resource: R, pool: pg.Pool | undefined): Promise<unknown>;
  pending(resource: R, target: FleetTarget): Promise<string[]>;
  /** Migrates under `lock` (checked), resolving to the names applied. */
  run(resource: R, target: FleetTarget, lock: CheckedLock, pool: pg.Pool | undefined): Promise<string[]>;
  /** What its own pending check compares, for batched checks of schema targets (see `FleetMigrator.appliedRule`). */
  appliedRule?(target: FleetTarget): Promise<FleetAppliedRule | undefined>;
}

/** A fleet migrator from an adapter's parts: each call opens its target, and closes it after whatever happens. */
export function fleetMigrator<R>(parts: FleetParts<R>): FleetMigrator {
  const { name, key, appliedRule } = parts;
  return {
    name,
    ...(key !== undefined && { key }),
    ...(appliedRule && { appliedRule }),
    pending: (target) =>
      usingTarget(
        () => parts.open(target, undefined, undefined),
        (resource) => parts.close(resource, undefined),
        (resource) => parts.pending(resource, target),
      ),
    run: (target, lock, pool) => {
      const checked = checkLock(lock, name, key);
      return usingTarget(
        () => parts.open(target, pool, lock),
        (resource) => parts.close(resource, pool),
        (resource) => parts.run(resource, target, checked, pool),
      );
    },
  };
}

/**
 * The rule of migrators that apply each listed migration once and record its name: a schema is up to date when
 * every name of `names` is in `table`'s `column` (rows naming no listed migration are let be, as TypeORM and
 * umzug do). `strict`: such rows make the migrator fail instead (knex's "migration directory is corrupt"), so
 * they leave the schema to it.
 */
export function namesRule(names: readonly string[], table: string, column = 'name', strict = false): FleetAppliedRule {
  const listed = new Set(names);
  return {
    reads: [{ table, column, orderBy: [] }],
    upToDate: ([applied]) => {
      const done = new Set(applied);
      return names.every((name) => done.has(name)) && (!strict || applied!.every((name) => listed.has(name!)));
    },
  };
}

/**
 * Names the failing migration (and statement, when only the migrator's log had it) on a migrator's error
 * (properties `migration` and `statement`, not enumerable), so that a fleet's report can say what failed on a target. Errors that cannot take it are returned as they are.
 */
export function namingMigration(err: unknown, migration: string | undefined, statement?: string): unknown {
  if (!err || typeof err !== 'object') return err;
  for (const [name, value] of [
    ['migration', migration],
    ['statement', statement],
  ] as const) {
    if (value === undefined || name in err) continue;
    try {
      Object.defineProperty(err, name, { value, enumerable: false, configurable: true });
    } catch {
      // a frozen error: left as it is
    }
  }
  return err;
}
