import { readdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Migration, runner as nodePgMigrateRunner, RunnerOption } from 'node-pg-migrate';
import type pg from 'pg';
import {
  type AdapterLock,
  type AdapterLockOptions,
  adapterLock,
  type ClientSource,
  checkFleetConfig,
  defaultKeyOf,
  enterSchema,
  type FleetMigrator,
  type FleetTarget,
  importPeer,
  lockedRun,
  pgQuery,
  type Query,
  quoteIdent,
  SKIPPED,
  tenantSearchPath,
  unlockIfHeldSql,
  withSession,
} from './kit.js';

/** node-pg-migrate's own lock key (`PG_MIGRATE_LOCK_ID`, the same in 8.x and 9.x), from the key table. */
const PG_MIGRATE_LOCK_ID = defaultKeyOf('node-pg-migrate').key;

// node-pg-migrate's `loadMigrations` and helpers live in a module tree of their own beside its bundle,
// which takes ~90 ms to load cold. Loading starts when this adapter is imported (whoever imports it uses
// node-pg-migrate), so a replica's first call does not pay for it; a missing module is `undefined` here
// and reported where it is needed.
const runnerModules = Promise.all([
  import('node-pg-migrate/runner').catch(() => undefined),
  import('node-pg-migrate/utils/index').catch(() => undefined),
]);

/**
 * The `lock` option of {@link runner}: the key, plus every option of `withMigrationLock`.
 * @example { timeoutMs: 5 * 60_000, hooks: { onWaiting: ({ holder }) => metrics.waiting(holder?.pid) } }
 */
export interface NodePgMigrateLockOptions extends AdapterLockOptions {
  /**
   * The advisory-lock key. The default is node-pg-migrate's own, so wrapped runs and plain `node-pg-migrate`
   * runs (CLI, other services) exclude each other; a plain run that finds it taken fails, a wrapped one waits.
   * Set `lockValue` (node-pg-migrate's option) rather than this, so both locks stay one.
   * @default options.lockValue ?? 7241865325823964
   */
  key?: AdapterLockOptions['key'];
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
  return runLocked(runnerOptions as RunnerOption, adapterLock(lock ?? lockInOptions, 'node-pg-migrate', ownLock));
}

/** `runner` once its lock is checked; a fleet's `before` runs on the locked session before node-pg-migrate does. */
async function runLocked(
  runnerOptions: RunnerOption,
  locking: AdapterLock,
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
  const { runner: run } = await importNodePgMigrate();
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

interface MigrationLike {
  name: string;
  timestamp: number;
}

/**
 * node-pg-migrate's own steps before it runs anything (runner.ts: loadMigrations, getRunMigrations, checkOrder,
 * getMigrationsToRun), minus ensureMigrationsTable: a missing table means nothing has run. Loading and
 * naming migrations is node-pg-migrate's code; the three small steps it does not export are repeated here.
 */
async function toRun(client: pg.ClientBase, options: RunnerOption): Promise<string[]> {
  const { migrations, schema, table } = await loadMigrationList(options);
  const { migrationsTable } = options;
  const tables = await client.query(
    'SELECT table_name FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2',
    [schema, migrationsTable],
  );
  let runNames: string[] = [];
  if (tables.rowCount === 1) {
    runNames = (await client.query(`SELECT name FROM ${table} ORDER BY run_on, id`)).rows.map((row) => row.name);
  }
  if (options.checkOrder !== false) {
    for (let i = 0; i < Math.min(runNames.length, migrations.length); i += 1) {
      if (runNames[i] !== migrations[i]!.name) {
        throw new Error(`Not run migration ${migrations[i]!.name} is preceding already run migration ${runNames[i]}`);
      }
    }
  }
  if (options.direction === 'down') {
    const down = runNames
      .filter((name) => !options.file || options.file === name)
      .map((name) => migrations.find((migration) => migration.name === name) ?? name);
    const count = options.count ?? 1;
    const picked = (
      options.timestamp
        ? down.filter((migration) => typeof migration === 'object' && migration.timestamp >= count)
        : down.slice(-Math.abs(count))
    ).reverse();
    const deleted = picked.filter((migration) => typeof migration === 'string');
    if (deleted.length > 0) throw new Error(`Definitions of migrations ${deleted.join(', ')} have been deleted.`);
    return picked.map((migration) => (migration as MigrationLike).name);
  }
  const up = migrations.filter(({ name }) => !runNames.includes(name) && (!options.file || options.file === name));
  const count = options.count ?? Number.POSITIVE_INFINITY;
  return (options.timestamp ? up.filter(({ timestamp }) => timestamp <= count) : up.slice(0, Math.abs(count))).map(
    ({ name }) => name,
  );
}

/**
 * The migrations as node-pg-migrate's runner sees them, and its table name. 9.x exports `loadMigrations`
 * (which loads the files through its configurable loaders) and its helpers as modules of their own. 8.x's
 * such modules do not load (they import a ./utils.js it does not ship), so for 8.x its directory listing
 * (getMigrationFilePaths, not exported) is repeated, naming and dating each file with its own `Migration`.
 */
async function loadMigrationList(options: RunnerOption) {
  const { Migration } = await importNodePgMigrate();
  const logger =
    options.logger ??
    (options.log ? { debug: options.log, info: options.log, warn: options.log, error: options.log } : console);
  const [runnerModule, utils] = await runnerModules;
  const migrations: MigrationLike[] = runnerModule?.loadMigrations
    ? await runnerModule.loadMigrations(null as never, options as never, logger as never)
    : await listFiles(options, (path) => new Migration(null as never, path, {} as never, options, {}, logger));
  const schemas = (Array.isArray(options.schema) ? options.schema : [options.schema]).filter(
    (schema): schema is string => typeof schema === 'string' && schema.length > 0,
  );
  const schema = options.migrationsSchema === undefined ? (schemas[0] ?? 'public') : options.migrationsSchema;
  let table = `${quoteIdent(schema)}.${quoteIdent(options.migrationsTable)}`;
  if (options.decamelize) {
    if (!utils)
      throw new TypeError('pg-migration-lock/node-pg-migrate: pending() with `decamelize` needs node-pg-migrate 9');
    table = utils.createSchemalize({ shouldDecamelize: true, shouldQuote: true })({
      schema,
      name: options.migrationsTable,
    });
  }
  return { migrations, schema, table };
}

/** node-pg-migrate 8.x's getMigrationFilePaths (without `useGlob`), its Migration giving names and timestamps. */
async function listFiles(options: RunnerOption, migration: (path: string) => MigrationLike): Promise<MigrationLike[]> {
  const { dir, ignorePattern } = options;
  if (options.useGlob) {
    throw new TypeError('pg-migration-lock/node-pg-migrate: pending() with `useGlob` needs node-pg-migrate 9');
  }
  if (Array.isArray(dir) || Array.isArray(ignorePattern)) {
    throw new TypeError('Options "dir" and "ignorePattern" can only be arrays when "useGlob" is true');
  }
  const ignore = new RegExp(ignorePattern?.length ? `^${ignorePattern}$` : '^\\..*');
  const files = (await readdir(`${dir}/`, { withFileTypes: true }))
    .filter((entry) => (entry.isFile() || entry.isSymbolicLink()) && !ignore.test(entry.name))
    .map((entry) => entry.name);
  // 8.x dates the file name, extension included: a Migration named exactly that computes the same number.
  const stamps = new Map(files.map((file) => [file, migration(`${file}.x`).timestamp]));
  files.sort(
    (a, b) =>
      stamps.get(a)! - stamps.get(b)! ||
      a.localeCompare(b, undefined, { usage: 'sort', numeric: true, sensitivity: 'variant', ignorePunctuation: true }),
  );
  return files.map((file) => migration(resolve(dir, file)));
}

function importNodePgMigrate(): Promise<{ runner: typeof nodePgMigrateRunner; Migration: typeof Migration }> {
  return importPeer('node-pg-migrate', 'node-pg-migrate', () => import('node-pg-migrate'));
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
    run: async (target, lock, pool) => {
      const { schema } = target;
      const before = schema === undefined ? undefined : (query: Query) => enterSchema(query, schema, false);
      const ran = await runLocked(on(target, pool), adapterLock(lock, 'node-pg-migrate', ownLock), before);
      return ran.map((migration) => migration.name);
    },
  };
}
