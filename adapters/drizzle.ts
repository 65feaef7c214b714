import { readFileSync } from 'node:fs';
import type { Logger as DrizzleLogger } from 'drizzle-orm';
import type { migrate as drizzleMigrate } from 'drizzle-orm/node-postgres/migrator';
import type pg from 'pg';
import { missingMigrator } from '../src/errors.js';
import { DEFAULT_LOCK_KEY, type LockKeyInput, type MigrationLockOptions } from '../src/index.js';
import { withMigrationLockUnless } from '../src/lock.js';
import { withSession } from '../src/session.js';

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
  const client = checkArguments(db, config);
  const { lock: lockInConfig, ...migrateConfig } = config;
  const { key = DEFAULT_LOCK_KEY, ...lockOptions } = lock ?? lockInConfig ?? {};
  const { drizzle, run, readMigrationFiles } = await importDrizzle();
  // Keep the query logger of the caller's db, if it has one (drizzle({ logger: true })).
  const logger = (db as { session?: { options?: { logger?: DrizzleLogger } } }).session?.options?.logger;
  // Nothing to apply: drizzle's no-op resolves undefined too, and this one queues for no lock.
  await withMigrationLockUnless(
    client,
    key,
    ({ client: session }) =>
      run(drizzle({ client: session as pg.PoolClient, ...(logger ? { logger } : {}) }), migrateConfig),
    lockOptions,
    async (session) => (await toApply(session, migrateConfig, readMigrationFiles)).length === 0,
  );
}

/**
 * The migrations drizzle's `migrate(db, config)` would apply now, by journal tag, in order. drizzle's rule:
 * it applies every migration of the journal whose `when` (folderMillis) is later than the `created_at` of
 * the last row of its table (`order by created_at desc limit 1`), all of them when the table is empty or
 * missing. Read with drizzle's own `readMigrationFiles` (same errors for a missing journal or file). Unlike
 * `migrate`, it creates nothing (no schema, no table) and takes no lock.
 *
 * @param db a drizzle `node-postgres` database, over a `pg.Pool` or a connected `pg.Client`.
 * @param config drizzle's migrate config (`migrationsFolder`, `migrationsTable`, `migrationsSchema`).
 * @returns the tags of the pending migrations (`[]` when up to date).
 *
 * @example
 * import { pending } from 'pg-migration-lock/drizzle';
 * const tags = await pending(db, { migrationsFolder: './drizzle' }); // e.g. ['0007_add_orders']
 */
export async function pending(
  db: Parameters<typeof drizzleMigrate>[0],
  config: DrizzleMigrateConfig,
): Promise<string[]> {
  const client = checkArguments(db, config);
  const { readMigrationFiles } = await importDrizzle();
  return withSession(client, (session) => toApply(session.client as pg.ClientBase, config, readMigrationFiles));
}

function checkArguments(db: unknown, config: unknown): pg.Pool | pg.ClientBase {
  const client = (db as { $client?: pg.Pool | pg.ClientBase } | undefined)?.$client;
  if (typeof client?.query !== 'function') {
    throw new TypeError(
      "pg-migration-lock/drizzle: expected a drizzle node-postgres database (drizzle(pool) or drizzle({ client }) from 'drizzle-orm/node-postgres')",
    );
  }
  if (config === null || typeof config !== 'object')
    throw new TypeError('pg-migration-lock/drizzle: expected a migrate config ({ migrationsFolder })');
  return client;
}

type ReadMigrationFiles = (config: { migrationsFolder: string }) => { folderMillis: number }[];

/** pg-core's dialect.migrate, read-only: the same last-row query, the same comparison. */
async function toApply(
  client: pg.ClientBase,
  config: DrizzleMigrateConfig,
  readMigrationFiles: ReadMigrationFiles,
): Promise<string[]> {
  const migrations = readMigrationFiles(config);
  // readMigrationFiles keeps the journal's order but drops the tags: read them from the same journal.
  const { entries } = JSON.parse(readFileSync(`${config.migrationsFolder}/meta/_journal.json`, 'utf8')) as {
    entries: { tag: string }[];
  };
  const table = `${quoteIdent(config.migrationsSchema ?? 'drizzle')}.${quoteIdent(config.migrationsTable ?? '__drizzle_migrations')}`;
  const exists = await client.query<{ present: boolean }>('SELECT to_regclass($1) IS NOT NULL AS present', [table]);
  let last: { created_at: string | null } | undefined;
  if (exists.rows[0]!.present) {
    last = (await client.query(`select id, hash, created_at from ${table} order by created_at desc limit 1`)).rows[0];
  }
  return migrations.flatMap((migration, i) =>
    !last || Number(last.created_at) < migration.folderMillis ? [entries[i]!.tag] : [],
  );
}

const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;

async function importDrizzle() {
  try {
    const [{ drizzle }, { migrate: run }, { readMigrationFiles }] = await Promise.all([
      import('drizzle-orm/node-postgres'),
      import('drizzle-orm/node-postgres/migrator'),
      import('drizzle-orm/migrator'),
    ]);
    return { drizzle, run, readMigrationFiles: readMigrationFiles as ReadMigrationFiles };
  } catch (err) {
    if (!/MODULE_NOT_FOUND/.test((err as { code?: string }).code ?? '') || !String(err).includes("'drizzle-orm"))
      throw err;
    throw missingMigrator('drizzle', 'drizzle-orm', err);
  }
}
