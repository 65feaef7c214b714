import type { Command } from 'commander';
import { createContext } from '../context.js';
import { signalExitCode } from '../errors.js';
import { addLockFlags, type LockFlags, lockOptions } from '../locking.js';
import { migrateDrizzle } from '../migrators/drizzle.js';
import { migrateKnex } from '../migrators/knex.js';
import { migrateKysely } from '../migrators/kysely.js';
import { migrateNodePgMigrate } from '../migrators/node-pg-migrate.js';
import { migrateTypeorm } from '../migrators/typeorm.js';
import type { AdapterLock, Applied } from '../migrators/types.js';
import type { Output } from '../output.js';

type Migrate<F> = (command: Command, out: Output, flags: F, lock: AdapterLock) => Promise<Applied>;

export function registerMigrate(program: Command, out: Output): Command {
  const migrate = program
    .command('migrate')
    .summary('run knex, node-pg-migrate, drizzle, typeorm or kysely under the lock')
    .description(
      'Run the pending migrations of one migrator under the lock, on the session that holds it, and print what was applied. For any other migrator (prisma, dbmate, atlas, sequelize-cli…) use `run -- CMD`.',
    )
    .addHelpText(
      'after',
      `
Examples:
  $ pg-migration-lock migrate knex --knexfile knexfile.cjs --env production
  $ pg-migration-lock migrate node-pg-migrate -m migrations -t pgmigrations
  $ pg-migration-lock migrate drizzle --migrations-folder ./drizzle --timeout 5m
  $ pg-migration-lock migrate typeorm -d dist/data-source.js`,
    );

  const action =
    <F>(run: Migrate<F>) =>
    async (flags: F & LockFlags, command: Command) => {
      const ctx = createContext(command, out);
      const lock = lockOptions(ctx, flags, (signal) => {
        // The migrator runs in this process: stopping it closes the session, so PostgreSQL rolls back the
        // open transaction and frees the lock.
        out.error(`Interrupted by ${signal} while migrating: stopping; the open transaction is rolled back`);
        process.exit(signalExitCode(signal));
      });
      try {
        printApplied(out, await run(command, out, flags, { ...lock.options, key: ctx.key }));
      } finally {
        lock.dispose();
      }
    };

  addLockFlags(
    migrate
      .command('knex')
      .description("knex migrate:latest, configured by your knexfile (like knex's own CLI)")
      .option('--knexfile <path>', 'knexfile (.js, .cjs or .mjs) (default: the nearest knexfile.js/.cjs/.mjs)')
      .option('--env <name>', 'knexfile environment (default: $NODE_ENV, else development)')
      .addHelpText(
        'after',
        `
--database-url (or DATABASE_URL when the knexfile has no connection) replaces the knexfile's connection.

Examples:
  $ pg-migration-lock migrate knex
  $ pg-migration-lock migrate knex --knexfile db/knexfile.mjs --env production --timeout 5m`,
      ),
  ).action(action(migrateKnex));

  addLockFlags(
    migrate
      .command('node-pg-migrate')
      .description('node-pg-migrate up (all pending migrations)')
      .option('-m, --migrations-dir <dir>', 'migrations directory', 'migrations')
      .option('-t, --migrations-table <table>', 'table recording the applied migrations', 'pgmigrations')
      .option('-s, --schema <schema>', 'schema to migrate (search_path)')
      .option('--migrations-schema <schema>', 'schema of the migrations table (default: --schema)')
      .option('--create-schema', 'create --schema if missing')
      .option('--create-migrations-schema', 'create --migrations-schema if missing')
      .option('--no-check-order', 'do not check that applied migrations come before new ones')
      .addHelpText(
        'after',
        `
Examples:
  $ pg-migration-lock migrate node-pg-migrate
  $ pg-migration-lock migrate node-pg-migrate -m db/migrations -t schema_migrations --no-wait
  $ pg-migration-lock migrate node-pg-migrate --key 7241865325823964   # also waits for plain node-pg-migrate runs`,
      ),
  ).action(action(migrateNodePgMigrate));

  addLockFlags(
    migrate
      .command('drizzle')
      .description("drizzle's migrate() for node-postgres (what drizzle-kit migrate does)")
      .option('--migrations-folder <dir>', 'drizzle-kit\'s "out" folder', './drizzle')
      .option('--migrations-table <name>', 'table recording the applied migrations', '__drizzle_migrations')
      .option('--migrations-schema <name>', 'schema of that table', 'drizzle')
      .addHelpText(
        'after',
        `
Examples:
  $ pg-migration-lock migrate drizzle
  $ pg-migration-lock migrate drizzle --migrations-folder db/migrations --timeout 10m`,
      ),
  ).action(action(migrateDrizzle));

  addLockFlags(
    migrate
      .command('typeorm')
      .description("TypeORM migration:run, for the DataSource a file exports (like TypeORM's own CLI)")
      .requiredOption('-d, --data-source <path>', 'file exporting the DataSource (.js, .cjs or .mjs)')
      .option(
        '-t, --transaction <mode>',
        "all, each or none (default: the data source's migrationsTransactionMode, else all)",
      )
      .option('-f, --fake', 'record the pending migrations as run without running them')
      .addHelpText(
        'after',
        `
--database-url (or DATABASE_URL when the data source names no server) replaces the data source's connection.

Examples:
  $ pg-migration-lock migrate typeorm -d dist/data-source.js
  $ pg-migration-lock migrate typeorm --data-source dist/data-source.js --transaction each --timeout 5m`,
      ),
  ).action(action(migrateTypeorm));

  addLockFlags(
    migrate
      .command('kysely')
      .description("kysely migrate latest, configured by your kysely-ctl config file (like kysely-ctl's CLI)")
      .option(
        '--config <path>',
        'kysely-ctl config file (default: the nearest kysely.config.* or .config/kysely.config.*)',
      )
      .option('-e, --environment <name>', 'config environment ($<name> in the config file)')
      .option('--no-transaction', 'run the migrations without transactions (disableTransactions)')
      .addHelpText(
        'after',
        `
The config's dialect must be 'pg', 'postgres' (postgres.js) or a PostgreSQL dialect instance; --database-url
(or DATABASE_URL when the config has no dialect) replaces it with pg. A TypeScript config needs a Node that
strips types (>= 22.18); otherwise wrap kysely-ctl: pg-migration-lock run -- npx kysely migrate latest

Examples:
  $ pg-migration-lock migrate kysely
  $ pg-migration-lock migrate kysely --config db/kysely.config.mjs -e production --timeout 5m`,
      ),
  ).action(action(migrateKysely));

  return migrate;
}

function printApplied(out: Output, { migrator, applied, note }: Applied): void {
  if (applied.length === 0) {
    out.result(`${out.out.green('✔')} ${migrator}: already up to date, no pending migrations`);
    return;
  }
  const count = `${applied.length} migration${applied.length === 1 ? '' : 's'}`;
  const lines = [`${out.out.green('✔')} ${migrator}: applied ${count}${note ? ` (${note})` : ''}`];
  for (const name of applied) lines.push(`  ${name}`);
  out.result(lines.join('\n'));
}
