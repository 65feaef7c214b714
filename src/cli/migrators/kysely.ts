import type { Command } from 'commander';
import type { Kysely, KyselyPlugin, RootOperationNode } from 'kysely';
import type { FleetMigrator } from '../../fleet/types.js';
import type { KeyedLockOptions } from '../../keyed.js';
import { announceTarget } from '../context.js';
import { UsageError } from '../errors.js';
import type { Output } from '../output.js';
import { migrationFailure } from './failure.js';
import { type KyselyConfigFlags, migratorSetup, openKysely } from './kysely-config.js';
import type { Applied, CliMigrator, PendingCheck } from './types.js';

export interface KyselyFlags extends KyselyConfigFlags {
  /** `migrate` only (`--no-transaction`). */
  transaction?: boolean;
}

/** `migrate kysely` and `pending kysely`, configured like kysely-ctl: its config file and environment. */
export const kyselyMigrator: CliMigrator<KyselyFlags> = {
  name: 'kysely',
  flags: (command, verb) => {
    command
      .option(
        '--config <path>',
        'kysely-ctl config file (default: the nearest kysely.config.* or .config/kysely.config.*)',
      )
      .option('-e, --environment <name>', 'config environment ($<name> in the config file)');
    if (verb === 'pending') return command;
    return command.option('--no-transaction', 'run the migrations without transactions (disableTransactions)');
  },
  help: {
    migrate: {
      description:
        "kysely migrate latest, configured by your kysely-ctl config file (like kysely-ctl's CLI), under kysely's own lock key 3853314791062309107 unless --key or --name is given: this CLI, the pg-migration-lock/kysely adapter and plain kysely all wait for one another",
      after: `
The config's dialect must be 'pg', 'postgres' (postgres.js) or a PostgreSQL dialect instance; --database-url
(or DATABASE_URL when the config has no dialect) replaces it with pg. A TypeScript config (kysely init writes
.config/kysely.config.ts) and .ts migrations load through your project's jiti (kysely-ctl brings it), tsx or
ts-node.

Examples:
  $ pg-migration-lock migrate kysely
  $ pg-migration-lock migrate kysely --config db/kysely.config.mjs -e production --timeout 5m`,
    },
    pending: {
      description: 'what kysely migrate latest would run (your kysely-ctl config)',
      after: `
Examples:
  $ pg-migration-lock pending kysely
  $ pg-migration-lock pending kysely --config db/kysely.config.mjs -e production --wait`,
    },
  },
  migrate: migrateKysely,
  pending: pendingKysely,
  fleet: (_command, _out, flags) => fleetKysely(flags),
};

/**
 * A plugin that keeps the first query kysely ran without a result (the one that failed: kysely runs one at a
 * time, and its clean-up after a failure comes later), and its SQL on demand, compiled as kysely compiles it.
 */
function lastQuery(): KyselyPlugin & { sql(db: Kysely<unknown>): string | undefined } {
  type Query = { node: RootOperationNode; queryId: Parameters<KyselyPlugin['transformQuery']>[0]['queryId'] };
  let current: Query | undefined;
  let failed: Query | undefined;
  return {
    transformQuery: (args) => {
      if (current && !failed) failed = current;
      current = { node: args.node, queryId: args.queryId };
      return args.node;
    },
    transformResult: async (args) => {
      if (current?.queryId === args.queryId) current = undefined;
      return args.result;
    },
    sql: (db) => {
      const query = failed ?? current;
      try {
        return query && db.getExecutor().compileQuery(query.node, query.queryId).sql;
      } catch {
        return undefined;
      }
    },
  };
}

/** `kysely migrate latest` (kysely-ctl) under the lock, configured by the project's kysely-ctl config file. */
async function migrateKysely(
  command: Command,
  out: Output,
  flags: KyselyFlags,
  lock: KeyedLockOptions,
): Promise<Applied> {
  const { db, props, dirs } = await openKysely(command, out, flags);
  announceTarget(out);
  try {
    const { Migrator } = await import('../../../adapters/kysely.js');
    const disableTransactions = flags.transaction === false || (props.disableTransactions as boolean | undefined);
    // kysely's error does not carry its statement: the plugin keeps the query that got no result.
    const recorder = lastQuery();
    const recorded = (props.db as Kysely<unknown>).withPlugin(recorder);
    const result = await new Migrator({ ...props, db: recorded, disableTransactions, lock }).migrateToLatest();
    if (result.error) {
      const failed = result.results?.find((r) => r.status === 'Error')?.migrationName;
      throw migrationFailure('kysely', result.error, failed, dirs, recorder.sql(recorded));
    }
    const applied = (result.results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
    return { migrator: 'kysely', applied };
  } finally {
    await db.destroy();
  }
}

/** What `migrate kysely` would apply, with the same config: the adapter's `pending()` (kysely's rule). */
async function pendingKysely(command: Command, out: Output, flags: KyselyFlags): Promise<PendingCheck> {
  const { db, props, database } = await openKysely(command, out, flags);
  const { Migrator } = await import('../../../adapters/kysely.js');
  const migrator = new Migrator(props);
  return {
    migrator: 'kysely',
    check: () => migrator.pending(),
    get database() {
      if (database) return database;
      throw new UsageError(
        "pending kysely --wait needs to know the database, which this config's dialect does not tell",
        "Pass --database-url (or use dialect 'pg' or 'postgres' with its dialectConfig).",
      );
    },
    close: () => db.destroy(),
  };
}

/** The fleet migrator of `migrate kysely --each-…`: the config's migrations, each target's connection instead of its dialect. */
async function fleetKysely(flags: KyselyFlags): Promise<FleetMigrator> {
  const { props } = await migratorSetup(flags);
  const { fleet } = await import('../../../adapters/kysely.js');
  const disableTransactions = flags.transaction === false || (props.disableTransactions as boolean | undefined);
  return fleet({ ...props, disableTransactions });
}
