import type { Logger as DrizzleLogger } from 'drizzle-orm';
import type { migrate as drizzleMigrate } from 'drizzle-orm/node-postgres/migrator';
import type pg from 'pg';
import { missingMigrator } from '../src/errors.js';
import { DEFAULT_LOCK_KEY, type LockKeyInput, type MigrationLockOptions, withMigrationLock } from '../src/index.js';

/**
 * The `lock` option of {@link migrate}: the key, plus every option of `withMigrationLock`.
 * @example { key: lockKey('billing'), timeoutMs: 5 * 60_000, logger: pino() }
 */
export interface DrizzleLockOptions extends MigrationLockOptions {
  /**
   * The advisory-lock key (per database). Replicas migrating the same tables must share it. Apps with
   * migration tables of their own in one database may share it too (they take turns); give each its own
   * (e.g. `lockKey('billing')`) to let them migrate side by side.
   * @default DEFAULT_LOCK_KEY (`lockKey('pg-migration-lock')`, also the CLI's default)
   */
  key?: LockKeyInput;
}

/** drizzle's own migrate config (`migrationsFolder`, `migrationsTable`, `migrationsSchema`), plus `lock`. */
export type DrizzleMigrateConfig = Parameters<typeof drizzleMigrate>[1] & {
  /** How to take the lock, see {@link DrizzleLockOptions}. @default {} */
  lock?: DrizzleLockOptions;
};

/**
 * drizzle's `migrate(db, config)` (node-postgres) under a PostgreSQL advisory lock: replicas that start at
 * once apply each migration once, one after the other. The migration runs through a drizzle instance over
 * the very session that holds the lock (drizzle's own `migrate` on a Pool would check out other
 * connections), so lock and migration share fate.
 *
 * @param db a drizzle `node-postgres` database, over a `pg.Pool` or a connected `pg.Client`.
 * @param config drizzle's migrate config plus `lock`.
 * @param lock the lock options, if you prefer them out of `config`; they win over `config.lock`.
 *
 * @example
 * // before: import { migrate } from 'drizzle-orm/node-postgres/migrator';
 * import { migrate } from 'pg-migration-lock/drizzle';
 * await migrate(db, { migrationsFolder: './drizzle' });
 */
export async function migrate(
  db: Parameters<typeof drizzleMigrate>[0],
  config: DrizzleMigrateConfig,
  lock?: DrizzleLockOptions,
): Promise<void> {
  const client = (db as { $client?: pg.Pool | pg.ClientBase } | undefined)?.$client;
  if (typeof client?.query !== 'function') {
    throw new TypeError(
      "pg-migration-lock/drizzle: expected a drizzle node-postgres database (drizzle(pool) or drizzle({ client }) from 'drizzle-orm/node-postgres')",
    );
  }
  if (config === null || typeof config !== 'object')
    throw new TypeError('pg-migration-lock/drizzle: expected a migrate config ({ migrationsFolder })');
  const { lock: lockInConfig, ...migrateConfig } = config;
  const { key = DEFAULT_LOCK_KEY, ...lockOptions } = lock ?? lockInConfig ?? {};
  const { drizzle, run } = await importDrizzle();
  // Keep the query logger of the caller's db, if it has one (drizzle({ logger: true })).
  const logger = (db as { session?: { options?: { logger?: DrizzleLogger } } }).session?.options?.logger;
  await withMigrationLock(
    client,
    key,
    ({ client: session }) =>
      run(drizzle({ client: session as pg.PoolClient, ...(logger ? { logger } : {}) }), migrateConfig),
    lockOptions,
  );
}

async function importDrizzle() {
  try {
    const [{ drizzle }, { migrate: run }] = await Promise.all([
      import('drizzle-orm/node-postgres'),
      import('drizzle-orm/node-postgres/migrator'),
    ]);
    return { drizzle, run };
  } catch (err) {
    if (!/MODULE_NOT_FOUND/.test((err as { code?: string }).code ?? '') || !String(err).includes("'drizzle-orm"))
      throw err;
    throw missingMigrator('drizzle', 'drizzle-orm', err);
  }
}
