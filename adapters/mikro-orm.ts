import type { MigrateOptions, Options, UmzugMigration } from '@mikro-orm/core';
import type pg from 'pg';
import {
  type CheckedLock,
  type ClientSource,
  checkFleetConfig,
  checkLock,
  enterSchema,
  type FleetMigrator,
  type FleetTarget,
  importPeer,
  type KeyedLockOptions,
  lockedRun,
  pgQuery,
  type Query,
  quoteIdent,
  SKIPPED,
  usingTarget,
} from './kit.js';
import { mikroOrmAppliedRule } from './mikro-orm/applied.js';
import {
  type AnyOrm,
  afterCreate,
  type KnexLike,
  lockSource,
  storeSnapshot,
  withoutSnapshot,
} from './mikro-orm/session.js';

/**
 * The `lock` option of {@link up}: the key, plus every option of `withMigrationLock`.
 * `key` defaults to DEFAULT_LOCK_KEY (`lockKey('pg-migration-lock')`, also the CLI's default): MikroORM's migrator
 * has no lock of its own to share a key with.
 * @example { key: lockKey('billing'), timeoutMs: 5 * 60_000, logger: pino() }
 */
export interface MikroOrmLockOptions extends KeyedLockOptions {}

/** MikroORM's own `migrator.up(options)` options (`from`, `to`, `migrations`, `transaction`), plus `lock`. */
export type MikroOrmUpOptions = MigrateOptions & {
  /** How to take the lock, see {@link MikroOrmLockOptions}. @default {} */
  lock?: MikroOrmLockOptions;
};

/** Any MikroORM instance (its driver is checked at run time: PostgreSQL). */

/**
 * `orm.migrator.up(options)` (MikroORM 6, `@mikro-orm/migrations`) under a PostgreSQL advisory lock: replicas that
 * boot at once apply each pending migration once, one after the other (MikroORM's migrator has no cross-process
 * lock). Returns MikroORM's result, the migrations this call applied (`{ name, path }[]`).
 *
 * The lock is taken on a connection of its own, opened with the ORM's connection settings (the ORM's pool is not
 * used for it, so a small pool cannot deadlock). With MikroORM's defaults (`migrations.transactional` and
 * `allOrNothing`), the migrations and their rows in `mikro_orm_migrations` run in one transaction on that very
 * session (MikroORM's own `transaction` option), so lock and migration share fate: if the session dies, the lock
 * is gone and the transaction rolls back. With `allOrNothing: false` or `transactional: false`, or a `transaction`
 * of your own, MikroORM runs the migrations on its pool: still one replica at a time, but a lost lock session
 * rejects the call (`MigrationLockLostError`) and starts no further migration without stopping the one running.
 *
 * A replica that finds nothing pending returns `[]` at once, without queueing for the lock; MikroORM reads what is
 * pending again under the lock.
 *
 * @param orm an initialized MikroORM for PostgreSQL (`@mikro-orm/postgresql`), with `@mikro-orm/migrations`.
 * @param options MikroORM's `up` options (`from`, `to`, `migrations`, or a migration name or list of names), plus `lock`.
 *
 * @example
 * // before: await orm.migrator.up();
 * import { up } from 'pg-migration-lock/mikro-orm';
 * await up(orm, { lock: { timeoutMs: 300_000 } });
 */
export async function up(orm: AnyOrm, options: MikroOrmUpOptions | string | string[] = {}): Promise<UmzugMigration[]> {
  const knex = checkOrm(orm);
  if (options === null || (typeof options !== 'object' && typeof options !== 'string'))
    throw new TypeError(
      'pg-migration-lock/mikro-orm: expected `options` to be MikroORM migrate options ({ from, to, migrations, lock }), a migration name or names',
    );
  const { lock, ...migrateOptions } =
    typeof options === 'string' || Array.isArray(options) ? { migrations: [options].flat() } : options;
  // Checked before anything is sent: a bad key fails here.
  return upLocked(orm, knex, migrateOptions, checkLock(lock as MikroOrmLockOptions | undefined, 'mikro-orm'));
}

/**
 * `up` once its arguments are checked. For a fleet: `before` runs on the locked session before MikroORM migrates,
 * and `source` (a fleet's pool) replaces the connection made from the ORM's settings.
 */
async function upLocked(
  orm: AnyOrm,
  knex: KnexLike,
  migrateOptions: MigrateOptions,
  locking: CheckedLock,
  before?: (query: Query) => Promise<void>,
  source?: ClientSource,
): Promise<UmzugMigration[]> {
  const migrator = orm.migrator;
  const settings = orm.config.get('migrations') ?? {};
  // Only then does MikroORM run everything in the one `transaction` it is given (Migrator#runMigrations).
  const onLockSession = settings.transactional !== false && settings.allOrNothing !== false;
  const result = await lockedRun(
    source ?? (await lockSource(knex)),
    locking,
    async ({ client, signal }: { client: pg.ClientBase; signal: AbortSignal }) => {
      await before?.(pgQuery(client));
      if (!onLockSession || migrateOptions.transaction) {
        // On MikroORM's pool, which a lost lock session does not stop: at least start no further migration once
        // the lock is gone (MikroORM's umzug awaits its `migrating` listeners before each migration).
        const stopIfLost = () => signal.throwIfAborted();
        migrator.on('migrating', stopIfLost);
        try {
          return await migrator.up(migrateOptions);
        } finally {
          migrator.off('migrating', stopIfLost);
        }
      }
      await afterCreate(knex, client);
      // A transaction of MikroORM's own knex on the lock session (knex leaves a connection it is given open):
      // MikroORM runs each migration in a savepoint of it and logs it there, then it commits, all on this session.
      // MikroORM writes its schema snapshot right after migrating, reading the schema through its pool: with the
      // transaction still open here, it would read the schema as it was, or wait for the locks the migrations
      // hold while they wait for it (a deadlock). So the snapshot is written after the commit instead.
      const snapshot = settings.snapshot !== false;
      const applied = await withoutSnapshot(settings, () =>
        knex.transaction((transaction) => migrator.up({ ...migrateOptions, transaction }), { connection: client }),
      );
      if (snapshot && applied.length > 0) await storeSnapshot(orm);
      return applied;
    },
    // Asked on the lock session before queueing, and at each release heard while waiting: with nothing pending,
    // no lock is taken. MikroORM's own check creates its table when missing, which replicas doing at once can
    // fail on: a missing table is read here as "everything pending" instead. MikroORM checks again under the lock.
    async ({ client }) => {
      // Migrations named explicitly always queue: MikroORM then applies them or throws for a name it cannot
      // apply (already executed, unknown), as a bare `orm.migrator.up()` would.
      const { from, to, migrations } = migrateOptions;
      if (from !== undefined || to !== undefined || migrations !== undefined) return true;
      const [row] = await pgQuery(client)<{ present: boolean }>('SELECT to_regclass($1) IS NOT NULL AS present', [
        migrationsTable(orm),
      ]);
      if (!row?.present) return true;
      return (await migrator.getPendingMigrations()).length > 0;
    },
  );
  return result === SKIPPED ? [] : result;
}

/**
 * The names of the migrations {@link up} would apply, in order (MikroORM's `getPendingMigrations()`), without taking
 * the lock. Like `mikro-orm migration:pending`, MikroORM creates its `mikro_orm_migrations` table if it is missing.
 *
 * @param orm an initialized MikroORM for PostgreSQL.
 * @example
 * import { pending } from 'pg-migration-lock/mikro-orm';
 * if ((await pending(orm)).length > 0) console.log('migrations are pending');
 */
export async function pending(orm: AnyOrm, _options?: MikroOrmUpOptions | string | string[]): Promise<string[]> {
  checkOrm(orm);
  return (await orm.migrator.getPendingMigrations()).map((migration) => migration.name);
}

function checkOrm(orm: AnyOrm): KnexLike {
  const o = orm as unknown as { config?: { get?: unknown }; em?: { getConnection?: () => unknown } } | null;
  if (o === null || typeof o !== 'object' || typeof o.config?.get !== 'function' || !o.em?.getConnection) {
    throw new TypeError(
      `pg-migration-lock/mikro-orm: expected an initialized MikroORM instance (await MikroORM.init(config)), got ${o === null ? 'null' : typeof o}`,
    );
  }
  const connection = o.em.getConnection() as { getKnex?: () => KnexLike };
  const knex = typeof connection?.getKnex === 'function' ? connection.getKnex() : undefined;
  if (knex?.client?.driverName !== 'pg') {
    throw new TypeError(
      `pg-migration-lock/mikro-orm: expected a MikroORM for PostgreSQL (@mikro-orm/postgresql), got ${knex?.client?.driverName ? `a '${knex.client.driverName}' driver` : 'another driver'}`,
    );
  }
  return knex;
}

/** `"schema"."mikro_orm_migrations"`: where MikroORM's migration storage keeps its rows (MigrationStorage#getTableName). */
function migrationsTable(orm: AnyOrm): string {
  const configured = orm.config.get('migrations')?.tableName ?? 'mikro_orm_migrations';
  const parts = configured.split('.');
  const table = parts.length > 1 ? parts[1]! : parts[0]!;
  const schema = parts.length > 1 ? parts[0]! : (orm.config.get('schema') ?? 'public');
  return `${quoteIdent(schema)}.${quoteIdent(table)}`;
}

/**
 * What {@link fleet} takes: the ORM's options (entities, `migrations`, …) as `MikroORM.init` takes them, whose
 * connection (`clientUrl`, `host`, `port`, `user`, `password`, `dbName`) each target replaces.
 */
export type MikroOrmFleetOptions = Omit<Options, 'clientUrl' | 'host' | 'port' | 'user' | 'password' | 'dbName'>;

/**
 * A fleet migrator for `migrateEach`: `orm.migrator.up()` on each target, under the target's lock, through a
 * MikroORM made of `options` for the target (`MikroORM.init` of `@mikro-orm/postgresql`; closed after).
 *
 * On a schema target (`{ url, schema }`): MikroORM's `schema` is the schema, so its `mikro_orm_migrations` table
 * lives there; the schema is created, under the lock, if it does not exist; and the lock session's `search_path`
 * is the schema, then `public`, so a migration's unqualified SQL lands there (with MikroORM's default
 * `allOrNothing`, which runs the migrations on that session).
 *
 * @param options the ORM's options without its connection (`entities`, `migrations`, `discovery`, …).
 * @example
 * import { migrateEach } from 'pg-migration-lock';
 * import { fleet } from 'pg-migration-lock/mikro-orm';
 * const migrator = fleet({ entities: [], discovery: { warnWhenNoEntities: false }, migrations: { path: 'dist/migrations' } });
 * await migrateEach(['tenant_1', 'tenant_2'].map((schema) => ({ url, schema })), migrator);
 */
export function fleet(options: MikroOrmFleetOptions = {}): FleetMigrator {
  checkFleetConfig('mikro-orm', options, 'options');
  const open = async (target: FleetTarget): Promise<AnyOrm> => {
    const { MikroORM: Orm } = await importPeer(
      'mikro-orm',
      '@mikro-orm/postgresql',
      () => import('@mikro-orm/postgresql'),
    );
    const connection = target.connection;
    const where =
      typeof connection === 'string'
        ? { clientUrl: connection }
        : {
            host: connection.host,
            port: connection.port,
            user: connection.user,
            password: connection.password as string | undefined,
            dbName: connection.database,
          };
    return (await Orm.init({
      ...(options as Options),
      ...where,
      ...(target.schema !== undefined && { schema: target.schema }),
      // A fleet opens one ORM per target at a time: it needs no more than a couple of connections.
      pool: { ...options.pool, min: 0, max: 2 },
    } as never)) as AnyOrm;
  };
  const close = (orm: AnyOrm) => orm.close(true);
  return {
    name: 'mikro-orm',
    // The migration list is the same for every target: read once, from the first target's ORM.
    appliedRule: (target) =>
      usingTarget(
        () => open(target),
        close,
        (orm) => mikroOrmAppliedRule(orm),
      ),
    pending: (target) =>
      usingTarget(
        () => open(target),
        close,
        (orm) => pending(orm),
      ),
    run: (target, lock, pool) =>
      usingTarget(
        () => open(target),
        close,
        async (orm) => {
          const { schema } = target;
          const before = schema === undefined ? undefined : (query: Query) => enterSchema(query, schema, true);
          const applied = await upLocked(orm, checkOrm(orm), {}, checkLock(lock, 'mikro-orm'), before, pool);
          return applied.map((migration) => migration.name);
        },
      ),
  };
}
