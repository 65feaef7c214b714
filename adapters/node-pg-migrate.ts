import type { runner as nodePgMigrateRunner, RunnerOption } from 'node-pg-migrate';
import type pg from 'pg';
import {
  type CheckedLock,
  type ClientSource,
  checkFleetConfig,
  checkLock,
  defaultKeyOf,
  type FleetMigrator,
  type FleetTarget,
  type KeyedLockOptions,
  lockedRun,
  namingMigration,
  pgQuery,
  type Query,
  SKIPPED,
  schemaEntry,
  tenantSearchPath,
  unlockIfHeldSql,
  withSession,
} from './kit.js';
import { nodePgMigrateAppliedRule } from './node-pg-migrate/applied.js';
import { importNodePgMigrate, toRun } from './node-pg-migrate/runner.js';
import { loggedStatement } from './node-pg-migrate/statement.js';

/** node-pg-migrate's own lock key (`PG_MIGRATE_LOCK_ID`, the same in 8.x and 9.x), from the key table. */
const PG_MIGRATE_LOCK_ID = defaultKeyOf('node-pg-migrate').key;

/**
 * The `lock` option of {@link runner}: the key, plus every option of `withMigrationLock`.
 * @example { timeoutMs: 5 * 60_000, hooks: { onWaiting: ({ holder }) => metrics.waiting(holder?.pid) } }
 */
export interface NodePgMigrateLockOptions extends KeyedLockOptions {
  /**
   * The advisory-lock key. The default is node-pg-migrate's own, so wrapped runs and plain `node-pg-migrate`
   * runs (CLI, other services) exclude each other; a plain run that finds it taken fails, a wrapped one waits.
   * Set `lockValue` (node-pg-migrate's option) rather than this, so both locks stay one.
   * @default options.lockValue ?? 7241865325823964
   */
  key?: KeyedLockOptions['key'];
}

/** node-pg-migrate's options with a `dbClient` that may also be a `pg.Pool` (one connection is checked out for the run). */
type WithPoolClient<O> = O extends { dbClient: unknown }
  ? Omit<O, 'dbClient'> & { dbClient: pg.ClientBase | pg.Pool }
  : O;

/** node-pg-migrate's own `runner` options (`dbClient` may be a `pg.Pool` too), plus `lock`. */
export type NodePgMigrateRunnerOption = WithPoolClient<RunnerOption> & {
  /** How to take the lock, see {@link NodePgMigrateLockOptions}. @default {} */
  lock?: NodePgMigrateLockOptions;
};

/** What node-pg-migrate's `runner` resolves to: the migrations it ran. */
export type RunMigrationResult = Awaited<ReturnType<typeof nodePgMigrateRunner>>;

/**
 * node-pg-migrate's `runner(options)` under a PostgreSQL advisory lock: while another run migrates, this
 * one waits (where plain node-pg-migrate fails with "Another migration is already running"), then runs
 * what is still pending. The migration runs on the session that holds the lock (as `dbClient`), so lock
 * and migration share fate; node-pg-migrate's own lock on that session is re-entrant.
 *
 * @param options node-pg-migrate's `runner` options (`databaseUrl` or `dbClient`, `dir`, `direction`,
 *   `migrationsTable`, …) plus `lock`. With `dbClient`, that client holds the lock; a `pg.Pool` is fine too.
 * @param lock the lock options, if you prefer them out of `options`; they win over `options.lock`.
 * @returns the runner's result: the migrations that ran.
 *
 * @example
 * // before: import { runner } from 'node-pg-migrate';
 * import { runner } from 'pg-migration-lock/node-pg-migrate';
 * await runner({ databaseUrl, dir: 'migrations', direction: 'up', migrationsTable: 'pgmigrations' });
 * // with lock options: runner({ …, lock: { timeoutMs: 5 * 60_000 } })
 */
export async function runner(
  options: NodePgMigrateRunnerOption,
  lock?: NodePgMigrateLockOptions,
): Promise<RunMigrationResult> {
  if (options === null || typeof options !== 'object')
    throw new TypeError('pg-migration-lock/node-pg-migrate: expected runner options');
  const { lock: lockInOptions, ...runnerOptions } = options;
  const ownLock = BigInt(options.lockValue ?? PG_MIGRATE_LOCK_ID);
  return runLocked(runnerOptions as RunnerOption, checkLock(lock ?? lockInOptions, 'node-pg-migrate', ownLock));
}

/** `runner` once its lock is checked; a fleet's `before` runs on the locked session before node-pg-migrate does. */
async function runLocked(
  runnerOptions: RunnerOption,
  locking: CheckedLock,
  before?: (query: Query) => Promise<void>,
): Promise<RunMigrationResult> {
  const ownLock = BigInt(runnerOptions.lockValue ?? PG_MIGRATE_LOCK_ID);
  const { dbClient, databaseUrl, ...rest } = runnerOptions as RunnerOption & {
    dbClient?: unknown;
    databaseUrl?: unknown;
  };
  const source = (dbClient ?? databaseUrl) as ClientSource | undefined;
  if (source == null)
    throw new TypeError('pg-migration-lock/node-pg-migrate: you must provide either a databaseUrl or a dbClient');
  const { runner: run, PG_MIGRATE_LOCK_ID: since8 } = await importNodePgMigrate();
  // 7.x always locks its own key: a lockValue would lock another one here while it takes its own.
  if (since8 === undefined && runnerOptions.lockValue !== undefined) {
    throw new TypeError(
      'pg-migration-lock/node-pg-migrate: `lockValue` needs node-pg-migrate 8 or later (7.x always locks 7241865325823964)',
    );
  }
  const result = await lockedRun(
    source,
    locking,
    async ({ client, key: lockKey }: { client: pg.ClientBase; key: bigint }) => {
      await before?.(pgQuery(client));
      // Holding node-pg-migrate's own key already, its own (re-entrant) lock would add nothing but a hold
      // that a failed run cannot release (its unlock then runs in an aborted transaction).
      const noLock = rest.noLock || lockKey === ownLock;
      try {
        return await run({ ...(rest as RunnerOption), noLock, dbClient: client as never });
      } catch (err) {
        // node-pg-migrate leaves a failed migration's transaction open on a dbClient it was given: roll it
        // back, and drop its own lock if its unlock failed there, so the session can be given back clean.
        await client.query('ROLLBACK').catch(() => {});
        if (!noLock) {
          await client.query(unlockIfHeldSql(ownLock)).catch(() => {});
        }
        throw err;
      }
    },
    // Nothing to run: what runner returns for a no-op, without queueing for the lock.
    async ({ client }) => (await toRun(client, rest as RunnerOption)).length > 0,
  );
  return result === SKIPPED ? [] : result;
}

/**
 * The migrations `runner(options)` would run now, by name, in the order it would run them (for
 * `direction: 'down'`, the ones it would revert), with the same errors: its file filtering and ordering
 * (`dir`, `ignorePattern`, `useGlob`, and in 9.x its migration loaders), `checkOrder` ("Not run migration …
 * is preceding already run migration …"), `count`, `timestamp` and `file`. Unlike `runner`, it creates
 * nothing (no schema, no migrations table) and takes no lock.
 *
 * @param options the options you give {@link runner} (`databaseUrl` or `dbClient`, `dir`, `migrationsTable`, …).
 * @returns the names of the pending migrations (`[]` when up to date).
 *
 * @example
 * import { pending } from 'pg-migration-lock/node-pg-migrate';
 * const names = await pending({ databaseUrl, dir: 'migrations', direction: 'up', migrationsTable: 'pgmigrations' });
 */
export async function pending(options: NodePgMigrateRunnerOption): Promise<string[]> {
  const { runnerOptions, source } = checkOptions(options);
  return withSession(source, (session) => toRun(session.client as pg.ClientBase, runnerOptions));
}

function checkOptions(options: NodePgMigrateRunnerOption) {
  if (options === null || typeof options !== 'object')
    throw new TypeError('pg-migration-lock/node-pg-migrate: expected runner options');
  const { lock: _lock, ...runnerOptions } = options;
  const { dbClient, databaseUrl } = runnerOptions as { dbClient?: unknown; databaseUrl?: unknown };
  const source = (dbClient ?? databaseUrl) as ClientSource | undefined;
  if (source == null)
    throw new TypeError('pg-migration-lock/node-pg-migrate: you must provide either a databaseUrl or a dbClient');
  return { runnerOptions: runnerOptions as RunnerOption, source };
}

/** What {@link fleet} takes: node-pg-migrate's `runner` options, without the connection (each target gives it). */
export type NodePgMigrateFleetOptions = Omit<Extract<RunnerOption, { databaseUrl: unknown }>, 'databaseUrl'> & {
  databaseUrl?: never;
  dbClient?: never;
};

/**
 * A fleet migrator for `migrateEach`: node-pg-migrate's `runner(options)` on each target (as `databaseUrl`, or
 * for a schema target, a connection of the pool the run shares among the schemas of that database, as
 * `dbClient`), under the target's lock. On a database target its default key is node-pg-migrate's own (`options.lockValue`,
 * else `7241865325823964`), so plain node-pg-migrate runs on that database wait for it too.
 *
 * On a schema target (`{ url, schema }`): node-pg-migrate's `schema` is `[schema, 'public']`, so it sets
 * `search_path` to the schema first (unqualified names land there) and keeps its `pgmigrations` table there
 * (`migrationsSchema` is the schema); its own lock is off (`noLock`: its one key per database would make the
 * schemas of a database fail each other with "Another migration is already running"; the fleet's key of the
 * schema stands in for it); and the schema is created, under the lock, if it does not exist.
 *
 * @param options node-pg-migrate's runner options (`dir`, `direction`, `migrationsTable`, …) without `databaseUrl`.
 * @example
 * import { migrateEach } from 'pg-migration-lock';
 * import { fleet } from 'pg-migration-lock/node-pg-migrate';
 * const tenants = ['postgres://db1/acme', 'postgres://db1/globex'];
 * await migrateEach(tenants, fleet({ dir: 'migrations', direction: 'up', migrationsTable: 'pgmigrations' }));
 */
export function fleet(options: NodePgMigrateFleetOptions): FleetMigrator {
  checkFleetConfig('node-pg-migrate', options, 'runnerOptions');
  const ownLock = BigInt(options.lockValue ?? PG_MIGRATE_LOCK_ID);
  const on = (target: FleetTarget, pool?: pg.Pool): RunnerOption => {
    const { schema } = target;
    const perSchema = schema !== undefined && {
      schema: tenantSearchPath(schema),
      migrationsSchema: schema,
      noLock: true,
    };
    const connection = pool ? { dbClient: pool } : { databaseUrl: target.connection };
    return { ...options, ...connection, ...perSchema } as RunnerOption;
  };
  return {
    name: 'node-pg-migrate',
    key: ownLock,
    pending: (target) => pending(on(target)),
    appliedRule: (target) => nodePgMigrateAppliedRule(on(target)),
    run: async (target, lock, pool) => {
      const locking = checkLock(lock, 'node-pg-migrate', ownLock);
      // node-pg-migrate names the migration it runs only in its log: kept (with a logger given) for the error.
      let current: string | undefined;
      let statement: string | undefined;
      const options = on(target, pool);
      const { logger } = options;
      if (logger) {
        options.logger = {
          ...logger,
          info: (message: string) => {
            current = /^### MIGRATION (.+) \(UP\) ###$/.exec(message)?.[1] ?? current;
            logger.info(message);
          },
          error: (message: string) => {
            statement ??= loggedStatement(message);
            logger.error(message);
          },
        };
      }
      try {
        const ran = await runLocked(options, locking, schemaEntry(target, false));
        return ran.map((migration) => migration.name);
      } catch (err) {
        throw namingMigration(err, current, statement);
      }
    },
  };
}
