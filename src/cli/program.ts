import { readFileSync, realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { MigrationLockBusyError, MigrationLockError, MigrationLockTimeoutError } from '../errors.js';
import { errorMessage } from '../logger.js';
import { registerMigrate } from './commands/migrate.js';
import { registerPending } from './commands/pending.js';
import { registerRelease } from './commands/release.js';
import { registerRun } from './commands/run.js';
import { registerStatus } from './commands/status.js';
import { addGlobalOptions } from './context.js';
import { CliError, EXIT, exitCodeOf, isConnectError, isMissingPassword } from './errors.js';
import { Output } from './output.js';

const EXAMPLES = `
Examples:
  $ pg-migration-lock run -- npx prisma migrate deploy
  $ pg-migration-lock migrate knex --knexfile knexfile.cjs --env production
  $ pg-migration-lock migrate node-pg-migrate -m migrations
  $ pg-migration-lock migrate drizzle --migrations-folder ./drizzle
  $ pg-migration-lock pending knex --wait --timeout 10m
  $ pg-migration-lock status --json
  $ pg-migration-lock release --force

Exit codes:
  0   success
  1   failure (run: CMD's own non-zero exit code passes through, 128+n if a signal killed it)
  2   usage or configuration error (bad flag, bad key, no database URL, missing migrations folder)
  3   pending: migrations are pending
  75  lock not acquired (--no-wait while another process holds it, or --timeout elapsed);
      pending --wait: --timeout elapsed with migrations still pending
  126 run: CMD is not executable; 127: CMD not found (the lock is never taken)
  129 the process that started pg-migration-lock went away while it waited for the lock

The lock is a PostgreSQL session advisory lock; from psql:
  SELECT * FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1;`;

export function buildProgram(out: Output): Command {
  const version = packageVersion();
  const program = new Command('pg-migration-lock')
    .description(
      'Run database migrations under a PostgreSQL advisory lock, so that of many processes starting at once (replicas, init containers, CI jobs) one migrates and the others wait.',
    )
    .version(version, '-V, --version', 'output the version number (also -v)')
    // Options after a command name belong to that command, so `run -- CMD --flags` reaches CMD untouched.
    .enablePositionalOptions()
    .showHelpAfterError('(add --help for usage)')
    .exitOverride()
    .configureOutput({
      // Commander echoes option values in its errors: a mistyped --database-url must not show its password.
      writeErr: (text) => {
        if (out.format === 'text') process.stderr.write(out.scrub(text));
        // JSON: each line its own object (an error, its "(add --help for usage)").
        else
          for (const line of text.split('\n').filter(Boolean))
            out.event('error', 'usage', line.replace(/^error: /, ''));
      },
      outputError: (text, write) => write(`${out.err.red(out.err.bold('error:'))}${text.replace(/^error:/, '')}`),
    })
    .addHelpText('after', EXAMPLES);
  // `-v` too, as many CLIs take it (commander gives an option one short flag): it prints what -V prints.
  program.addOption(new Option('-v').hideHelp()).on('option:v', () => {
    process.stdout.write(`${version}\n`);
    throw new CommanderError(0, 'commander.version', version);
  });
  addGlobalOptions(program, out);
  registerRun(program, out);
  registerMigrate(program, out);
  registerPending(program, out);
  registerStatus(program, out);
  registerRelease(program, out);
  // Every command takes the global options too (commands inherit the settings above when created).
  const all = (command: Command): Command[] => [command, ...command.commands.flatMap(all)];
  for (const command of all(program).slice(1)) addGlobalOptions(command, out);
  return program;
}

/** Runs the CLI; the exit code lands in `process.exitCode` (a `run` sets CMD's own). */
export async function main(argv: string[]): Promise<void> {
  const out = new Output();
  try {
    await buildProgram(out).parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander printed it already; --help and --version exit 0, anything else is a usage error.
      process.exitCode = err.exitCode === 0 ? EXIT.ok : EXIT.usage;
      return;
    }
    out.error(...explain(out, err));
    process.exitCode = exitCodeOf(err);
    if (isConnectError(err) || isMissingPassword(err)) {
      // Whatever the failed connection left open must not keep the process alive: pg leaves the socket of a
      // failed SCRAM exchange open (a pool of the CLI's, TypeORM's, knex's). Everything we wait for is done.
      setTimeout(() => process.exit(), 500).unref();
    }
  }
}

/** The one message (and a hint when there is a useful next step) an error is reported with. */
function explain(out: Output, err: unknown): [message: string, hint?: string] {
  if (err instanceof CliError) return [err.message, err.hint];
  if (isMissingPassword(err)) {
    // pg's own words ("SASL: SCRAM-SERVER-FIRST-MESSAGE: client password must be a string") say neither.
    return [
      `Cannot connect to ${out.target ?? 'the database'}: the server asks for a password and the URL has none: add it (user:password@) or set PGPASSWORD`,
    ];
  }
  if (err instanceof MigrationLockBusyError) {
    return [`${err.message} (--no-wait)`, `See who holds it: pg-migration-lock status${out.keyFlag}`];
  }
  if (err instanceof MigrationLockTimeoutError) {
    return [
      err.message,
      `See who holds it: pg-migration-lock status${out.keyFlag}; a stale holder: pg-migration-lock release --force${out.keyFlag}`,
    ];
  }
  if (err instanceof MigrationLockError) return [err.message];
  if (isConnectError(err)) return [`Cannot connect to ${out.target ?? 'the database'}: ${describeError(err)}`];
  return [describeError(err)];
}

/** The message of an error, and of its cause when it says more (drizzle's "Failed query" hides the reason there). */
function describeError(err: unknown): string {
  // Node's AggregateError (one error per address tried) has an empty message.
  if (err instanceof AggregateError && !err.message) return err.errors.map(errorMessage).join('; ');
  const message = errorMessage(err).trimEnd();
  const cause = err instanceof Error && err.cause !== undefined ? errorMessage(err.cause) : '';
  return cause && !message.includes(cause) ? `${message}\ncaused by: ${cause}` : message;
}

/** This package's version, from the package.json above the running script (dist/cli/index.js, via npm's bin link). */
function packageVersion(): string {
  // Not import.meta.url: the same source is also built as CommonJS.
  let dir = dirname(realpathSync(process.argv[1] ?? '.'));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
      if (pkg.name === 'pg-migration-lock') return pkg.version;
    } catch {
      // no package.json here: look further up
    }
    const parent = dirname(dir);
    if (parent === dir) return 'unknown';
    dir = parent;
  }
}
