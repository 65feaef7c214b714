import { promisify } from 'node:util';
import type { Knex } from 'knex';
import type pg from 'pg';
import { DEFAULT_LOCK_KEY, type LockKeyInput, type MigrationLockOptions, withMigrationLock } from '../src/index.js';
import { type Logger, resolveLogger } from '../src/logger.js';
import type { ClientSource } from '../src/session.js';

/**
 * The `lock` option of {@link latest}: the key, plus every option of `withMigrationLock`.
 * @example { key: lockKey('billing'), timeoutMs: 5 * 60_000, logger: pino() }
 */
export interface KnexLockOptions extends MigrationLockOptions {
  /**
   * The advisory-lock key (per database). Replicas migrating the same tables must share it. Apps with
   * migration tables of their own in one database may share it too (they take turns); give each its own
   * (e.g. `lockKey('billing')`) to let them migrate side by side.
   * @default DEFAULT_LOCK_KEY (`lockKey('pg-migration-lock')`, also the CLI's default)
   */
  key?: LockKeyInput;
}

/** knex's own `migrate.latest` config, plus `lock`. */
export type KnexLatestConfig = Knex.MigratorConfig & {
  /** How to take the lock, see {@link KnexLockOptions}. @default {} */
  lock?: KnexLockOptions;
};

/**
 * `knex.migrate.latest(config)` under a PostgreSQL advisory lock: replicas that start at once run the
 * pending migrations one after the other instead of failing. Returns knex's `[batchNo, log]`.
 *
 * Under the lock, a `knex_migrations_lock` row left at `is_locked = 1` by a crashed run is freed (with a
 * warning through `lock.logger`) instead of failing with "Migration table is already locked".
 *
 * @param knex your knex instance (`client: 'pg'`); its pool is not used, see below.
 * @param config knex's migration config (`directory`, `tableName`, `schemaName`, …) plus `lock`.
 * @param lock the lock options, if you prefer them out of `config`; they win over `config.lock`.
 *
 * @example
 * // before: const [batchNo, log] = await db.migrate.latest({ directory: './migrations' });
 * import { latest } from 'pg-migration-lock/knex';
 * const [batchNo, log] = await latest(db, { directory: './migrations', lock: { timeoutMs: 300_000 } });
 */
export async function latest(
  knex: Knex,
  config: KnexLatestConfig = {},
  lock?: KnexLockOptions,
): Promise<[batchNo: number, log: string[]]> {
  const client = knex?.client;
  if (typeof knex !== 'function' || client?.driverName !== 'pg') {
    throw new TypeError(
      `pg-migration-lock/knex: expected a knex instance for PostgreSQL (knex({ client: 'pg', … })), got ${client?.driverName ? `a '${client.driverName}' knex` : typeof knex}`,
    );
  }
  const { lock: lockInConfig, ...migratorConfig } = config;
  const { key = DEFAULT_LOCK_KEY, ...lockOptions } = lock ?? lockInConfig ?? {};
  const logger = resolveLogger(lockOptions.logger);

  /*
   * Lock and migration share one session, so they share fate: if the session dies, the lock is gone and
   * so is the migration's connection (its transaction rolls back). The lock is taken on a connection of
   * our own, made from knex's connection settings, and knex migrates through a copy of your knex whose
   * "pool" is that one connection. Your pool is never touched, so a pool of max 1 cannot deadlock.
   */
  return withMigrationLock(
    await lockSource(client),
    key,
    async ({ client: session }) => {
      const locked = await onSession(knex, session);
      await freeStaleLockRow(locked, { ...client.config.migrations, ...migratorConfig }, logger);
      return locked.migrate.latest(migratorConfig);
    },
    lockOptions,
  );
}

/** Where the lock session comes from: knex's connection settings, or the pg.Pool given as `connectionPool`. */
async function lockSource(client: Knex.Client): Promise<ClientSource> {
  const { connection, connectionPool } = client.config as Knex.Config & { connectionPool?: unknown };
  if (connectionPool) {
    if (typeof (connectionPool as pg.Pool).connect === 'function') return connectionPool as pg.Pool;
    throw new TypeError(
      'pg-migration-lock/knex: `connectionPool` must be a pg.Pool; pass `connection` settings instead',
    );
  }
  const settings = typeof connection === 'function' ? await connection() : connection;
  if (typeof settings === 'string') return settings;
  if (!settings) throw new TypeError('pg-migration-lock/knex: the knex instance has no `connection` settings');
  // knex hides `password` (non-enumerable), so a spread alone would drop it.
  const { expirationChecker, ...rest } = settings as pg.ClientConfig & { expirationChecker?: unknown };
  return { ...rest, password: (settings as pg.ClientConfig).password };
}

/** A copy of `knex` whose only connection is `session`, set up like knex sets up its own (search path, afterCreate). */
async function onSession(knex: Knex, session: pg.ClientBase): Promise<Knex> {
  const locked = knex.withUserParams(knex.userParams);
  // One connection shared in turn, exactly like a pool of max 1: a transaction has it to itself.
  let turn = Promise.resolve();
  let endTurn = () => {};
  locked.client.acquireConnection = () => {
    const previous = turn;
    let done = () => {};
    turn = new Promise((resolve) => (done = resolve));
    return previous.then(() => {
      endTurn = done;
      return session;
    });
  };
  locked.client.releaseConnection = async () => endTurn();
  await locked.client.setSchemaSearchPath(session);
  const afterCreate = knex.client.config.pool?.afterCreate;
  if (afterCreate) await promisify(afterCreate)(session);
  return locked;
}

/** Under our lock nobody else is migrating: a row still at `is_locked = 1` is a crashed run's leftover. */
async function freeStaleLockRow(knex: Knex, config: Knex.MigratorConfig, logger: Logger): Promise<void> {
  const table = `${config.tableName ?? 'knex_migrations'}_lock`;
  const schema = config.schemaName;
  const exists = await (schema ? knex.schema.withSchema(schema) : knex.schema).hasTable(table);
  if (!exists) return;
  const freed = await (schema ? knex(table).withSchema(schema) : knex(table))
    .where('is_locked', 1)
    .update({ is_locked: 0 });
  if (freed > 0) {
    logger.warn(
      `Freed ${schema ? `${schema}.` : ''}${table}: it was left at is_locked = 1 (by a crashed or killed knex run), and no other run holds the migration lock`,
    );
  }
}
