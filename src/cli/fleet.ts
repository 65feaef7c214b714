// `migrate <migrator> --each-database | --each-schema`: a fleet from the command line, its progress and its report.
import { readFileSync } from 'node:fs';
import { type Command, InvalidArgumentError, Option } from 'commander';
import pg from 'pg';
import { isConninfo } from '../driver/conninfo.js';
import { migrateEach } from '../fleet/index.js';
import type { MaxFailures } from '../fleet/rollout.js';
import type { FleetTarget, FleetTargetSpec } from '../fleet/target.js';
import type { FleetMigrator, FleetReport, FleetResult } from '../fleet/types.js';
import { errorMessage } from '../logger.js';
import { asUrlOrUsage, clientConfig, databaseUrl, type GlobalOptions, parseConnectionString } from './context.js';
import { CliError, EXIT, InterruptedError, signalExitCode, UsageError } from './errors.js';
import { Progress, plural, summarize } from './fleet-report.js';
import { lockTimeoutOptions } from './lock-timeout.js';
import { type LockFlags, trapSignals, watchParent } from './locking.js';
import type { Output } from './output.js';

export interface FleetFlags {
  eachDatabase?: string;
  eachSchema?: string;
  concurrency: number;
  stopOnError?: boolean;
  canary?: number;
  maxFailures?: MaxFailures;
  json?: boolean;
}

/** The fleet flags every `migrate <migrator>` takes. */
export function addFleetFlags(command: Command): Command {
  return command
    .optionsGroup('Fleet options (many databases or schemas, each under a lock of its own):')
    .option(
      '--each-database <file|->',
      'migrate every database listed in FILE (- for stdin): a connection string or a database name (on the server of --database-url) per line',
    )
    .option(
      '--each-schema <query|list>',
      'migrate every schema of the database: a comma-separated list, or a query (SELECT …) whose first column names them',
    )
    .addOption(
      new Option('--concurrency <n>', 'targets migrated at once (each takes a connection)')
        .default(4)
        .argParser(parseConcurrency),
    )
    .option('--stop-on-error', 'after a failure, start no further target (the ones running finish)')
    .addOption(
      new Option(
        '--canary <n>',
        'a staged rollout: the first N targets with something to apply migrate alone; a failure among them stops the run',
      ).argParser(parseCanary),
    )
    .addOption(
      new Option(
        '--max-failures <n|p%>',
        'start no further target once more than N targets (or P% of the fleet) have failed',
      ).argParser(parseMaxFailures),
    )
    .option('--json', 'print the report as JSON on stdout');
}

function parseCanary(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n)) throw new InvalidArgumentError('Expected a whole number >= 0.');
  return n;
}

function parseMaxFailures(value: string): MaxFailures {
  if (/^\d+(\.\d+)?%$/.test(value) && Number.parseFloat(value) <= 100) return value as `${number}%`;
  if (/^\d+$/.test(value) && Number.isSafeInteger(Number(value))) return Number(value);
  throw new InvalidArgumentError('Expected a whole number >= 0, or a percentage of the fleet (5%).');
}

export function parseConcurrency(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 1000) throw new InvalidArgumentError('Expected an integer from 1 to 1000.');
  return n;
}

/** Whether the flags ask for a fleet; the fleet-only flags without one are a usage error. */
export function isFleet(flags: FleetFlags): boolean {
  const fleet = flags.eachDatabase !== undefined || flags.eachSchema !== undefined;
  const only = [
    flags.json && '--json',
    flags.stopOnError && '--stop-on-error',
    flags.canary !== undefined && '--canary',
    flags.maxFailures !== undefined && '--max-failures',
  ].find(Boolean);
  if (!fleet && only) {
    throw new UsageError(`${only} is for a fleet: add --each-database FILE or --each-schema LIST`);
  }
  return fleet;
}

/**
 * Migrates every target of `--each-database`/`--each-schema` with `migrateEach`, shows its progress, prints the
 * report, and fails (exit 1) unless every target is migrated. A first SIGINT/SIGTERM starts no further target
 * and lets the running ones finish; a second stops at once (their sessions close, open transactions roll back).
 */
export async function runFleet(
  command: Command,
  out: Output,
  flags: FleetFlags & LockFlags,
  makeMigrator: () => Promise<FleetMigrator>,
): Promise<void> {
  const opts = command.optsWithGlobals<GlobalOptions>();
  if (flags.eachDatabase !== undefined && flags.eachSchema !== undefined) {
    throw new UsageError('--each-database and --each-schema both choose the fleet: give one of them');
  }
  if (opts.key !== undefined || opts.name !== undefined) {
    throw new UsageError(
      `${opts.key !== undefined ? '--key' : '--name'} chooses one lock, and a fleet takes one per target (from its database, schema and migrator)`,
      'Drop it: two fleet runs, and a single run on one of the databases, still exclude each other.',
    );
  }
  if (!flags.wait) {
    throw new UsageError(
      '--no-wait is for one lock: a fleet comes back to a target another run holds after the others, and waits for it then',
      'Bound that wait with --timeout.',
    );
  }
  const migrator = await makeMigrator();
  const targets = await readTargets(command, out, flags);
  const progress = new Progress(out);

  const abort = new AbortController();
  let interrupted: NodeJS.Signals | undefined;
  // What a second signal's summary tells: the targets finished, and those running (stopped, rolled back).
  const startedAt = performance.now();
  const finished: FleetResult[] = [];
  const running = new Map<string, FleetTarget>();
  let total: number | undefined;
  const stop = (signal: NodeJS.Signals, why: string) => {
    if (interrupted) {
      progress.done();
      const stopped = [...running.values()].map((target) => target.name);
      const report = partialReport(finished, performance.now() - startedAt);
      summarize(out, migrator.name, report, flags.json === true, {
        stopped,
        notStarted: total === undefined ? undefined : total - finished.length - stopped.length,
      });
      out.error(`Interrupted again by ${signal}: stopping now; the open transactions roll back`);
      process.exit(signalExitCode(signal));
    }
    interrupted = signal;
    out.warn(`${why}: starting no further target; the ones running finish (${signal} again to stop them now)`);
    abort.abort(new InterruptedError(signal));
  };
  const disposeSignals = trapSignals((signal) => stop(signal, `Interrupted by ${signal}`));
  const disposeWatch = watchParent(() => stop('SIGTERM', 'The process that started pg-migration-lock is gone'));
  let report: FleetReport;
  try {
    report = await migrateEach(targets, migrator, {
      concurrency: flags.concurrency,
      stopOnError: flags.stopOnError,
      canary: flags.canary,
      maxFailures: flags.maxFailures,
      signal: abort.signal,
      onProgress: (event) => {
        total = event.counts.total;
        if (event.type === 'finished') {
          running.delete(event.target.name);
          finished.push(event.result);
        } else if (event.type === 'deferred') running.delete(event.target.name);
        else running.set(event.target.name, event.target);
        progress.on(event);
      },
      lock: { timeoutMs: flags.timeout, ...lockTimeoutOptions(flags) },
      logger: {
        info() {},
        // The fleet's own line for a failed target repeats what the progress line says.
        warn: (message) => /^Migrating .+ failed: /.test(message) || out.warn(message),
        error: (message) => out.error(message),
      },
    });
  } finally {
    progress.done();
    disposeSignals();
    disposeWatch();
  }
  summarize(out, migrator.name, report, flags.json === true);
  if (report.ok) return;
  if (interrupted) throw new CliError(`Interrupted by ${interrupted}: ${notDone(report)}`, signalExitCode(interrupted));
  throw new CliError(notDone(report));
}

/** The report of the targets finished so far, for the summary of a run stopped at once (a second signal). */
function partialReport(results: FleetResult[], durationMs: number): FleetReport {
  const count = (status: FleetResult['status']) => results.filter((r) => r.status === status).length;
  const counts = {
    total: results.length,
    done: results.length,
    running: 0,
    deferred: 0,
    applied: count('applied'),
    upToDate: count('up-to-date'),
    skipped: count('skipped'),
    failed: count('failed'),
    notRun: count('not-run'),
  };
  return { ok: false, counts, results, durationMs };
}

function notDone({ counts }: FleetReport): string {
  const parts = [];
  if (counts.failed > 0) parts.push(`${counts.failed} of ${counts.done} targets failed`);
  if (counts.notRun > 0) parts.push(`${counts.notRun} not run`);
  return parts.join(', ');
}

/** The targets `--each-database FILE` lists or `--each-schema` names, checked before any migration starts. */
export async function readTargets(
  command: Command,
  out: Output,
  flags: Pick<FleetFlags, 'eachDatabase' | 'eachSchema'>,
): Promise<FleetTargetSpec[]> {
  if (flags.eachSchema !== undefined) {
    const url = databaseUrl(command, out, true);
    const schemas = /^\s*(select|with|values|table)\s/i.test(flags.eachSchema)
      ? await schemasFromQuery(url, flags.eachSchema)
      : flags.eachSchema.split(',').map((name) => name.trim());
    const blank = schemas.indexOf('');
    if (blank >= 0) throw new UsageError(`--each-schema: schema ${blank + 1} is empty`);
    // A tenants query may find none yet: an empty fleet, which succeeds.
    out.info(`Fleet: ${plural(schemas.length, 'schema')} of ${out.target} (from ${out.targetSource})`);
    return unique(schemas).map((schema) => ({ url, schema, name: schema }));
  }
  const from = flags.eachDatabase!;
  let text: string;
  try {
    text = readFileSync(from === '-' ? 0 : from, 'utf8');
  } catch (err) {
    throw new UsageError(`--each-database: cannot read ${from === '-' ? 'stdin' : from}: ${errorMessage(err)}`);
  }
  const urls: string[] = [];
  let server: string | undefined;
  for (const [i, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const where = `--each-database ${from === '-' ? 'stdin' : from}, line ${i + 1}`;
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(line) || isConninfo(line)) {
      urls.push(checkedUrl(out, asUrlOrUsage(out, line, where), where));
      continue;
    }
    // A bare name: a database on the server --database-url (or DATABASE_URL) names.
    server ??= databaseUrl(command, out, false);
    if (server === undefined) {
      throw new UsageError(
        `${where}: "${line}" is a database name, and no --database-url or DATABASE_URL says on which server`,
        'List connection strings, or pass the server with --database-url (its database is replaced by each name).',
      );
    }
    const url = new URL(server);
    url.pathname = `/${encodeURIComponent(line)}`;
    urls.push(url.toString());
  }
  out.info(`Fleet: ${plural(urls.length, 'database')} (from ${from === '-' ? 'stdin' : from})`);
  return unique(urls).map((url) => ({ url }));
}

/** A connection string of the list, its password registered first so no message can echo it. */
function checkedUrl(out: Output, url: string, where: string): string {
  const parsed = parseConnectionString(out, url);
  if (!parsed) throw new UsageError(`${where}: not a valid connection string`);
  if (!['postgres:', 'postgresql:'].includes(parsed.protocol)) {
    throw new UsageError(`${where}: expected a postgres:// or postgresql:// URL, got ${parsed.protocol}//…`);
  }
  return url;
}

async function schemasFromQuery(url: string, query: string): Promise<string[]> {
  const client = new pg.Client(clientConfig(url));
  client.on('error', () => {}); // the query's own error says it
  try {
    await client.connect();
    const { rows, fields } = await client.query({ text: query, rowMode: 'array' });
    if (fields.length === 0) throw new UsageError('--each-schema: the query returns no column');
    return rows.map((row: unknown[]) => (row[0] === null ? '' : String(row[0])));
  } catch (err) {
    if (err instanceof CliError) throw err;
    throw new CliError(`--each-schema: the query failed: ${errorMessage(err)}`, EXIT.failure);
  } finally {
    await client.end().catch(() => {});
  }
}

function unique<T>(items: T[]): T[] {
  return [...new Set(items)];
}
