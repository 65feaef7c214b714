import type pg from 'pg';
import type { DataSource, Migration, MigrationExecutor, QueryRunner } from 'typeorm';
import {
  type AdapterLockOptions,
  adapterLock,
  borrowedPgSession,
  importPeer,
  lockedRun,
  requirePeer,
  SKIPPED,
} from './kit.js';

/**
 * The `lock` option of {@link runMigrations}: the key, plus every option of `withMigrationLock`.
 * `key` defaults to DEFAULT_LOCK_KEY (`lockKey('pg-migration-lock')`, also the CLI's default).
 * @example { key: lockKey('billing'), timeoutMs: 5 * 60_000, logger: pino() }
 */
export interface TypeormLockOptions extends AdapterLockOptions {}

/** TypeORM's own `dataSource.runMigrations(options)` options, plus `lock`. */
export interface TypeormRunMigrationsOptions {
  /**
   * `all`: every pending migration in one transaction; `each`: one transaction per migration; `none`:
   * no transaction (a migration's own `transaction` property overrides `each` and `none`).
   * @default the data source's `migrationsTransactionMode`, else `'all'`
   */
  transaction?: 'all' | 'none' | 'each';
  /** Record the pending migrations as applied without running them. @default false */
  fake?: boolean;
  /** How to take the lock, see {@link TypeormLockOptions}. @default {} */
  lock?: TypeormLockOptions;
}

/**
 * `dataSource.runMigrations(options)` under a PostgreSQL advisory lock: replicas that start at once apply
 * each migration once, one after the other (bare TypeORM has no migration lock, so they collide on
 * `CREATE TABLE "migrations"` and on each migration). Returns TypeORM's `Migration[]`, the migrations
 * this call applied.
 *
 * TypeORM's own `MigrationExecutor` runs on a `QueryRunner` whose connection is the session that holds
 * the lock, so lock and migration share fate. A replica that finds nothing pending returns `[]` at
 * once, without queueing for the lock.
 *
 * @param dataSource an initialized TypeORM `postgres` data source.
 * @param options TypeORM's `runMigrations` options (`transaction`, `fake`), plus `lock`.
 *
 * @example
 * // before: const applied = await dataSource.runMigrations({ transaction: 'each' });
 * import { runMigrations } from 'pg-migration-lock/typeorm';
 * const applied = await runMigrations(dataSource, { transaction: 'each', lock: { timeoutMs: 300_000 } });
 */
export async function runMigrations(
  dataSource: DataSource,
  options: TypeormRunMigrationsOptions = {},
): Promise<Migration[]> {
  checkDataSource(dataSource);
  if (options === null || typeof options !== 'object')
    throw new TypeError('pg-migration-lock/typeorm: expected `options` to be an object ({ transaction, fake, lock })');
  const { lock, transaction, fake } = options;
  // Checked before the pending check's queries: bad input fails before anything is sent.
  const locking = adapterLock(lock, 'typeorm');
  const Executor = await importExecutor();
  const queryRunner = dataSource.createQueryRunner('master');
  // The query runner's pg connection is the lock session, borrowed: it goes back to TypeORM's pool after,
  // unless the lock may still sit on it (a failed unlock, a lost session).
  let borrowed: ReturnType<typeof borrowedPgSession> | undefined;
  try {
    borrowed = borrowedPgSession((await queryRunner.connect()) as pg.PoolClient);
    const result = await lockedRun(
      borrowed.source,
      locking,
      () => {
        const executor = new Executor(dataSource, queryRunner);
        // What DataSource#runMigrations sets (0.3 and 1.x alike).
        executor.transaction = transaction || dataSource.options.migrationsTransactionMode || 'all';
        executor.fake = fake ?? false;
        return executor.executePendingMigrations();
      },
      // Checked on the lock session before queueing, and again at each release while waiting: with nothing
      // pending, no lock is taken. TypeORM's executor checks again under the lock, so this only saves waits.
      async () => (await new Executor(dataSource, queryRunner).getPendingMigrations()).length > 0,
    );
    return result === SKIPPED ? [] : result;
  } finally {
    await release(queryRunner, borrowed?.discarded() ?? false);
  }
}

/**
 * The names of the migrations {@link runMigrations} would apply, in order, without taking the lock and
 * without changing anything (no `migrations` table is created). TypeORM's own rule: every migration of
 * the data source whose name the migrations table lacks.
 *
 * @param dataSource an initialized TypeORM `postgres` data source.
 * @example
 * import { pending } from 'pg-migration-lock/typeorm';
 * if ((await pending(dataSource)).length > 0) console.log('migrations are pending');
 */
export async function pending(dataSource: DataSource, _options?: TypeormRunMigrationsOptions): Promise<string[]> {
  checkDataSource(dataSource);
  return pendingMigrations(await importExecutor(), dataSource);
}

async function pendingMigrations(Executor: typeof MigrationExecutor, dataSource: DataSource): Promise<string[]> {
  const migrations = await new Executor(dataSource).getPendingMigrations();
  return migrations.map((migration) => migration.name);
}

function checkDataSource(dataSource: DataSource): void {
  const type = (dataSource as { options?: { type?: string } } | null)?.options?.type;
  if (typeof dataSource?.createQueryRunner !== 'function' || type !== 'postgres') {
    throw new TypeError(
      `pg-migration-lock/typeorm: expected a TypeORM DataSource of type 'postgres', got ${type ? `a '${type}' data source` : typeof dataSource}`,
    );
  }
  if (!dataSource.isInitialized) {
    throw new TypeError(
      'pg-migration-lock/typeorm: the DataSource is not initialized: `await dataSource.initialize()` first',
    );
  }
}

/** Gives the query runner's connection back to TypeORM's pool, or destroys it if it may still hold the lock. */
async function release(queryRunner: QueryRunner, discard: boolean): Promise<void> {
  const runner = queryRunner as QueryRunner & { releasePostgresConnection?: (err?: Error) => Promise<void> };
  if (discard && typeof runner.releasePostgresConnection === 'function') {
    await runner.releasePostgresConnection(new Error('pg-migration-lock: lock session discarded'));
  } else {
    await queryRunner.release();
  }
}

async function importExecutor(): Promise<typeof MigrationExecutor> {
  return (await importPeer('typeorm', 'typeorm', async () => requirePeer<typeof import('typeorm')>('typeorm')))
    .MigrationExecutor;
}
