import type { runner as nodePgMigrateRunner, RunnerOption } from 'node-pg-migrate';
import type pg from 'pg';
import { missingMigrator } from '../src/errors.js';
import { type LockKeyInput, type MigrationLockOptions, withMigrationLock } from '../src/index.js';
import { lockRowsOf } from '../src/status.js';

/** node-pg-migrate's own lock key (`PG_MIGRATE_LOCK_ID`, the same in 8.x and 9.x). */
const PG_MIGRATE_LOCK_ID = 7241865325823964;

/**
 * The `lock` option of {@link runner}: the key, plus every option of `withMigrationLock`.
 * @example { timeoutMs: 5 * 60_000, hooks: { onWaiting: ({ holder }) => metrics.waiting(holder?.pid) } }
 */
export interface NodePgMigrateLockOptions extends MigrationLockOptions {
  /**
   * The advisory-lock key. The default is node-pg-migrate's own, so wrapped runs and plain `node-pg-migrate`
   * runs (CLI, other services) exclude each other; a plain run that finds it taken fails, a wrapped one waits.
   * Set `lockValue` (node-pg-migrate's option) rather than this, so both locks stay one.
   * @default options.lockValue ?? 7241865325823964
   */
  key?: LockKeyInput;
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
  const { key = options.lockValue ?? PG_MIGRATE_LOCK_ID, ...lockOptions } = lock ?? lockInOptions ?? {};
  const { dbClient, databaseUrl, ...rest } = runnerOptions as RunnerOption & {
    dbClient?: unknown;
    databaseUrl?: unknown;
  };
  const source = (dbClient ?? databaseUrl) as pg.ClientBase | pg.Pool | string | pg.ClientConfig | undefined;
  if (source == null)
    throw new TypeError('pg-migration-lock/node-pg-migrate: you must provide either a databaseUrl or a dbClient');
  const { runner: run } = await importNodePgMigrate();
  const ownLock = BigInt(options.lockValue ?? PG_MIGRATE_LOCK_ID);
  return withMigrationLock(
    source,
    key,
    async ({ client, key: lockKey }) => {
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
          await client
            .query(
              `SELECT pg_advisory_unlock(${ownLock}) FROM pg_locks WHERE ${lockRowsOf(ownLock, 1)} AND pid = pg_backend_pid()`,
            )
            .catch(() => {});
        }
        throw err;
      }
    },
    lockOptions,
  );
}

async function importNodePgMigrate(): Promise<{ runner: typeof nodePgMigrateRunner }> {
  try {
    return await import('node-pg-migrate');
  } catch (err) {
    if (!/MODULE_NOT_FOUND/.test((err as { code?: string }).code ?? '') || !String(err).includes("'node-pg-migrate'"))
      throw err;
    throw missingMigrator('node-pg-migrate', 'node-pg-migrate', err);
  }
}
