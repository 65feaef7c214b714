import type { Command } from 'commander';
import type { FleetMigrator } from '../../fleet/types.js';
import { createContext } from '../context.js';
import { signalExitCode } from '../errors.js';
import { addFleetFlags, type FleetFlags, isFleet, runFleet } from '../fleet.js';
import { addLockFlags, type LockFlags, lockOptions } from '../locking.js';
import { drizzleFlags, fleetDrizzle, migrateDrizzle } from '../migrators/drizzle.js';
import { fleetKnex, knexFlags, migrateKnex } from '../migrators/knex.js';
import { fleetKysely, kyselyFlags, migrateKysely } from '../migrators/kysely.js';
import { fleetNodePgMigrate, migrateNodePgMigrate, nodePgMigrateFlags } from '../migrators/node-pg-migrate.js';
import { fleetTypeorm, migrateTypeorm, typeormFlags } from '../migrators/typeorm.js';
import type { AdapterLock, Applied } from '../migrators/types.js';
import type { Output } from '../output.js';

type Migrate<F> = (command: Command, out: Output, flags: F, lock: AdapterLock) => Promise<Applied>;
type Fleet<F> = (out: Output, flags: F) => Promise<FleetMigrator>;

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
  $ pg-migration-lock migrate typeorm -d dist/data-source.js

A fleet (many databases or tenant schemas), each target under a lock of its own, a few at a time:
  $ pg-migration-lock migrate knex --each-database tenants.txt --concurrency 8
  $ pg-migration-lock migrate drizzle --each-schema "SELECT schema FROM tenants" --json`,
    );

  const action =
    <F>(run: Migrate<F>, fleet: Fleet<F>, tool: string) =>
    async (flags: F & LockFlags & FleetFlags, command: Command) => {
      const ctx = createContext(command, out, tool);
      if (isFleet(flags)) return runFleet(command, out, flags, () => fleet(out, flags));
      const lock = lockOptions(ctx, flags, (signal, why) => {
        // The migrator runs in this process: stopping it closes the session, so PostgreSQL rolls back the
        // open transaction and frees the lock.
        const by = why === 'parent-gone' ? 'the exit of the process that started it' : signal;
        out.error(`Interrupted by ${by} while migrating: stopping; the open transaction is rolled back`);
        process.exit(signalExitCode(signal));
      });
      try {
        printApplied(out, await run(command, out, flags, { ...lock.options, key: ctx.key }));
      } finally {
        lock.dispose();
      }
    };

  addFleetFlags(
    addLockFlags(
      knexFlags(
        migrate.command('knex').description("knex migrate:latest, configured by your knexfile (like knex's own CLI)"),
      ).addHelpText(
        'after',
        `
--database-url (or DATABASE_URL when the knexfile has no connection) replaces the knexfile's connection.

Examples:
  $ pg-migration-lock migrate knex
  $ pg-migration-lock migrate knex --knexfile db/knexfile.mjs --env production --timeout 5m`,
      ),
    ),
  ).action(action(migrateKnex, fleetKnex, 'knex'));

  addFleetFlags(
    addLockFlags(
      nodePgMigrateFlags(
        migrate
          .command('node-pg-migrate')
          .description(
            "node-pg-migrate up (all pending migrations), under node-pg-migrate's own lock key 7241865325823964 unless --key or --name is given: this CLI, the pg-migration-lock/node-pg-migrate adapter and plain node-pg-migrate all wait for one another",
          ),
      ).addHelpText(
        'after',
        `
Examples:
  $ pg-migration-lock migrate node-pg-migrate
  $ pg-migration-lock migrate node-pg-migrate -m db/migrations -t schema_migrations --no-wait
  $ pg-migration-lock migrate node-pg-migrate --name billing   # a lock of your own instead`,
      ),
    ),
  ).action(action(migrateNodePgMigrate, fleetNodePgMigrate, 'node-pg-migrate'));

  addFleetFlags(
    addLockFlags(
      drizzleFlags(
        migrate.command('drizzle').description("drizzle's migrate() for node-postgres (what drizzle-kit migrate does)"),
      ).addHelpText(
        'after',
        `
Examples:
  $ pg-migration-lock migrate drizzle
  $ pg-migration-lock migrate drizzle --migrations-folder db/migrations --timeout 10m`,
      ),
    ),
  ).action(action(migrateDrizzle, (_, flags) => fleetDrizzle(flags), 'drizzle'));

  addFleetFlags(
    addLockFlags(
      typeormFlags(
        migrate
          .command('typeorm')
          .description("TypeORM migration:run, for the DataSource a file exports (like TypeORM's own CLI)"),
      )
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
    ),
  ).action(action(migrateTypeorm, (_, flags) => fleetTypeorm(flags), 'typeorm'));

  addFleetFlags(
    addLockFlags(
      kyselyFlags(
        migrate
          .command('kysely')
          .description(
            "kysely migrate latest, configured by your kysely-ctl config file (like kysely-ctl's CLI), under kysely's own lock key 3853314791062309107 unless --key or --name is given: this CLI, the pg-migration-lock/kysely adapter and plain kysely all wait for one another",
          ),
      )
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
    ),
  ).action(action(migrateKysely, (_, flags) => fleetKysely(flags), 'kysely'));

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
