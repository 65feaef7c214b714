import type pg from 'pg';
import type { MigrateUpOptions, MigrationMeta, Umzug } from 'umzug';
import {
  borrowedPgSession,
  type CheckedLock,
  type ClientSource,
  checkFleetConfig,
  checkLock,
  enterSchema,
  type FleetMigrator,
  type FleetTarget,
  type KeyedLockOptions,
  lockedRun,
  pgQuery,
  type Query,
  type Session,
  type SessionSource,
  SKIPPED,
} from './kit.js';
import { umzugAppliedRule } from './umzug/applied.js';

/**
 * The `lock` option of {@link up}: the key, plus every option of `withMigrationLock`.
 * `key` defaults to DEFAULT_LOCK_KEY (`lockKey('pg-migration-lock')`, also the CLI's default): umzug and
 * Sequelize have no migration lock of their own to share a key with.
 * @example { key: lockKey('billing'), timeoutMs: 5 * 60_000, logger: pino() }
 */
export interface UmzugLockOptions extends KeyedLockOptions {}

/** umzug's own `umzug.up(options)` options (`to`, `step`, `migrations`, `rerun`), plus `lock`. */
export type UmzugUpOptions = MigrateUpOptions & {
  /** How to take the lock, see {@link UmzugLockOptions}. @default {} */
  lock?: UmzugLockOptions;
};

/**
 * What {@link up} takes a Sequelize instance by: its connection manager (`getConnection`, `releaseConnection`,
 * `destroyConnection`) and dialect. Structural, so this package's types never need `sequelize` installed.
 */
export interface SequelizeLike {
  getDialect(): string;
  connectionManager: {
    getConnection(options?: { type?: 'read' | 'write'; useMaster?: boolean }): Promise<unknown>;
    releaseConnection(connection: unknown): unknown;
    destroyConnection?(connection: unknown): Promise<unknown>;
  };
  config?: { pool?: { max?: number } };
}

/** Where {@link up} takes the lock: anything `withMigrationLock` takes, or a Sequelize instance (postgres dialect). */
export type UmzugLockSource = ClientSource | SequelizeLike;

/** Any umzug, whatever its context. */
// biome-ignore lint/suspicious/noExplicitAny: umzug's context type is the user's; the adapter never reads it.
type AnyUmzug = Umzug<any>;

/**
 * `umzug.up(options)` under a PostgreSQL advisory lock: replicas that boot at once apply each pending migration
 * once, one after the other (bare umzug has no lock: replicas run the same migration side by side). Returns
 * umzug's result, the migrations this call applied (`{ name, path }[]`).
 *
 * A replica that finds nothing pending (`umzug.pending()`) returns `[]` at once, without queueing for the lock;
 * umzug reads what is pending again under the lock, so a replica that queued while another migrated runs only
 * what is left.
 *
 * Where the migrations run: umzug runs them with your `context` (often Sequelize's `queryInterface`), that is on
 * your app's own connections, not on the session that holds the lock. So if the lock session is lost, the call
 * rejects with `MigrationLockLostError` (and `lock.hooks.onLockLost` fires) and no further migration starts, but
 * the migration running at that moment is not cut off; and fencing (the next holder terminating this holding's tagged sessions) reaches only the
 * lock session. Keep migrations idempotent or transactional where that matters.
 *
 * @param umzug your `Umzug` instance (umzug 3), any storage (SequelizeStorage, a custom one).
 * @param source where to take the lock: a `pg.Pool`, a connected `pg.Client`, a connection string or pg config, a
 *   postgres.js `sql`, or a Sequelize instance (`dialect: 'postgres'`): one connection of its pool holds the lock
 *   while the migrations run on others, so its `pool.max` must be at least 2.
 * @param options umzug's `up` options (`to`, `step`, `migrations`, `rerun`), plus `lock`.
 *
 * @example
 * // before: await umzug.up();
 * import { up } from 'pg-migration-lock/umzug';
 * await up(umzug, sequelize, { lock: { timeoutMs: 300_000 } });
 */
export async function up(
  umzug: AnyUmzug,
  source: UmzugLockSource,
  options: UmzugUpOptions = {},
): Promise<MigrationMeta[]> {
  checkUmzug(umzug);
  if (options === null || typeof options !== 'object')
    throw new TypeError('pg-migration-lock/umzug: expected `options` to be an object ({ to, step, migrations, lock })');
  const { lock, ...upOptions } = options;
  const locking = checkLock(lock, 'umzug');
  const sequelize = asSequelize(source);
  return upLocked(
    umzug,
    sequelize ? sequelizeSource(sequelize) : (source as ClientSource),
    upOptions as MigrateUpOptions,
    locking,
  );
}

/**
 * Sessions from Sequelize's own pool (its write side), as the core takes them from a pg.Pool: each is a connection
 * checked out with `getConnection()` and given back with `releaseConnection()`, or destroyed when the lock may
 * still sit on it (a failed unlock, a lost session). Reopenable like a pool: a waiter whose connection breaks
 * (a server restart) takes another one and keeps waiting.
 */
function sequelizeSource(sequelize: SequelizeLike): SessionSource {
  const { connectionManager } = sequelize;
  return {
    reopenable: true,
    open: async (): Promise<Session> => {
      const connection = (await connectionManager.getConnection({ type: 'write' })) as pg.ClientBase;
      let session: Session;
      try {
        session = await borrowedPgSession(connection).source.open();
      } catch (err) {
        connectionManager.releaseConnection(connection);
        throw err;
      }
      return {
        ...session,
        // What the core does with a pool's connection: a transaction left open is rolled back, settings restored.
        kind: 'pooled',
        release: async (discard?: boolean) => {
          if (!discard) return void connectionManager.releaseConnection(connection);
          // Closing the socket frees the lock on the server; the pool forgets the connection at once (its
          // destroy's own end() is not awaited: on a dead network it might never finish).
          session.destroy();
          (connection as { _invalid?: boolean })._invalid = true;
          if (connectionManager.destroyConnection) void connectionManager.destroyConnection(connection).catch(() => {});
          else connectionManager.releaseConnection(connection);
        },
      };
    },
  };
}

/** `up` once its arguments are checked; a fleet's `before` runs on the locked session before umzug migrates. */
async function upLocked(
  umzug: AnyUmzug,
  source: ClientSource | SessionSource,
  upOptions: MigrateUpOptions,
  locking: CheckedLock,
  before?: (query: Query) => Promise<void>,
): Promise<MigrationMeta[]> {
  const result = await lockedRun(
    source,
    locking,
    async ({ client, signal }: { client: pg.ClientBase; signal: AbortSignal }) => {
      await before?.(pgQuery(client));
      // The migrations run on the app's connections, which a lost lock session does not stop: at least start no
      // further migration once the lock is gone (umzug awaits its `migrating` listeners before each migration).
      const stopIfLost = () => signal.throwIfAborted();
      umzug.on('migrating', stopIfLost);
      try {
        return await umzug.up(upOptions);
      } finally {
        umzug.off('migrating', stopIfLost);
      }
    },
    // Asked before queueing and at each release heard while waiting: with nothing pending, no lock is taken.
    // umzug's storage reads through its own connection, not this session, and may create its table on the way
    // (SequelizeStorage syncs its model): replicas doing that at once can fail on each other's CREATE TABLE. A
    // check that fails therefore queues; umzug.up() reads pending again under the lock and reports any real error.
    // Migrations named explicitly (`to`, or `migrations` unless `rerun: 'SKIP'`) always queue: umzug then reruns
    // them (`rerun: 'ALLOW'`) or throws for a name it cannot apply, as a bare `umzug.up()` would.
    async () => {
      if (upOptions.to !== undefined || (upOptions.migrations !== undefined && upOptions.rerun !== 'SKIP')) return true;
      try {
        return (await umzug.pending()).length > 0;
      } catch (err) {
        locking.logger.debug?.(`umzug.pending() failed before queueing (queueing anyway): ${String(err)}`);
        return true;
      }
    },
  );
  return result === SKIPPED ? [] : result;
}

/**
 * The names of the migrations {@link up} would apply (umzug's `pending()`), in order, without taking the lock.
 * Note that umzug's storage may create its table on the way (SequelizeStorage syncs its model).
 *
 * @param umzug your `Umzug` instance.
 * @example
 * import { pending } from 'pg-migration-lock/umzug';
 * if ((await pending(umzug)).length > 0) console.log('migrations are pending');
 */
export async function pending(
  umzug: AnyUmzug,
  _source?: UmzugLockSource,
  _options?: UmzugUpOptions,
): Promise<string[]> {
  checkUmzug(umzug);
  return (await umzug.pending()).map((migration) => migration.name);
}

function checkUmzug(umzug: AnyUmzug): void {
  const u = umzug as unknown as Record<string, unknown> | null;
  if (u === null || typeof u !== 'object' || typeof u.up !== 'function' || typeof u.pending !== 'function') {
    throw new TypeError(
      `pg-migration-lock/umzug: expected an Umzug instance (new Umzug({ migrations, storage, … })), got ${u === null ? 'null' : typeof u}`,
    );
  }
  if (typeof u.on !== 'function' || typeof u.off !== 'function') {
    throw new TypeError('pg-migration-lock/umzug: expected an Umzug 3 instance (with `on` and `off`)');
  }
}

/** The Sequelize instance `source` is (checked: postgres dialect, a pool of 2 or more), or undefined for another source. */
function asSequelize(source: UmzugLockSource): SequelizeLike | undefined {
  const s = source as Partial<SequelizeLike> | null;
  if (s === null || typeof s !== 'object' || typeof s.getDialect !== 'function' || !s.connectionManager) {
    return undefined;
  }
  const dialect = s.getDialect();
  if (dialect !== 'postgres') {
    throw new TypeError(
      `pg-migration-lock/umzug: a Sequelize instance must use the 'postgres' dialect to hold a PostgreSQL lock, got '${dialect}'`,
    );
  }
  const max = s.config?.pool?.max;
  if (max !== undefined && max < 2) {
    throw new TypeError(
      `pg-migration-lock/umzug: Sequelize's pool has max ${max}: the lock holds one of its connections while umzug migrates on the others (a deadlock with max 1); raise pool.max, or pass a connection string or a pg.Pool as the lock source`,
    );
  }
  return s as SequelizeLike;
}

/** What {@link fleet} does after each target, e.g. closing the Sequelize instance its factory made. */
export interface UmzugFleetOptions {
  /** Called with each target's Umzug once the target is done (whatever happened). */
  close?: (umzug: AnyUmzug, target: FleetTarget) => Promise<unknown> | unknown;
}

/**
 * A fleet migrator for `migrateEach`: `umzug.up()` on each target, under the target's lock, with the Umzug your
 * `factory` makes for the target. The lock is taken on the target's connection (for a schema target, a
 * connection of the pool the run shares among the schemas of that database); the migrations run wherever your
 * Umzug's context and storage run, so point them at the target: e.g. a Sequelize on `target.connection`, and for a
 * schema target a SequelizeStorage in `target.schema` under a model name of its own (SequelizeStorage reuses a model
 * already defined under its name, with that model's schema) and migrations that use `target.schema`. A schema
 * target's schema is created, under its lock, if it does not exist. Its `pending(target)` is your storage's answer:
 * a SequelizeStorage in a schema that does not exist yet fails (it cannot create its table there).
 *
 * @param factory makes the Umzug for one target.
 * @param options `close(umzug, target)`, called after each target (e.g. to close what the factory opened).
 * @example
 * import { migrateEach } from 'pg-migration-lock';
 * import { fleet } from 'pg-migration-lock/umzug';
 * const migrator = fleet((target) => new Umzug({
 *   migrations: { glob: 'migrations/*.js' },
 *   context: { sequelize, schema: target.schema },
 *   storage: new SequelizeStorage({
 *     sequelize, schema: target.schema, modelName: `SequelizeMeta_${target.schema}`, tableName: 'SequelizeMeta',
 *   }),
 *   logger: undefined,
 * }));
 * await migrateEach(['tenant_1', 'tenant_2'].map((schema) => ({ url, schema })), migrator);
 */
export function fleet(
  factory: (target: FleetTarget) => AnyUmzug | Promise<AnyUmzug>,
  options: UmzugFleetOptions = {},
): FleetMigrator {
  if (typeof factory !== 'function') {
    throw new TypeError('pg-migration-lock/umzug: expected fleet(factory) to get a function (target) => Umzug');
  }
  checkFleetConfig('umzug', options, 'factory, { close }');
  const using = async <T>(target: FleetTarget, use: (umzug: AnyUmzug) => Promise<T>): Promise<T> => {
    const umzug = await factory(target);
    try {
      checkUmzug(umzug);
      return await use(umzug);
    } finally {
      await options.close?.(umzug, target);
    }
  };
  return {
    name: 'umzug',
    pending: (target) => using(target, (umzug) => pending(umzug)),
    appliedRule: (target) => using(target, (umzug) => umzugAppliedRule(umzug, target)),
    run: (target, lock, pool) =>
      using(target, async (umzug) => {
        const { schema } = target;
        const before = schema === undefined ? undefined : (query: Query) => enterSchema(query, schema, false);
        const applied = await upLocked(umzug, pool ?? target.connection, {}, checkLock(lock, 'umzug'), before);
        return applied.map((migration) => migration.name);
      }),
  };
}
