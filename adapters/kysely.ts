import type { CompiledQuery, Kysely } from 'kysely';
// kysely 0.29's home of the migrator types (0.28 has them in 'kysely' itself; the shapes are the same).
import type { MigrationInfo, MigrationResultSet, MigratorProps } from 'kysely/migration';
import { missingMigrator } from '../src/errors.js';
import type { LockKeyInput, MigrationLockOptions } from '../src/index.js';
import { parseKey } from '../src/key.js';
import { SKIPPED, withMigrationLockUnless } from '../src/lock.js';
import type { Session, SessionSource } from '../src/session.js';

/** kysely's own migration lock id (`pg_advisory_lock(3853314791062309107)` in its PostgresAdapter). */
export const KYSELY_LOCK_KEY = 3853314791062309107n;

/**
 * The `lock` option of {@link Migrator}: the key, plus every option of `withMigrationLock`.
 * @example { timeoutMs: 5 * 60_000, logger: pino() }
 */
export interface KyselyLockOptions extends MigrationLockOptions {
  /**
   * The advisory-lock key (per database). The default is kysely's own migration lock id, so wrapped
   * runs and plain kysely runs (`kysely migrate latest`, kysely's own `Migrator`) exclude each other.
   * @default KYSELY_LOCK_KEY (3853314791062309107)
   */
  key?: LockKeyInput;
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
};

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
  readonly #lock: KyselyLockOptions;

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
    if (lock === null || typeof lock !== 'object')
      throw new TypeError('pg-migration-lock/kysely: expected `lock` to be an object');
    // A bad key fails here, not as a migrate result later.
    const { key = KYSELY_LOCK_KEY, ...lockOptions } = lock;
    this.#props = migratorProps;
    this.#lock = { ...lockOptions, key: parseKey(key) };
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
    const tables = await db.introspection.getTables({ withInternalKyselyTables: true });
    const exists = tables.some(
      (t) => t.name === migrationTableName && (!migrationTableSchema || t.schema === migrationTableSchema),
    );
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
    const { key = KYSELY_LOCK_KEY, ...lockOptions } = this.#lock;
    try {
      // One connection of db for the whole run: the lock is taken on it, and kysely's Migrator is given a
      // Kysely bound to it, so its own lock, its transactions and the migrations all run on that session.
      const result = await this.#props.db.connection().execute((conn) =>
        withMigrationLockUnless(
          kyselySessionSource(conn, modules, upOnly),
          key,
          () => migrate(new modules.Migrator({ ...this.#props, db: conn })),
          lockOptions,
          // Checked on the lock session before queueing (and at each release, where the session can hear
          // one): with nothing pending, no lock is taken. kysely checks again under the lock, so this only
          // saves waits; a check that fails (corrupted migrations) is left for kysely to report, as it would.
          async (session: Kysely<unknown>) =>
            upOnly && (await this.#pending(session).catch(() => undefined))?.length === 0,
        ),
      );
      return result === SKIPPED ? { results: [] } : result;
    } catch (error) {
      // kysely's migrate methods never throw: they return { error }. So do these, for lock errors too.
      return { error };
    }
  }
}

/** How often a waiter that cannot hear releases re-checks what is pending (without the lock). */
const RECHECK_EVERY_MS = 1_000;

/**
 * One connection of a Kysely instance as the core's session: every statement goes through kysely
 * (`CompiledQuery.raw`), so any kysely PostgreSQL dialect works (pg, postgres.js). It is the caller's
 * connection: never ended by us, kysely gives it back to its pool. kysely exposes neither the driver's
 * notifications nor its connection events: waiters poll every `pollIntervalMs` (no LISTEN), and a lost
 * session shows as the failing statement rather than at once.
 *
 * WORKAROUND (the core asks `isDone` only when it hears a release): with `recheck`, the session's
 * `listen` cannot hear releases either, so it reports one every RECHECK_EVERY_MS instead. A waiter then
 * re-checks what is pending about once a second, and leaves without the lock once another replica has
 * migrated, instead of taking the lock in turn to find nothing to do.
 */
function kyselySessionSource(conn: Kysely<unknown>, { CompiledQuery }: KyselyModules, recheck: boolean): SessionSource {
  const listen: Session['listen'] = async (_channel, onPayload) => {
    const timer = setInterval(() => onPayload(''), RECHECK_EVERY_MS);
    return async () => clearInterval(timer);
  };
  const session: Session = {
    ...(recheck ? { listen } : {}),
    client: conn,
    kind: 'borrowed',
    async query<R>(sql: string, params: unknown[] = []) {
      return (await conn.executeQuery(CompiledQuery.raw(sql, params))).rows as R[];
    },
    onLost: () => () => {},
    release: async () => {},
    // kysely offers no way to cut its connection: a session that stopped answering is left to kysely.
    destroy: () => {},
  };
  return { reopenable: false, borrowed: conn, open: async () => session };
}

async function importKysely(): Promise<KyselyModules> {
  try {
    const kysely = await import('kysely');
    // kysely 0.29 moved the migrator to 'kysely/migration'; 0.28 has it in 'kysely'.
    const migration = await import('kysely/migration' as string).catch((err) => {
      if ((err as { code?: string }).code === 'ERR_PACKAGE_PATH_NOT_EXPORTED') return kysely;
      throw err;
    });
    return {
      Migrator: (migration as { Migrator: KyselyModules['Migrator'] }).Migrator,
      CompiledQuery: kysely.CompiledQuery,
    };
  } catch (err) {
    if (!/MODULE_NOT_FOUND/.test((err as { code?: string }).code ?? '') || !String(err).includes("'kysely")) throw err;
    throw missingMigrator('kysely', 'kysely', err);
  }
}
