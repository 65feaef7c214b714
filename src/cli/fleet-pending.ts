// `pending <migrator> --each-database | --each-schema`: a fleet's dry run. Each target's `pending`, no lock taken,
// nothing created; a line per target (or JSON), exit 3 when any target has something pending.
import { type Command, Option } from 'commander';
import { upToDateTargets } from '../fleet/checks.js';
import { toFleetTarget } from '../fleet/target.js';
import type { FleetMigrator } from '../fleet/types.js';
import { CliError, EXIT, UsageError } from './errors.js';
import { type FleetFlags, parseConcurrency, readTargets } from './fleet.js';
import { failure, plural } from './fleet-report.js';
import type { Output } from './output.js';

/** The SPEC's exit code of `pending` when migrations are pending. */
export const EXIT_PENDING = 3;

export type PendingFleetFlags = Pick<FleetFlags, 'eachDatabase' | 'eachSchema' | 'json'> & {
  concurrency?: number;
  wait?: boolean;
};

/** One target's answer, as `--json` prints it. */
interface PendingResult {
  target: string;
  database: string | null;
  schema: string | null;
  /** What `migrate <migrator>` would apply there, in order; `null` when the check failed. */
  pending: string[] | null;
  error?: string;
}

/** The fleet flags `pending <migrator>` takes (no --stop-on-error: nothing runs). */
export function addPendingFleetFlags(command: Command): Command {
  return command
    .optionsGroup('Fleet options (what is pending on many databases or schemas):')
    .option(
      '--each-database <file|->',
      'check every database listed in FILE (- for stdin): a connection string or a database name (on the server of --database-url) per line',
    )
    .option(
      '--each-schema <query|list>',
      'check every schema of the database: a comma-separated list, or a query (SELECT …) whose first column names them',
    )
    .addOption(
      new Option('--concurrency <n>', 'targets checked at once (each takes a connection) (default: 4)').argParser(
        parseConcurrency,
      ),
    );
}

/** Whether `pending` is asked about a fleet; --concurrency without one is a usage error. */
export function isPendingFleet(flags: PendingFleetFlags): boolean {
  const fleet = flags.eachDatabase !== undefined || flags.eachSchema !== undefined;
  if (!fleet && flags.concurrency !== undefined) {
    throw new UsageError('--concurrency is for a fleet: add --each-database FILE or --each-schema LIST');
  }
  return fleet;
}

/**
 * Asks every target of `--each-database`/`--each-schema` what is pending (the migrator's fleet `pending`, which
 * takes no lock and creates nothing), `concurrency` at a time, prints a line per target (or the JSON report),
 * and sets exit 3 when any target has something pending; a check that failed makes it exit 1.
 */
export async function pendingFleet(
  command: Command,
  out: Output,
  flags: PendingFleetFlags,
  makeMigrator: () => Promise<FleetMigrator>,
): Promise<void> {
  if (flags.eachDatabase !== undefined && flags.eachSchema !== undefined) {
    throw new UsageError('--each-database and --each-schema both choose the fleet: give one of them');
  }
  if (flags.wait) {
    throw new UsageError(
      '--wait is for one database: a fleet dry run reports what is pending on each target',
      'Drop --wait, or wait on one target at a time.',
    );
  }
  const migrator = await makeMigrator();
  const targets = (await readTargets(command, out, flags)).map((spec, i) => toFleetTarget(spec, `target ${i + 1}`));
  const results: PendingResult[] = new Array(targets.length);
  const concurrency = flags.concurrency ?? 4;
  // Schemas found up to date by the batched checks (a few statements for many schemas) need no migrator; the
  // batches' connections are closed before the migrators open theirs.
  const upToDate = await upToDateTargets(migrator, targets, concurrency, {
    info() {},
    warn: (message) => out.warn(message),
    error: (message) => out.error(message),
  });
  let next = 0;
  const worker = async () => {
    while (next < targets.length) {
      const i = next++;
      const target = targets[i]!;
      const base = { target: target.name, database: target.database ?? null, schema: target.schema ?? null };
      try {
        results[i] = { ...base, pending: upToDate[i] ? [] : await migrator.pending(target) };
      } catch (err) {
        results[i] = { ...base, pending: null, error: failure(err) };
      }
      const r = results[i]!;
      if (!flags.json) {
        if (r.error !== undefined) out.warn(`${r.target}: check failed: ${r.error}`);
        else if (r.pending!.length === 0) out.data(`${r.target}: up to date`);
        else out.data(`${r.target}: ${plural(r.pending!.length, 'pending migration')}: ${r.pending!.join(', ')}`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, targets.length) }, worker));

  const withPending = results.filter((r) => r.pending !== null && r.pending.length > 0).length;
  const failed = results.filter((r) => r.error !== undefined).length;
  const upToDateCount = results.length - withPending - failed;
  if (flags.json) {
    out.json({
      migrator: migrator.name,
      counts: { targets: results.length, pending: withPending, upToDate: upToDateCount, failed },
      results,
    });
  }
  const parts = [`${withPending} with pending migrations`, `${upToDateCount} up to date`];
  if (failed > 0) parts.push(`${failed} failed`);
  out.info(`${migrator.name}: ${plural(results.length, 'target')}: ${parts.join(', ')}`);
  if (failed > 0) throw new CliError(`${failed} of ${plural(results.length, 'target')} could not be checked`);
  process.exitCode = withPending > 0 ? EXIT_PENDING : EXIT.ok;
}
