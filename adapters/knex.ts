import { promisify } from 'node:util';
import type { Knex } from 'knex';
import type pg from 'pg';
import {
  type CheckedLock,
  type ClientSource,
  checkFleetConfig,
  checkLock,
  type FleetMigrator,
  type FleetTarget,
  fleetMigrator,
  importPeer,
  type KeyedLockOptions,
  lockedRun,
  namingMigration,
  pgQuery,
  type Query,
  SKIPPED,
  schemaEntry,
  targetConfig,
  tenantSearchPath,
  usingTarget,
} from './kit.js';
import { knexAppliedRule } from './knex/applied.js';
import { freeStaleLockRow, inspect } from './knex/tables.js';

/**
 * The `lock` option of {@link latest}: the key, plus every option of `withMigrationLock`.
 * `key` defaults to DEFAULT_LOCK_KEY (`lockKey('pg-migration-lock')`, also the CLI's default).
 * @example { key: lockKey('billing'), timeoutMs: 5 * 60_000, logger: pino() }
 */
export interface KnexLockOptions extends KeyedLockOptions {}

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
  const client = checkKnex(knex);
  const { lock: lockInConfig, ...migratorConfig } = config;
  return latestLocked(knex, client, migratorConfig, checkLock(lock ?? lockInConfig, 'knex'));
}

/**
 * `latest` once its arguments are checked. For a fleet: `before` runs on the locked session before knex
 * migrates, and `source` (a fleet's pool) replaces the connection made from knex's settings.
 */
async function latestLocked(
  knex: Knex,
  client: Knex.Client,
  migratorConfig: Knex.MigratorConfig,
  locking: CheckedLock,
  before?: (query: Query) => Promise<void>,
  source?: ClientSource,
): Promise<[batchNo: number, log: string[]]> {
  /*
   * Lock and migration share one session, so they share fate: if the session dies, the lock is gone and
   * so is the migration's connection (its transaction rolls back). The lock is taken on a connection of
   * our own, made from knex's connection settings, and knex migrates through a copy of your knex whose
   * "pool" is that one connection. Your pool is never touched, so a pool of max 1 cannot deadlock.
   * The pending check runs first on that same connection; with nothing to do, no lock is taken.
   */
  const merged = { ...client.config.migrations, ...migratorConfig };
  // One knex per session, made once: the check and the migration then share its setup (search path, afterCreate).
  const onSessions = new WeakMap<pg.ClientBase, Promise<Knex>>();
  const knexOn = (session: pg.ClientBase) => {
    if (!onSessions.has(session)) onSessions.set(session, onSession(knex, session));
    return onSessions.get(session)!;
  };
  let batchNo = 0;
  const result = await lockedRun(
    source ?? (await lockSource(client)),
    locking,
    async ({ client: session }: { client: pg.ClientBase }) => {
      await before?.(pgQuery(session));
      const locked = await knexOn(session);
      await freeStaleLockRow(locked, merged, locking.logger);
      return locked.migrate.latest(migratorConfig) as Promise<[number, string[]]>;
    },
    // Up to date (and no stale knex_migrations_lock row to free): what knex returns for a no-op, no lock taken.
    async ({ client: session }) => {
      const state = await inspect(await knexOn(session), migratorConfig);
      batchNo = state.batchNo;
      return state.pending.length > 0 || state.lockRowStuck;
    },
  );
  return result === SKIPPED ? [batchNo, []] : result;
}

/**
 * The migrations `knex.migrate.latest(config)` would run now, by name, in order: what `migrate.list(config)`
 * reports as pending, with its errors (e.g. "The migration directory is corrupt" when the database records
 * migrations the directory lacks). Unlike `migrate.list`, it creates nothing: a database without knex's
 * tables has every migration pending. Takes no lock; runs on your knex's pool.
 *
 * @param knex your knex instance (`client: 'pg'`).
 * @param config the config you give {@link latest} (its `lock` is ignored).
 * @returns the names of the pending migrations (`[]` when up to date).
 *
 * @example
 * import { pending } from 'pg-migration-lock/knex';
 * if ((await pending(db, { directory: './migrations' })).length > 0) throw new Error('database not migrated yet');
 */
export async function pending(knex: Knex, config: KnexLatestConfig = {}): Promise<string[]> {
  checkKnex(knex);
  const { lock: _lock, ...migratorConfig } = config;
  return (await inspect(knex, migratorConfig)).pending;
}

function checkKnex(knex: Knex): Knex.Client {
  const client = knex?.client;
  if (typeof knex !== 'function' || client?.driverName !== 'pg') {
    throw new TypeError(
      `pg-migration-lock/knex: expected a knex instance for PostgreSQL (knex({ client: 'pg', … })), got ${client?.driverName ? `a '${client.driverName}' knex` : typeof knex}`,
    );
  }
  return client;
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

/**
 * What {@link fleet} takes: a knex config as a knexfile environment holds it (`client: 'pg'`, `migrations`,
 * `pool.afterCreate`, …), whose `connection` each target replaces.
 */
export type KnexFleetConfig = Omit<Knex.Config, 'connection'> & { connection?: never };

/**
 * A fleet migrator for `migrateEach`: `knex.migrate.latest()` on each target, under the target's lock.
 *
 * Per target it makes a knex of `config` on the target's connection (destroyed after); the lock and the migration
 * run on one connection, made for the target, or for a schema target one of the pool the run shares among the
 * schemas of that database (so `pool.afterCreate` runs on each checkout). On a schema target (`{ url, schema }`): `migrations.schemaName` is the schema, so `knex_migrations` and
 * `knex_migrations_lock` live there; `searchPath` is `[schema, 'public']`, so unqualified `knex.schema.createTable()`
 * lands in the schema; and the schema is created, under the lock, if it does not exist.
 *
 * @param config a knex config without `connection`, e.g. a knexfile environment's.
 * @example
 * import { migrateEach } from 'pg-migration-lock';
 * import { fleet } from 'pg-migration-lock/knex';
 * const tenants = ['tenant_1', 'tenant_2'].map((schema) => ({ url: process.env.DATABASE_URL!, schema }));
 * const report = await migrateEach(tenants, fleet({ migrations: { directory: './migrations' } }));
 */
/** The file knex named as failing, per knex instance of a fleet's target. */
const failedFiles = new WeakMap<Knex, { file?: string }>();

export function fleet(config: KnexFleetConfig = {}): FleetMigrator {
  checkFleetConfig('knex', config, 'knexConfig');
  if (config.client !== undefined && !['pg', 'postgres', 'postgresql'].includes(config.client as string)) {
    throw new TypeError(
      `pg-migration-lock/knex: a fleet migrates PostgreSQL: expected client 'pg', got ${String(config.client)}`,
    );
  }
  const parts = {
    open: async (target: FleetTarget) => {
      const { default: knexFactory } = await importPeer('knex', 'knex', () => import('knex'));
      const { schema } = target;
      // knex names the failing file only in its log ("migration file "x" failed"): kept for the target's error.
      const failed: { file?: string } = {};
      const warn = config.log?.warn ?? ((message: string) => console.warn(message));
      const db = knexFactory({
        ...config,
        log: {
          ...config.log,
          warn: (message: string) => {
            failed.file = /^migration file "(.+)" failed$/.exec(message)?.[1] ?? failed.file;
            warn(message);
          },
        },
        client: config.client ?? 'pg',
        connection: targetConfig(target) as Knex.PgConnectionConfig,
        pool: { ...config.pool, min: 0, max: 1 },
        ...(schema !== undefined && { searchPath: tenantSearchPath(schema) }),
        migrations: { ...config.migrations, ...(schema !== undefined && { schemaName: schema }) },
      });
      checkKnex(db);
      failedFiles.set(db, failed);
      return db;
    },
    close: (db: Knex) => db.destroy(),
  };
  return fleetMigrator<Knex>({
    name: 'knex',
    ...parts,
    pending: (db) => pending(db),
    // A knex of the config lists the migrations; it never connects (its pool opens on a first query).
    appliedRule: (target) => usingTarget(() => parts.open(target), parts.close, knexAppliedRule),
    run: async (db, target, lock, pool) => {
      try {
        return (await latestLocked(db, db.client, {}, lock, schemaEntry(target, false), pool))[1];
      } catch (err) {
        throw namingMigration(err, failedFiles.get(db)?.file);
      }
    },
  });
}
