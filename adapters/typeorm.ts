import type pg from 'pg';
import type { DataSource, DataSourceOptions, Migration, MigrationExecutor, QueryRunner } from 'typeorm';
import {
  borrowedPgSession,
  type CheckedLock,
  checkFleetConfig,
  checkLock,
  type FleetMigrator,
  type FleetTarget,
  importPeer,
  type KeyedLockOptions,
  lockedRun,
  namesRule,
  namingMigration,
  pgQuery,
  type Query,
  quoteIdent,
  requirePeer,
  SKIPPED,
  schemaEntry,
  targetConfig,
  usingTarget,
} from './kit.js';

/**
 * The `lock` option of {@link runMigrations}: the key, plus every option of `withMigrationLock`.
 * `key` defaults to DEFAULT_LOCK_KEY (`lockKey('pg-migration-lock')`, also the CLI's default).
 * @example { key: lockKey('billing'), timeoutMs: 5 * 60_000, logger: pino() }
 */
export interface TypeormLockOptions extends KeyedLockOptions {}

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
  return runLocked(dataSource, { transaction, fake }, checkLock(lock, 'typeorm'));
}

/**
 * `runMigrations` once its arguments are checked; a fleet's `before` runs on the locked session before TypeORM
 * migrates.
 */
async function runLocked(
  dataSource: DataSource,
  { transaction, fake }: Omit<TypeormRunMigrationsOptions, 'lock'>,
  locking: CheckedLock,
  before?: (query: Query) => Promise<void>,
): Promise<Migration[]> {
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
      async ({ client }: { client: pg.ClientBase }) => {
        await before?.(pgQuery(client));
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
  return (await importTypeorm()).MigrationExecutor;
}

function importTypeorm(): Promise<typeof import('typeorm')> {
  return importPeer('typeorm', 'typeorm', async () => requirePeer<typeof import('typeorm')>('typeorm'));
}

/** What {@link fleet} takes: a `postgres` data source's options (e.g. `dataSource.options`), whose connection each target replaces. */
export type TypeormFleetOptions = DataSourceOptions & { type: 'postgres' };

/**
 * A fleet migrator for `migrateEach`: `dataSource.runMigrations(runOptions)` on each target, under the target's
 * lock, through a data source made of `options` for the target (a pool of one connection; destroyed after: TypeORM
 * makes its own pool). A schema target that is up to date is found so on the run's shared pool of its database,
 * without a data source, once one has named the migrations.
 * Resolves to the names of the migrations TypeORM applied.
 *
 * The target's connection replaces the options' (`url`, `host`, `port`, `username`, `password`, `database`,
 * `replication`). On a schema target (`{ url, schema }`): TypeORM's `schema` is the schema, so its `migrations`
 * table (and what `queryRunner.createTable()` makes without a schema) lives there; the schema is created, under
 * the lock, if it does not exist; and the session's `search_path` is the schema, then `public`, so a migration's
 * unqualified raw SQL lands there too.
 *
 * @param options the data source's options (`type: 'postgres'`, `migrations`, `migrationsTableName`, …).
 * @param runOptions `transaction` (`all`, `each`, `none`) and `fake`, as for {@link runMigrations}.
 * @example
 * import { migrateEach } from 'pg-migration-lock';
 * import { fleet } from 'pg-migration-lock/typeorm';
 * const migrator = fleet({ type: 'postgres', migrations: ['dist/migrations/*.js'] }, { transaction: 'each' });
 * await migrateEach(['postgres://db1/acme', 'postgres://db1/globex'], migrator);
 */
/** The migration TypeORM logged as failing, per data source of a fleet's target. */
const failedMigrations = new WeakMap<DataSource, { name?: string }>();

/**
 * TypeORM names a failing migration only in its log (`Migration "X" failed, error: …`): this data source's logger
 * (a layer over the one the options give, which other targets share) keeps the name for the target's error.
 */
function watchFailure(dataSource: DataSource): void {
  const failed: { name?: string } = {};
  const base = dataSource.logger;
  const logger = Object.create(base) as typeof base;
  logger.logMigration = (message, queryRunner) => {
    failed.name = /^Migration "(.+)" failed, error:/.exec(message)?.[1] ?? failed.name;
    return base.logMigration(message, queryRunner);
  };
  Object.defineProperty(dataSource, 'logger', { value: logger, configurable: true, writable: true });
  failedMigrations.set(dataSource, failed);
}

export function fleet(
  options: TypeormFleetOptions,
  runOptions: Omit<TypeormRunMigrationsOptions, 'lock'> = {},
): FleetMigrator {
  checkFleetConfig('typeorm', options, 'dataSourceOptions');
  if (options.type !== 'postgres') {
    throw new TypeError(`pg-migration-lock/typeorm: expected fleet() to get a 'postgres' data source's options`);
  }
  checkFleetConfig('typeorm', runOptions, '…, { transaction, fake }');
  const open = async (target: FleetTarget) => {
    const { DataSource: DataSourceClass } = await importTypeorm();
    const connection = { url: undefined, host: undefined, port: undefined, username: undefined, password: undefined };
    const dataSource = new DataSourceClass({
      ...options,
      ...connection,
      database: undefined,
      replication: undefined,
      ...(target.schema !== undefined && { schema: target.schema }),
      // TypeORM hands `extra` to pg's Pool last: the target's connection, and one connection per target.
      extra: { ...options.extra, ...targetConfig(target, options.applicationName), max: 1 },
    } as DataSourceOptions);
    watchFailure(dataSource);
    await dataSource.initialize();
    // The migrations' names, as TypeORM names them: the same for every target, kept for upToDate.
    names ??= dataSource.migrations.map((m) => m.name || m.constructor.name);
    return dataSource;
  };
  const close = async (dataSource: DataSource) => {
    if (dataSource.isInitialized) await dataSource.destroy();
  };
  let names: string[] | undefined;
  /**
   * A schema target found up to date on a connection of the run's pool, without a data source (whose start, per
   * target, costs more than the check): TypeORM's own rule, every migration's name in the schema's table. Only
   * once a data source has named the migrations; anything else goes the whole way (which checks again).
   */
  const upToDate = async (target: FleetTarget, pool: pg.Pool | undefined): Promise<boolean> => {
    if (!pool || !names || target.schema === undefined) return false;
    const table = `${quoteIdent(target.schema)}.${quoteIdent(options.migrationsTableName ?? 'migrations')}`;
    const client = await pool.connect();
    try {
      const [row] = (await client.query('SELECT to_regclass($1) IS NOT NULL AS present', [table])).rows;
      if (!row?.present) return false;
      const done = new Set((await client.query(`SELECT name FROM ${table}`)).rows.map((r) => r.name));
      return names.every((name) => done.has(name));
    } finally {
      client.release();
    }
  };
  return {
    name: 'typeorm',
    // TypeORM's rule (executePendingMigrations): every migration's name in the schema's table, other rows let be.
    appliedRule: async (target) => {
      if (!names)
        await usingTarget(
          () => open(target),
          close,
          async () => {},
        );
      return namesRule(names!, options.migrationsTableName ?? 'migrations');
    },
    pending: (target) =>
      usingTarget(
        () => open(target),
        close,
        (dataSource) => pending(dataSource),
      ),
    run: async (target, lock, pool) => {
      if (await upToDate(target, pool)) return [];
      return usingTarget(
        () => open(target),
        close,
        async (dataSource) => {
          const locking = checkLock(lock, 'typeorm');
          try {
            const applied = await runLocked(dataSource, runOptions, locking, schemaEntry(target, true));
            return applied.map((migration) => migration.name);
          } catch (err) {
            throw namingMigration(err, failedMigrations.get(dataSource)?.name);
          }
        },
      );
    },
  };
}
