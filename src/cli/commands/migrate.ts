import type { Command } from 'commander';
import { createContext } from '../context.js';
import { signalExitCode } from '../errors.js';
import { addFleetFlags, type FleetFlags, isFleet, runFleet } from '../fleet.js';
import { addLockTimeoutFlags } from '../lock-timeout.js';
import { addLockFlags, type LockFlags, lockOptions } from '../locking.js';
import { MIGRATORS } from '../migrators/index.js';
import type { Applied, CliMigrator } from '../migrators/types.js';
import type { Output } from '../output.js';

export function registerMigrate(program: Command, out: Output): Command {
  const migrate = program
    .command('migrate')
    .summary(`run ${oneOf(MIGRATORS.map((m) => m.name))} under the lock`)
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
  $ pg-migration-lock migrate knex --lock-timeout 2s --lock-retries 10
  $ pg-migration-lock migrate typeorm -d dist/data-source.js

A fleet (many databases or tenant schemas), each target under a lock of its own, a few at a time:
  $ pg-migration-lock migrate knex --each-database tenants.txt --concurrency 8
  $ pg-migration-lock migrate drizzle --each-schema "SELECT schema FROM tenants" --json`,
    );

  const action = (migrator: CliMigrator) => async (flags: LockFlags & FleetFlags, command: Command) => {
    // The key is chosen (and named) here, once: the migrator's adapter takes it as it is.
    const ctx = createContext(command, out, migrator.name);
    if (isFleet(flags)) return runFleet(command, out, flags, () => migrator.fleet(command, out, flags));
    const lock = lockOptions(ctx, flags, (signal, why) => {
      // The migrator runs in this process: stopping it closes the session, so PostgreSQL rolls back the
      // open transaction and frees the lock.
      const by = why === 'parent-gone' ? 'the exit of the process that started it' : signal;
      out.error(`Interrupted by ${by} while migrating: stopping; the open transaction is rolled back`);
      process.exit(signalExitCode(signal));
    });
    try {
      printApplied(out, await migrator.migrate(command, out, flags, { ...lock.options, key: ctx.key }));
    } finally {
      lock.dispose();
    }
  };

  for (const migrator of MIGRATORS) {
    const { description, after } = migrator.help.migrate;
    const command = migrator.flags(migrate.command(migrator.name).description(description), 'migrate');
    addFleetFlags(addLockTimeoutFlags(addLockFlags(command.addHelpText('after', after)), false)).action(
      action(migrator),
    );
  }

  return migrate;
}

/** `a, b or c`. */
const oneOf = (names: string[]) => `${names.slice(0, -1).join(', ')} or ${names.at(-1)}`;

function printApplied(out: Output, { migrator, applied, note }: Applied): void {
  // For log pipelines (--log-format json) the outcome on stderr too; the result stays on stdout.
  const count = `${applied.length} migration${applied.length === 1 ? '' : 's'}`;
  out.event('info', 'migrate.applied', `${migrator}: applied ${count}`, {
    migrator,
    applied,
    count: applied.length,
    ...(note && { note }),
  });
  if (applied.length === 0) {
    out.result(`${out.out.green('✔')} ${migrator}: already up to date, no pending migrations`);
    return;
  }
  const lines = [`${out.out.green('✔')} ${migrator}: applied ${count}${note ? ` (${note})` : ''}`];
  for (const name of applied) lines.push(`  ${name}`);
  out.result(lines.join('\n'));
}
