import { readFileSync } from 'node:fs';
import type { Logger as DrizzleLogger } from 'drizzle-orm';
import type { migrate as drizzleMigrate } from 'drizzle-orm/node-postgres/migrator';
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core';
import type pg from 'pg';
import { drizzleAppliedRule } from './drizzle/applied.js';
import { importDrizzle, onReserved, type ReadMigrationFiles } from './drizzle/drivers.js';
import { type BunSql, isBunSql } from './kit/drivers.js';
import {
  type CheckedLock,
  type ClientSource,
  checkFleetConfig,
  checkLock,
  type FleetMigrator,
  type FleetTarget,
  fleetMigrator,
  isPostgresJs,
  type KeyedLockOptions,
  lockedRun,
  namingMigration,
  type PostgresJsReservedSql,
  type PostgresJsSql,
  pgQuery,
  type Query,
  quoteIdent,
  schemaEntry,
  targetPool,
  withSession,
} from './kit.js';

/**
 * The `lock` option of {@link migrate}: the key, plus every option of `withMigrationLock`.
 * `key` defaults to DEFAULT_LOCK_KEY (`lockKey('pg-migration-lock')`, also the CLI's default).
 * @example { key: lockKey('billing'), timeoutMs: 5 * 60_000, logger: pino() }
 */
export interface DrizzleLockOptions extends KeyedLockOptions {}

/** drizzle's own migrate config (`migrationsFolder`, `migrationsTable`, `migrationsSchema`), plus `lock`. */
export type DrizzleMigrateConfig = Parameters<typeof drizzleMigrate>[1] & {
  /** How to take the lock, see {@link DrizzleLockOptions}. @default {} */
  lock?: DrizzleLockOptions;
};

/**
 * A drizzle `postgres-js` database (`drizzle(sql)` from 'drizzle-orm/postgres-js'), typed by its shape so
 * that users of node-postgres need not have `postgres` installed.
 */
export type DrizzlePostgresJsDatabase = PgDatabase<PgQueryResultHKT, Record<string, unknown>> & {
  $client: PostgresJsSql;
};

/** A drizzle `bun-sql` database (`drizzle({ client: sql })` from 'drizzle-orm/bun-sql', under Bun), typed by its shape. */
export type DrizzleBunSqlDatabase = PgDatabase<PgQueryResultHKT, Record<string, unknown>> & { $client: BunSql };

/**
 * drizzle's `migrate(db, config)` (node-postgres or postgres-js) under a PostgreSQL advisory lock: replicas
 * that start at once apply each migration once, one after the other. The migration runs through a drizzle instance over
 * the very session that holds the lock (drizzle's own `migrate` on a Pool would check out other
 * connections), so lock and migration share fate.
 *
 * @param db a drizzle `node-postgres` database, over a `pg.Pool` or a connected `pg.Client`, or a drizzle
 *   `postgres-js` database over a postgres.js `sql` (one connection is reserved for the migration), or under Bun a
 *   drizzle `bun-sql` database over Bun's `SQL` (likewise).
 * @param config drizzle's migrate config plus `lock`.
 * @param lock the lock options, if you prefer them out of `config`; they win over `config.lock`.
 *
 * @example
 * // before: import { migrate } from 'drizzle-orm/node-postgres/migrator';
 * import { migrate } from 'pg-migration-lock/drizzle';
 * await migrate(db, { migrationsFolder: './drizzle' });
 */
export async function migrate(
  db: Parameters<typeof drizzleMigrate>[0] | DrizzlePostgresJsDatabase | DrizzleBunSqlDatabase,
  config: DrizzleMigrateConfig,
  lock?: DrizzleLockOptions,
): Promise<void> {
  const target = drizzleTarget(db);
  if (config === null || typeof config !== 'object')
    throw new TypeError('pg-migration-lock/drizzle: expected a migrate config ({ migrationsFolder })');
  const { lock: lockInConfig, ...migrateConfig } = config;
  await migrateLocked(target, migrateConfig, checkLock(lock ?? lockInConfig, 'drizzle'));
}

/**
 * `migrate` once its arguments are checked. For a fleet (`before` given): `before` runs on the locked session,
 * and it resolves to the tags of the migrations drizzle applied (what was pending under the lock).
 */
async function migrateLocked(
  target: DrizzleTarget,
  migrateConfig: Parameters<typeof drizzleMigrate>[1],
  locking: CheckedLock,
  before?: (query: Query) => Promise<void>,
): Promise<string[]> {
  const { migrateOn, readMigrationFiles } = await target.load();
  // Nothing to apply: drizzle's no-op resolves undefined too, and this one queues for no lock.
  const applied = await lockedRun(
    target.source,
    locking,
    async ({ client }: { client: unknown }) => {
      if (!before) return migrateOn(client, migrateConfig);
      const query = pgQuery(client as pg.ClientBase);
      await before(query);
      const tags = await toApply(query, migrateConfig, readMigrationFiles);
      await migrateOn(client, migrateConfig);
      return tags;
    },
    async ({ query }) => (await toApply(query, migrateConfig, readMigrationFiles)).length > 0,
  );
  return Array.isArray(applied) ? applied : [];
}

/**
 * The migrations drizzle's `migrate(db, config)` would apply now, by journal tag, in order. drizzle's rule:
 * it applies every migration of the journal whose `when` (folderMillis) is later than the `created_at` of
 * the last row of its table (`order by created_at desc limit 1`), all of them when the table is empty or
 * missing. Read with drizzle's own `readMigrationFiles` (same errors for a missing journal or file). Unlike
 * `migrate`, it creates nothing (no schema, no table) and takes no lock.
 *
 * @param db a drizzle `node-postgres` or `postgres-js` database, as for {@link migrate}.
 * @param config drizzle's migrate config (`migrationsFolder`, `migrationsTable`, `migrationsSchema`).
 * @returns the tags of the pending migrations (`[]` when up to date).
 *
 * @example
 * import { pending } from 'pg-migration-lock/drizzle';
 * const tags = await pending(db, { migrationsFolder: './drizzle' }); // e.g. ['0007_add_orders']
 */
export async function pending(
  db: Parameters<typeof drizzleMigrate>[0] | DrizzlePostgresJsDatabase | DrizzleBunSqlDatabase,
  config: DrizzleMigrateConfig,
): Promise<string[]> {
  const target = drizzleTarget(db);
  if (config === null || typeof config !== 'object')
    throw new TypeError('pg-migration-lock/drizzle: expected a migrate config ({ migrationsFolder })');
  const { readMigrationFiles } = await target.load();
  return withSession(target.source, (session) => toApply(session.query, config, readMigrationFiles));
}

/** pg-core's dialect.migrate, read-only: the same last-row query, the same comparison. */
async function toApply(
  query: Query,
  config: DrizzleMigrateConfig,
  readMigrationFiles: ReadMigrationFiles,
): Promise<string[]> {
  const migrations = readMigrationFiles(config);
  // readMigrationFiles keeps the journal's order but drops the tags: read them from the same journal.
  const { entries } = JSON.parse(readFileSync(`${config.migrationsFolder}/meta/_journal.json`, 'utf8')) as {
    entries: { tag: string }[];
  };
  const table = `${quoteIdent(config.migrationsSchema ?? 'drizzle')}.${quoteIdent(config.migrationsTable ?? '__drizzle_migrations')}`;
  // One-word column names: a postgres.js column transform (postgres.camel) leaves them as they are.
  const [exists] = await query<{ present: boolean }>('SELECT to_regclass($1) IS NOT NULL AS present', [table]);
  let last: { createdat: string | null } | undefined;
  if (exists!.present) {
    [last] = await query<{ createdat: string | null }>(
      `select created_at::text as createdat from ${table} order by created_at desc limit 1`,
    );
  }
  return migrations.flatMap((migration, i) =>
    !last || Number(last.createdat) < migration.folderMillis ? [entries[i]!.tag] : [],
  );
}

/**
 * Where the lock session of `db` comes from, and (once loaded) how to run drizzle's own migrator of that
 * driver on it. Checks `db` without loading anything.
 */
function drizzleTarget(db: unknown) {
  const client = (db as { $client?: unknown } | undefined)?.$client;
  // Keep the query logger of the caller's db, if it has one (drizzle({ logger: true })).
  const logger = (db as { session?: { options?: { logger?: DrizzleLogger } } } | undefined)?.session?.options?.logger;
  return clientTarget(client, logger);
}
type DrizzleTarget = ReturnType<typeof drizzleTarget>;

/** {@link drizzleTarget} from the db's client (a pg Pool or Client, a postgres.js sql) and its query logger. */
function clientTarget(client: unknown, logger: DrizzleLogger | undefined) {
  const withLogger = logger ? { logger } : {};
  type MigrateOn = (session: unknown, config: Parameters<typeof drizzleMigrate>[1]) => Promise<void>;
  type Loaded = { migrateOn: MigrateOn; readMigrationFiles: ReadMigrationFiles };
  if (isBunSql(client)) {
    // drizzle's bun-sql migrator runs on the reserved connection as it is (Bun's reserved SQL has `begin`).
    return {
      source: client as ClientSource,
      load: async (): Promise<Loaded> => {
        const { drizzle, run, readMigrationFiles } = await importDrizzle('bun-sql');
        const migrateOn: MigrateOn = (session, config) => run(drizzle({ client: session, ...withLogger }), config);
        return { migrateOn, readMigrationFiles };
      },
    };
  }
  if (isPostgresJs(client) && typeof (client as Partial<PostgresJsSql>).reserve === 'function') {
    const sql = client as PostgresJsSql & { options: object };
    return {
      source: sql as ClientSource,
      load: async (): Promise<Loaded> => {
        const { drizzle, run, readMigrationFiles } = await importDrizzle('postgres-js');
        const migrateOn: MigrateOn = (session, config) =>
          run(
            drizzle({ client: onReserved(session as PostgresJsReservedSql, sql.options) as never, ...withLogger }),
            config,
          );
        return { migrateOn, readMigrationFiles };
      },
    };
  }
  if (typeof (client as pg.ClientBase | undefined)?.query === 'function' && !isPostgresJs(client)) {
    return {
      source: client as ClientSource,
      load: async (): Promise<Loaded> => {
        const { drizzle, run, readMigrationFiles } = await importDrizzle('node-postgres');
        const migrateOn: MigrateOn = (session, config) =>
          run(drizzle({ client: session as pg.PoolClient, ...withLogger }), config);
        return { migrateOn, readMigrationFiles };
      },
    };
  }
  throw new TypeError(
    "pg-migration-lock/drizzle: expected a drizzle node-postgres database (drizzle(pool) or drizzle({ client }) from 'drizzle-orm/node-postgres') or a drizzle postgres-js database (drizzle(sql) from 'drizzle-orm/postgres-js'), or under Bun a drizzle bun-sql database (drizzle({ client: sql }) from 'drizzle-orm/bun-sql')",
  );
}

/** What {@link fleet} takes: drizzle's migrate config (`migrationsFolder`, `migrationsTable`, `migrationsSchema`). */
export type DrizzleFleetConfig = Parameters<typeof drizzleMigrate>[1];

/**
 * A fleet migrator for `migrateEach`: drizzle's node-postgres `migrate(db, config)` on each target, under the
 * target's lock, through a `pg.Pool` of one connection made for the target (ended after), or for a schema target
 * the pool the run shares among the schemas of that database. Resolves to the journal
 * tags it applied.
 *
 * On a schema target (`{ url, schema }`): `migrationsSchema` is the schema, so `__drizzle_migrations` lives there;
 * the schema is created, under the lock, if it does not exist; and the session's `search_path` is the schema,
 * then `public`, so unqualified statements land in the schema. drizzle-kit writes schema-qualified names for
 * some statements (`REFERENCES "public"."users"`, tables of a `pgSchema`): those land where they say, so keep
 * tenant migrations unqualified.
 *
 * @param config drizzle's migrate config.
 * @example
 * import { migrateEach } from 'pg-migration-lock';
 * import { fleet } from 'pg-migration-lock/drizzle';
 * await migrateEach(['postgres://db1/acme', 'postgres://db1/globex'], fleet({ migrationsFolder: './drizzle' }));
 */
export function fleet(config: DrizzleFleetConfig): FleetMigrator {
  checkFleetConfig('drizzle', config, '{ migrationsFolder }');
  if (typeof config.migrationsFolder !== 'string') {
    throw new TypeError('pg-migration-lock/drizzle: expected fleet({ migrationsFolder }) to name the folder');
  }
  const on = (target: FleetTarget) =>
    target.schema === undefined ? config : { ...config, migrationsSchema: target.schema };
  return fleetMigrator<pg.Pool>({
    name: 'drizzle',
    open: async (target, shared, lock) => shared ?? targetPool(target, lock?.applicationName),
    // The run's shared pool is the run's to end.
    close: async (pool, shared) => pool !== shared && (await pool.end()),
    pending: async (pool, target) => {
      const { readMigrationFiles } = await clientTarget(pool, undefined).load();
      return withSession(pool, (session) => toApply(session.query, on(target), readMigrationFiles));
    },
    appliedRule: async () => {
      const { readMigrationFiles } = await importDrizzle('node-postgres');
      return drizzleAppliedRule(config, readMigrationFiles);
    },
    run: async (pool, target, lock) => {
      // Always a `before` (a no-op on a database target): with one, migrateLocked resolves to the tags applied.
      const before = schemaEntry(target, true) ?? (async () => {});
      try {
        return await migrateLocked(clientTarget(pool, undefined), on(target), lock, before);
      } catch (err) {
        throw namingMigration(err, migrationOf(config.migrationsFolder, (err as { query?: unknown } | null)?.query));
      }
    },
  });
}

/** The tag of the migration in `folder` one of whose statements is `query` (drizzle names the query, not the file). */
function migrationOf(folder: string, query: unknown): string | undefined {
  if (typeof query !== 'string') return undefined;
  try {
    const journal = JSON.parse(readFileSync(`${folder}/meta/_journal.json`, 'utf8')) as { entries: { tag: string }[] };
    return journal.entries.find(({ tag }) =>
      readFileSync(`${folder}/${tag}.sql`, 'utf8')
        .split('--> statement-breakpoint')
        .some((statement) => statement.trim() === query.trim()),
    )?.tag;
  } catch {
    return undefined;
  }
}
