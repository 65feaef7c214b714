import type { Command } from 'commander';
import type { RunnerOption } from 'node-pg-migrate';
import pg from 'pg';
import { loggedStatement } from '../../../adapters/node-pg-migrate/statement.js';
import type { FleetMigrator } from '../../fleet/types.js';
import type { KeyedLockOptions } from '../../keyed.js';
import { announceTarget, clientConfig, databaseUrl } from '../context.js';
import type { Output } from '../output.js';
import { migrationFailure, migrationFile } from './failure.js';
import { existingDir } from './project.js';
import type { Applied, CliMigrator, PendingCheck } from './types.js';

export interface NodePgMigrateFlags {
  migrationsDir: string;
  migrationsTable: string;
  schema?: string;
  migrationsSchema?: string;
  createSchema?: boolean;
  createMigrationsSchema?: boolean;
  checkOrder: boolean;
}

/** `migrate node-pg-migrate` and `pending node-pg-migrate`, with node-pg-migrate's own flag names and defaults. */
export const nodePgMigrateMigrator: CliMigrator<NodePgMigrateFlags> = {
  name: 'node-pg-migrate',
  flags: (command) =>
    command
      .option('-m, --migrations-dir <dir>', 'migrations directory', 'migrations')
      .option('-t, --migrations-table <table>', 'table recording the applied migrations', 'pgmigrations')
      .option('-s, --schema <schema>', 'schema to migrate (search_path)')
      .option('--migrations-schema <schema>', 'schema of the migrations table (default: --schema)')
      .option('--create-schema', 'create --schema if missing')
      .option('--create-migrations-schema', 'create --migrations-schema if missing')
      .option('--no-check-order', 'do not check that applied migrations come before new ones'),
  help: {
    migrate: {
      description:
        "node-pg-migrate up (all pending migrations), under node-pg-migrate's own lock key 7241865325823964 unless --key or --name is given: this CLI, the pg-migration-lock/node-pg-migrate adapter and plain node-pg-migrate all wait for one another",
      after: `
Examples:
  $ pg-migration-lock migrate node-pg-migrate
  $ pg-migration-lock migrate node-pg-migrate -m db/migrations -t schema_migrations --no-wait
  $ pg-migration-lock migrate node-pg-migrate --name billing   # a lock of your own instead`,
    },
    pending: {
      description: 'what node-pg-migrate up would run',
      after: `
Examples:
  $ pg-migration-lock pending node-pg-migrate
  $ pg-migration-lock pending node-pg-migrate -m db/migrations -t schema_migrations --json`,
    },
  },
  migrate: migrateNodePgMigrate,
  pending: pendingNodePgMigrate,
  fleet: (_command, out, flags) => fleetNodePgMigrate(out, flags),
};

/** `node-pg-migrate up` under the lock, with node-pg-migrate's own flag names and defaults. */
async function migrateNodePgMigrate(
  command: Command,
  out: Output,
  flags: NodePgMigrateFlags,
  lock: KeyedLockOptions,
): Promise<Applied> {
  const options = upOptions(command, out, flags);
  announceTarget(out);
  const dir = options.dir as string;
  const { runner } = await import('../../../adapters/node-pg-migrate.js');
  let current: string | undefined;
  let statement: string | undefined;
  let failed = false;
  let ran: Awaited<ReturnType<typeof runner>>;
  try {
    ran = await runner({
      ...options,
      // Progress on stderr, one line per migration (the summary lists them again). On failure: the failing
      // SQL, then our one line; not the clean-up that follows (its own unlock, in the aborted transaction).
      logger: {
        debug: () => {},
        info: (message: string) => {
          const name = /^### MIGRATION (.+) \(UP\) ###$/.exec(message)?.[1];
          if (!name) return;
          current = name;
          out.info(`node-pg-migrate: migrating ${name}`);
        },
        warn: (message: string) => {
          if (!failed) out.warn(`node-pg-migrate: ${message}`);
        },
        error: (message: string) => {
          if (failed && /pg_advisory_unlock/.test(message)) return;
          failed = true;
          statement ??= loggedStatement(message);
          out.detail(withoutFinalError(message));
        },
      },
      lock,
    });
  } catch (err) {
    throw migrationFailure('node-pg-migrate', err, current && migrationFile(dir, current), [dir], statement);
  }
  return { migrator: 'node-pg-migrate', applied: ran.map((migration) => migration.name) };
}

/** What `migrate node-pg-migrate` would apply, with the same flags: the adapter's `pending`. */
async function pendingNodePgMigrate(command: Command, out: Output, flags: NodePgMigrateFlags): Promise<PendingCheck> {
  const options = upOptions(command, out, flags);
  const database = (options as { databaseUrl: pg.ClientConfig }).databaseUrl;
  const { pending } = await import('../../../adapters/node-pg-migrate.js');
  // One connection, kept for every check of a --wait.
  const pool = new pg.Pool({ ...database, max: 1 });
  pool.on('error', () => {}); // a check on a broken connection fails with the connection's own error
  return {
    migrator: 'node-pg-migrate',
    check: () =>
      pending({ ...options, databaseUrl: undefined, dbClient: pool as never, log: () => {} } as RunnerOption),
    database,
    close: () => pool.end(),
  };
}

/** The fleet migrator of `migrate node-pg-migrate --each-…`: the same flags, each target's connection. */
async function fleetNodePgMigrate(out: Output, flags: NodePgMigrateFlags): Promise<FleetMigrator> {
  const { fleet } = await import('../../../adapters/node-pg-migrate.js');
  // Per target, node-pg-migrate's progress would be one line per migration per tenant: the fleet's line says it.
  const logger = {
    debug() {},
    info() {},
    error() {},
    warn: (message: string) => out.warn(`node-pg-migrate: ${message}`),
  };
  return fleet({ ...runOptions(flags), logger });
}

/** `node-pg-migrate up` (all pending migrations) from the flags. */
function upOptions(command: Command, out: Output, flags: NodePgMigrateFlags): RunnerOption {
  return { databaseUrl: clientConfig(databaseUrl(command, out, true)), ...runOptions(flags) } as RunnerOption;
}

/** node-pg-migrate's runner options from the flags, but the connection. */
function runOptions(flags: NodePgMigrateFlags) {
  return {
    dir: existingDir(flags.migrationsDir, 'node-pg-migrate migrations directory', '--migrations-dir'),
    migrationsTable: flags.migrationsTable,
    schema: flags.schema,
    migrationsSchema: flags.migrationsSchema,
    createSchema: flags.createSchema,
    createMigrationsSchema: flags.createMigrationsSchema,
    checkOrder: flags.checkOrder,
    direction: 'up' as const,
    count: Number.POSITIVE_INFINITY,
  };
}

/** node-pg-migrate's "Error executing: SQL / error: …" without its last line, which our final line repeats. */
function withoutFinalError(message: string): string {
  const lines = message.trimEnd().split('\n');
  if (lines.length > 1 && /^error: /.test(lines.at(-1)!)) lines.pop();
  return `node-pg-migrate: ${lines.join('\n').trimEnd()}`;
}
