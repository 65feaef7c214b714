import type { Kysely } from 'kysely';
import {
  type CheckedLock,
  checkFleetConfig,
  checkLock,
  defaultKeyOf,
  type FleetMigrator,
  type FleetTarget,
  fleetMigrator,
  type KeyedLockOptions,
  lockedRun,
  namingMigration,
  type Query,
  rejectingLockTimeout,
  resultOfFailure,
  SKIPPED,
  schemaEntry,
} from './kit.js';
import { kyselyAppliedRule } from './kysely/applied.js';
import { failedStatements, fleetKysely, importKysely, kyselyQuery, kyselySessionSource } from './kysely/session.js';
import type {
  KyselyMigrateOptions,
  KyselyMigrator,
  MigrationInfo,
  MigrationResultSet,
  MigrationRow,
  MigratorProps,
} from './kysely/types.js';

export type {
  KyselyMigrateOptions,
  Migration,
  MigrationInfo,
  MigrationProvider,
  MigrationResult,
  MigrationResultSet,
  MigratorProps,
} from './kysely/types.js';

/** kysely's own migration lock id (`pg_advisory_lock(3853314791062309107)` in its PostgresAdapter). */
export const KYSELY_LOCK_KEY: bigint = defaultKeyOf('kysely').key;

/**
 * The `lock` option of {@link Migrator}: the key, plus every option of `withMigrationLock`.
 * @example { timeoutMs: 5 * 60_000, logger: pino() }
 */
export interface KyselyLockOptions extends KeyedLockOptions {
  /**
   * The advisory-lock key (per database). The default is kysely's own migration lock id, so wrapped
   * runs and plain kysely runs (`kysely migrate latest`, kysely's own `Migrator`) exclude each other.
   * @default KYSELY_LOCK_KEY (3853314791062309107)
   */
  key?: KeyedLockOptions['key'];
}

/** kysely's own `Migrator` props (`db`, `provider`, `migrationTableName`, …), plus `lock`. */
export type KyselyMigratorProps = MigratorProps & {
  /** How to take the lock, see {@link KyselyLockOptions}. @default {} */
  lock?: KyselyLockOptions;
};

/** What a fleet runs on a Migrator's locked session before kysely migrates (see {@link fleet}). */
const fleetBefore = new WeakMap<Migrator, (query: Query) => Promise<void>>();

/**
 * kysely's `Migrator` under a PostgreSQL advisory lock: replicas that start at once apply each migration
 * once, one after the other. Same props and methods as kysely's own, plus `lock`; every method returns
 * kysely's `{ error, results }` (a lock error, e.g. a timeout, comes back as `error`, like kysely's).
 *
 * The migration runs on one connection of `db` that holds the lock: kysely's own `pg_advisory_lock` on
 * that session is then re-entrant and instant. Replicas wait by polling `pg_try_advisory_lock` instead of
 * blocking inside the server (kysely's own way), so a `CREATE INDEX CONCURRENTLY` migration
 * (`disableTransactions: true`) no longer ends in "deadlock detected". A replica that finds nothing
 * pending (`migrateToLatest`, `migrateUp`) returns `{ results: [] }` without queueing for the lock.
 *
 * @example
 * // before: import { Migrator } from 'kysely' (0.28) or 'kysely/migration' (0.29)
 * import { Migrator } from 'pg-migration-lock/kysely';
 * const migrator = new Migrator({ db, provider: new FileMigrationProvider({ fs, path, migrationFolder }) });
 * const { error, results } = await migrator.migrateToLatest();
 */
export class Migrator {
  readonly #props: MigratorProps;
  readonly #lock: CheckedLock;

  constructor(props: KyselyMigratorProps) {
    if (props === null || typeof props !== 'object')
      throw new TypeError('pg-migration-lock/kysely: expected Migrator props ({ db, provider })');
    const { lock = {}, ...migratorProps } = props;
    const db = migratorProps.db as { connection?: unknown; getExecutor?: unknown } | undefined;
    if (typeof db?.connection !== 'function' || typeof db.getExecutor !== 'function') {
      throw new TypeError('pg-migration-lock/kysely: expected `db` to be a Kysely instance (new Kysely({ dialect }))');
    }
    if ((db as { isTransaction?: boolean }).isTransaction) {
      // A lock waited for inside a transaction would keep it open, and CREATE INDEX CONCURRENTLY in
      // another session waits for every open transaction: the very deadlock the lock exists to avoid.
      throw new TypeError(
        'pg-migration-lock/kysely: pass the Kysely instance as `db`, not a transaction: the lock takes one of its connections for the whole run',
      );
    }
    if (typeof migratorProps.provider?.getMigrations !== 'function') {
      throw new TypeError(
        'pg-migration-lock/kysely: expected `provider` to be a MigrationProvider (e.g. new FileMigrationProvider(…))',
      );
    }
    // A bad key fails here, not as a migrate result later.
    this.#lock = checkLock(lock, 'kysely');
    this.#props = migratorProps;
  }

  /** kysely's `getMigrations()`: every migration and when it was executed. Takes no lock. */
  async getMigrations(): Promise<readonly MigrationInfo[]> {
    const { Migrator: KyselyMigrator } = await importKysely();
    return new KyselyMigrator(this.#props).getMigrations();
  }

  /**
   * The names of the migrations `migrateToLatest()` would run, in order, without taking the lock and
   * without changing anything (no table is created). Rejects like kysely does when the executed
   * migrations do not fit the provider's ("corrupted migrations: …").
   */
  pending(): Promise<string[]> {
    return this.#pending(this.#props.db);
  }

  async #pending(anyDb: Kysely<unknown>): Promise<string[]> {
    const db = anyDb as Kysely<Record<string, MigrationRow>>;
    const { provider, migrationTableName = 'kysely_migration', migrationTableSchema } = this.#props;
    const names = Object.keys(await provider.getMigrations()).sort();
    // kysely's own test (its introspector's getTables: a table, view or foreign table of that name in a schema
    // it may use, or in `migrationTableSchema`), asked of that one table rather than of every column of the database.
    const [found] = await kyselyQuery(anyDb, await importKysely())(
      `SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
       WHERE c.relname = $1 AND c.relkind IN ('r', 'v', 'p', 'f') AND ns.nspname !~ '^pg_'
         AND ns.nspname NOT IN ('information_schema', 'crdb_internal') AND has_schema_privilege(ns.nspname, 'USAGE')
         AND ($2::text IS NULL OR ns.nspname = $2) LIMIT 1`,
      [migrationTableName, migrationTableSchema ?? null],
    );
    const exists = found !== undefined;
    const rows: MigrationRow[] = exists
      ? await (migrationTableSchema ? db.withSchema(migrationTableSchema) : db)
          .selectFrom(migrationTableName)
          .select(['name', 'timestamp'])
          .execute()
      : [];
    // kysely's order of executed migrations: by timestamp, then by name.
    const compare = this.#props.nameComparator ?? ((a: string, b: string) => a.localeCompare(b));
    const executedAt = ({ name, timestamp }: MigrationRow) => {
      const at = new Date(timestamp).getTime();
      if (Number.isNaN(at)) {
        throw new Error(
          `corrupted migrations: previously executed migration ${name} has an invalid timestamp ${timestamp}`,
        );
      }
      return at;
    };
    const executed = rows
      .sort((a, b) => executedAt(a) - executedAt(b) || compare(a.name, b.name))
      .map((row) => row.name);
    for (const name of executed) {
      if (!names.includes(name))
        throw new Error(`corrupted migrations: previously executed migration ${name} is missing`);
    }
    if (!this.#props.allowUnorderedMigrations) {
      executed.forEach((name, i) => {
        if (names[i] !== name) {
          throw new Error(
            `corrupted migrations: expected previously executed migration ${name} to be at index ${i} but ${names[i]} was found in its place. New migrations must always have a name that comes alphabetically after the last executed migration.`,
          );
        }
      });
    }
    return names.filter((name) => !executed.includes(name));
  }

  /** kysely's `migrateToLatest()`, under the lock. */
  migrateToLatest(options?: KyselyMigrateOptions): Promise<MigrationResultSet> {
    return this.#run((m) => m.migrateToLatest(options), true);
  }

  /** kysely's `migrateTo(name)` (or `NO_MIGRATIONS` to migrate all the way down), under the lock. */
  migrateTo(targetMigrationName: string | { __noMigrations__: true }, options?: KyselyMigrateOptions) {
    return this.#run((m) => m.migrateTo(targetMigrationName, options), false);
  }

  /** kysely's `migrateUp()`: the next pending migration, under the lock. */
  migrateUp(options?: KyselyMigrateOptions): Promise<MigrationResultSet> {
    return this.#run((m) => m.migrateUp(options), true);
  }

  /** kysely's `migrateDown()`: undoes the last executed migration, under the lock. */
  migrateDown(options?: KyselyMigrateOptions): Promise<MigrationResultSet> {
    return this.#run((m) => m.migrateDown(options), false);
  }

  async #run(
    migrate: (m: KyselyMigrator) => Promise<MigrationResultSet>,
    upOnly: boolean,
  ): Promise<MigrationResultSet> {
    const modules = await importKysely();
    try {
      // One connection of db for the run: the lock, kysely's own lock, its transactions and the migrations all run
      // on it. kysely returns its errors: a lock timeout is rejected, so that the core tries again (lockRetries).
      const result = await this.#props.db.connection().execute((conn) =>
        lockedRun(
          kyselySessionSource(conn, modules),
          this.#lock,
          async () => {
            await fleetBefore.get(this)?.(kyselyQuery(conn, modules));
            return rejectingLockTimeout(await migrate(new modules.Migrator({ ...this.#props, db: conn })));
          },
          // Checked on the lock session before queueing, and while waiting every RECHECK_EVERY_MS (this session
          // cannot hear releases): with nothing pending, no lock is taken. kysely checks again under the lock, so
          // this only saves waits; a check that fails (corrupted migrations) is left for kysely to report.
          async ({ client }: { client: Kysely<unknown> }) =>
            !upOnly || (await this.#pending(client).catch(() => undefined))?.length !== 0,
          upOnly ? RECHECK_EVERY_MS : undefined,
        ),
      );
      return result === SKIPPED ? { results: [] } : result;
    } catch (error) {
      // kysely's migrate methods never throw: they return { error } (with results). So do these, for lock errors too.
      return resultOfFailure<MigrationResultSet>(error);
    }
  }
}

/** How often a waiter (which cannot hear releases through kysely) re-checks what is pending, without the lock. */
const RECHECK_EVERY_MS = 1_000;

/** What {@link fleet} takes: kysely's `Migrator` props (`provider`, `migrationTableName`, …) without `db`. */
export type KyselyFleetProps = Omit<MigratorProps, 'db'> & { db?: never };

/**
 * A fleet migrator for `migrateEach`: kysely's `migrateToLatest()` on each target, under the target's lock,
 * through a Kysely made for the target (`PostgresDialect` over a `pg.Pool` of one connection, destroyed after, or
 * for a schema target the pool the run shares among the schemas of that database).
 * Resolves to the names kysely applied; a migration's error rejects (kysely's `{ error }`).
 *
 * On a schema target (`{ url, schema }`): `migrationTableSchema` is the schema, so `kysely_migration` and
 * `kysely_migration_lock` live there; the schema is created, under the lock, if it does not exist; the session's
 * `search_path` is the schema, then `public`, so unqualified `db.schema.createTable()` lands in the schema; and
 * kysely's own migration lock (one `pg_advisory_lock` per database) is left out, or the schemas of a database
 * would queue behind one another inside the server: the fleet's key of the schema stands in for it.
 *
 * A database whose tenants' schemas hold kysely tables, migrated as a target of its own too: set
 * `migrationTableSchema` (e.g. `'public'`, it applies to database targets). Without it kysely looks for
 * `kysely_migration` by name in every schema, finds a tenant's, and fails ("relation does not exist").
 *
 * @param props kysely's Migrator props without `db`: `provider` (e.g. a `FileMigrationProvider`), ….
 * @example
 * import { promises as fs } from 'node:fs';
 * import path from 'node:path';
 * import { FileMigrationProvider } from 'kysely';
 * import { migrateEach } from 'pg-migration-lock';
 * import { fleet } from 'pg-migration-lock/kysely';
 * const provider = new FileMigrationProvider({ fs, path, migrationFolder: path.resolve('migrations') });
 * await migrateEach(['postgres://db1/acme', 'postgres://db1/globex'], fleet({ provider }));
 */
export function fleet(props: KyselyFleetProps): FleetMigrator {
  checkFleetConfig('kysely', props, '{ provider }');
  if (typeof props.provider?.getMigrations !== 'function') {
    throw new TypeError('pg-migration-lock/kysely: expected fleet({ provider }) to get a MigrationProvider');
  }
  const on = (db: Kysely<unknown>, target: FleetTarget, lock?: KeyedLockOptions) =>
    new Migrator({ ...props, db, lock, ...(target.schema !== undefined && { migrationTableSchema: target.schema }) });
  return fleetMigrator<Kysely<unknown>>({
    name: 'kysely',
    open: (target, shared, lock) => fleetKysely(target, shared, lock?.applicationName),
    // Destroying a Kysely ends its pool: not the run's shared one.
    close: async (db, shared) => shared === undefined && (await db.destroy()),
    pending: (db, target) => on(db, target).pending(),
    appliedRule: () => kyselyAppliedRule(props),
    run: async (db, target, lock) => {
      // The lock is checked already: the Migrator takes it as it is, label included.
      const migrator = on(db, target, { ...lock.options, key: lock.key });
      const before = schemaEntry(target, true);
      if (before) fleetBefore.set(migrator, before);
      const { error, results = [] } = await migrator.migrateToLatest();
      const failed = results.find((r) => r.status === 'Error')?.migrationName;
      if (error) throw namingMigration(error, failed, failedStatements.get(db)?.sql);
      return results.filter((r) => r.status === 'Success').map((r) => r.migrationName);
    },
  });
}
