import type { CompiledQuery, Dialect, Kysely, PostgresDialect } from 'kysely';
import type pg from 'pg';
import {
  type AdapterLock,
  type AdapterLockOptions,
  adapterLock,
  checkFleetConfig,
  defaultKeyOf,
  enterSchema,
  type FleetMigrator,
  type FleetTarget,
  importPeer,
  lockedRun,
  type Query,
  type Session,
  type SessionSource,
  SKIPPED,
  targetConfig,
  usingTarget,
} from './kit.js';

/** kysely's own migration lock id (`pg_advisory_lock(3853314791062309107)` in its PostgresAdapter). */
export const KYSELY_LOCK_KEY: bigint = defaultKeyOf('kysely').key;

/**
 * The `lock` option of {@link Migrator}: the key, plus every option of `withMigrationLock`.
 * @example { timeoutMs: 5 * 60_000, logger: pino() }
 */
export interface KyselyLockOptions extends AdapterLockOptions {
  /**
   * The advisory-lock key (per database). The default is kysely's own migration lock id, so wrapped
   * runs and plain kysely runs (`kysely migrate latest`, kysely's own `Migrator`) exclude each other.
   * @default KYSELY_LOCK_KEY (3853314791062309107)
   */
  key?: AdapterLockOptions['key'];
}

// kysely's migrator types, written out: 0.28 exports them from 'kysely', 0.29 from 'kysely/migration' only,
// so importing either would leave the other version's users with `any`. The shapes are the same in both.

/** A migration, as kysely's `MigrationProvider` gives it. */
// biome-ignore-start lint/suspicious/noExplicitAny: kysely's own signatures, so any Kysely<DB> fits
export interface Migration {
  up(db: Kysely<any>): Promise<void>;
  down?(db: Kysely<any>): Promise<void>;
}

/** Where kysely's migrator gets its migrations (e.g. kysely's `FileMigrationProvider`). */
export interface MigrationProvider {
  getMigrations(): Promise<Record<string, Migration>>;
}

/** kysely's `MigratorProps` (0.28 and 0.29). */
export interface MigratorProps {
  readonly db: Kysely<any>;
  // biome-ignore-end lint/suspicious/noExplicitAny: (see above)
  readonly provider: MigrationProvider;
  readonly migrationTableName?: string;
  readonly migrationLockTableName?: string;
  readonly migrationTableSchema?: string;
  readonly allowUnorderedMigrations?: boolean;
  readonly nameComparator?: (name0: string, name1: string) => number;
  readonly disableTransactions?: boolean;
}

/** A migration and when it was executed (kysely's `MigrationInfo`). */
export interface MigrationInfo {
  name: string;
  migration: Migration;
  executedAt?: Date;
}

/** One migration's outcome (kysely's `MigrationResult`). */
export interface MigrationResult {
  readonly migrationName: string;
  readonly direction: 'Up' | 'Down';
  readonly status: 'Success' | 'Error' | 'NotExecuted';
}

/** What kysely's migrate methods return: `error` instead of throwing. */
export interface MigrationResultSet {
  readonly error?: unknown;
  readonly results?: MigrationResult[];
}

/** kysely's own `Migrator` props (`db`, `provider`, `migrationTableName`, …), plus `lock`. */
export type KyselyMigratorProps = MigratorProps & {
  /** How to take the lock, see {@link KyselyLockOptions}. @default {} */
  lock?: KyselyLockOptions;
};

/** kysely 0.29's per-call options (`disableTransactions`); 0.28 has none. */
export interface KyselyMigrateOptions {
  /** Overrides the `disableTransactions` prop for this call (kysely 0.29). */
  readonly disableTransactions?: boolean;
}

/** A row of kysely's migration table. */
type MigrationRow = { name: string; timestamp: string };

type KyselyMigrator = {
  getMigrations(): Promise<readonly MigrationInfo[]>;
  migrateToLatest(options?: KyselyMigrateOptions): Promise<MigrationResultSet>;
  migrateTo(target: string | { __noMigrations__: true }, options?: KyselyMigrateOptions): Promise<MigrationResultSet>;
  migrateUp(options?: KyselyMigrateOptions): Promise<MigrationResultSet>;
  migrateDown(options?: KyselyMigrateOptions): Promise<MigrationResultSet>;
};
type KyselyModules = {
  Migrator: new (props: MigratorProps) => KyselyMigrator;
  CompiledQuery: typeof CompiledQuery;
  Kysely: typeof Kysely;
  PostgresDialect: typeof PostgresDialect;
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
  readonly #lock: AdapterLock;

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
    this.#lock = adapterLock(lock, 'kysely');
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
      // One connection of db for the whole run: the lock is taken on it, and kysely's Migrator is given a
      // Kysely bound to it, so its own lock, its transactions and the migrations all run on that session.
      const result = await this.#props.db.connection().execute((conn) =>
        lockedRun(
          kyselySessionSource(conn, modules),
          this.#lock,
          async () => {
            await fleetBefore.get(this)?.(kyselyQuery(conn, modules));
            return migrate(new modules.Migrator({ ...this.#props, db: conn }));
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
      // kysely's migrate methods never throw: they return { error }. So do these, for lock errors too.
      return { error };
    }
  }
}

/** How often a waiter (which cannot hear releases through kysely) re-checks what is pending, without the lock. */
const RECHECK_EVERY_MS = 1_000;

/**
 * One connection of a Kysely instance as the core's session: every statement goes through kysely
 * (`CompiledQuery.raw`), so any kysely PostgreSQL dialect works (pg, postgres.js). It is the caller's
 * connection: never ended by us, kysely gives it back to its pool. kysely exposes neither the driver's
 * notifications nor its connection events: waiters poll every `pollIntervalMs` (no LISTEN), and a lost
 * session shows as the failing statement rather than at once.
 */
function kyselySessionSource(conn: Kysely<unknown>, modules: KyselyModules): SessionSource {
  const session: Session = {
    client: conn,
    kind: 'borrowed',
    query: kyselyQuery(conn, modules),
    onLost: () => () => {},
    release: async () => {},
    // kysely offers no way to cut its connection: a session that stopped answering is left to kysely.
    destroy: () => {},
  };
  return { reopenable: false, borrowed: conn, open: async () => session };
}

/** SQL on one connection of a Kysely instance, as the core's `Query`. */
function kyselyQuery(conn: Kysely<unknown>, { CompiledQuery }: KyselyModules): Query {
  return async <R>(sql: string, params: unknown[] = []) =>
    (await conn.executeQuery(CompiledQuery.raw(sql, params))).rows as R[];
}

function importKysely(): Promise<KyselyModules> {
  return importPeer('kysely', 'kysely', async () => {
    const kysely = await import('kysely');
    // kysely 0.29 moved the migrator to 'kysely/migration'; 0.28 has it in 'kysely'.
    const migration = await import('kysely/migration' as string).catch((err) => {
      if ((err as { code?: string }).code === 'ERR_PACKAGE_PATH_NOT_EXPORTED') return kysely;
      throw err;
    });
    return {
      Migrator: (migration as { Migrator: KyselyModules['Migrator'] }).Migrator,
      CompiledQuery: kysely.CompiledQuery,
      Kysely: kysely.Kysely,
      PostgresDialect: kysely.PostgresDialect,
    };
  });
}

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
  const open = async (target: FleetTarget, shared: pg.Pool | undefined, applicationName?: string) => {
    const [{ Kysely: KyselyClass, PostgresDialect: Postgres }, { default: pgModule }] = await Promise.all([
      importKysely(),
      import('pg'),
    ]);
    let pool = shared;
    if (!pool) {
      pool = new pgModule.Pool({ ...targetConfig(target, applicationName), max: 1 });
      // An idle connection that dies must not crash the process: the lock notices a lost session itself.
      pool.on('error', () => {});
    }
    const dialect = new Postgres({ pool });
    const db = new KyselyClass<unknown>({ dialect: target.schema === undefined ? dialect : withoutOwnLock(dialect) });
    // Destroying a Kysely ends its pool: not the run's shared one.
    return { db, close: () => (shared ? Promise.resolve() : db.destroy()) };
  };
  const on = (db: Kysely<unknown>, target: FleetTarget, lock?: AdapterLockOptions) =>
    new Migrator({ ...props, db, lock, ...(target.schema !== undefined && { migrationTableSchema: target.schema }) });
  return {
    name: 'kysely',
    pending: (target) =>
      usingTarget(
        () => open(target, undefined),
        (opened) => opened.close(),
        ({ db }) => on(db, target).pending(),
      ),
    run: (target, lock, shared) =>
      usingTarget(
        () => open(target, shared, lock.applicationName),
        (opened) => opened.close(),
        async ({ db }) => {
          const migrator = on(db, target, lock);
          const { schema } = target;
          if (schema !== undefined) fleetBefore.set(migrator, (query) => enterSchema(query, schema, true));
          const { error, results = [] } = await migrator.migrateToLatest();
          if (error) throw error;
          return results.filter((r) => r.status === 'Success').map((r) => r.migrationName);
        },
      ),
  };
}

/**
 * `dialect` without kysely's own migration lock: a fleet's schema target is locked by its own key, on the very
 * session kysely migrates on, and kysely's one key per database would queue the schemas behind one another.
 */
function withoutOwnLock(dialect: Dialect): Dialect {
  const none = { value: async () => {} };
  return {
    createDriver: () => dialect.createDriver(),
    createQueryCompiler: () => dialect.createQueryCompiler(),
    createIntrospector: (db) => dialect.createIntrospector(db),
    createAdapter: () =>
      Object.create(dialect.createAdapter(), { acquireMigrationLock: none, releaseMigrationLock: none }),
  };
}
