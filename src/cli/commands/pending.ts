import { type Command, Option } from 'commander';
import { connectionConfig } from '../../driver/pg.js';
import { watchReleases } from '../../lock/wait.js';
import { getLockStatus } from '../../status.js';
import { formatMs, nap } from '../../time.js';
import { busySession, describeActivity } from '../activity.js';
import { announceTarget, type Context, createContext, parseDurationArg } from '../context.js';
import { CliError, EXIT, InterruptedError, ParentGoneError, UsageError } from '../errors.js';
import {
  addPendingFleetFlags,
  EXIT_PENDING,
  isPendingFleet,
  type PendingFleetFlags,
  pendingFleet,
} from '../fleet-pending.js';
import { describeHolderShort, trapSignals, watchParent } from '../locking.js';
import { MIGRATORS } from '../migrators/index.js';
import type { CliMigrator, PendingCheck } from '../migrators/types.js';
import type { Output } from '../output.js';

/**
 * --wait re-checks when the lock is released (the core NOTIFYs on its channel as it unlocks) and, for
 * releases that cannot notify (a migration job not using this lock, a holder that died), this often.
 */
const FALLBACK_POLL_MS = 5_000;

interface PendingFlags extends PendingFleetFlags {
  wait?: boolean;
  /** Milliseconds, parsed from a duration. */
  timeout?: number;
  json?: boolean;
}

export function registerPending(program: Command, out: Output): Command {
  const pending = program
    .command('pending')
    .summary('list the migrations not yet applied, without the lock; --wait until there are none')
    .description(
      'Print the migrations `migrate <migrator>` would apply, one name per line, without taking the lock and without changing anything. Exit 0 when none is pending, 3 when some are. With --wait, wait until none is pending (for app replicas or readiness checks that must not start before a separate migration job ran): exit 0 then, 75 on --timeout.',
    )
    .addHelpText(
      'after',
      `
Examples:
  $ pg-migration-lock pending knex --knexfile knexfile.cjs --env production
  $ pg-migration-lock pending node-pg-migrate -m migrations --json
  $ pg-migration-lock pending drizzle --migrations-folder ./drizzle --wait --timeout 10m

A fleet's dry run (what each database or tenant schema would get; exit 3 if any has something pending):
  $ pg-migration-lock pending knex --each-database tenants.txt
  $ pg-migration-lock pending drizzle --each-schema "SELECT schema FROM tenants" --json`,
    );

  const action = (migrator: CliMigrator) => async (flags: PendingFlags, command: Command) => {
    const ctx = createContext(command, out, migrator.name);
    if (isPendingFleet(flags)) return pendingFleet(command, out, flags, () => migrator.fleet(command, out, flags));
    if (flags.timeout !== undefined && !flags.wait) {
      throw new UsageError('--timeout needs --wait', 'Add --wait to wait until no migration is pending.');
    }
    const check = await migrator.pending(command, out, flags);
    // Each migrator names its database before it first connects; this covers any that has not yet.
    announceTarget(out);
    let names: string[];
    try {
      names = await check.check();
      if (flags.wait && names.length > 0) names = await waitUntilNone(ctx, check, names, flags.timeout);
    } finally {
      await check.close();
    }
    if (flags.json) out.json(names);
    else if (names.length > 0) out.data(names.join('\n'));
    if (names.length === 0) out.success(`${check.migrator}: no pending migrations`);
    else out.info(`${check.migrator}: ${count(names)} pending`);
    process.exitCode = names.length === 0 ? EXIT.ok : EXIT_PENDING;
  };

  const withPendingFlags = (command: Command) =>
    command
      .option('--wait', 'wait until no migration is pending (exit 0), instead of exiting 3')
      .addOption(
        new Option('--timeout <duration>', 'with --wait: give up after this long (exit 75), e.g. 30s, 5m').argParser(
          parseDurationArg,
        ),
      )
      .option('--json', 'print the names as a JSON array (a fleet: the report as JSON)');

  for (const migrator of MIGRATORS) {
    const { description, after } = migrator.help.pending;
    addPendingFleetFlags(
      withPendingFlags(migrator.flags(pending.command(migrator.name).description(description), 'pending'))
        .addHelpText('after', after)
        .action(action(migrator)),
    );
  }

  return pending;
}

const count = (names: string[]) => `${names.length} migration${names.length === 1 ? '' : 's'}`;

/**
 * Waits, holding no lock, until the check finds nothing pending: it re-checks each time the lock is released
 * (the core's watch on releases) and, for releases that do not notify (a migration job not using this lock,
 * a holder that died), every FALLBACK_POLL_MS. Resolves `[]`; throws exit 75 on timeout.
 */
async function waitUntilNone(
  { out, key, keyLabel, keyFlag }: Context,
  check: PendingCheck,
  first: string[],
  timeoutMs: number | undefined,
): Promise<string[]> {
  const startedAt = performance.now();
  const elapsed = () => performance.now() - startedAt;
  const deadline = timeoutMs ?? Number.POSITIVE_INFINITY;
  let wake: (() => void) | undefined;
  // Something happened since the last check (a release, a signal): the next check comes without a nap, so a
  // release heard while a check was running is not slept through.
  let stirred = false;
  const stir = () => {
    stirred = true;
    wake?.();
  };
  let interrupted: NodeJS.Signals | undefined;
  let parentGone = false;
  const disposeSignals = trapSignals((signal) => {
    interrupted ??= signal;
    stir();
  });
  // Like every command: when the process that started it is gone, stop waiting rather than linger.
  const disposeWatch = watchParent(() => {
    parentGone = true;
    stir();
  });
  out.info(
    `Waiting for ${count(first)} to be applied (${first.join(', ')}): re-checking when migration lock ${keyLabel} is released${timeoutMs === undefined ? '' : `, for up to ${formatMs(timeoutMs)}`}`,
  );
  let names = first;
  let watch: { close(): Promise<void> } | undefined;
  // What the holder runs, said again when it changes (another statement, another phase): where the deploy is.
  let lastSeen = '';
  const sayHolder = async () => {
    const status = await getLockStatus(connectionConfig(check.database), key).catch(() => undefined);
    const busy = status && busySession(status.holder, status.work);
    const seen = busy ? `${busy.session.pid} ${busy.session.query} ${busy.session.progress?.phase}` : '';
    if (busy && seen !== lastSeen) {
      out.info(
        `Migration lock ${keyLabel} held by ${describeHolderShort(status.holder)}${busy.who}${describeActivity(busy.session)}`,
      );
    }
    lastSeen = seen;
  };
  try {
    watch = await watchReleases(connectionConfig(check.database), key, stir);
    // A release between the first check and the watch would not wake us: check once more now.
    stirred = false;
    names = await check.check();
    if (names.length > 0) await sayHolder();
    while (names.length > 0) {
      if (parentGone) throw new ParentGoneError();
      if (interrupted) throw new InterruptedError(interrupted);
      if (elapsed() >= deadline) {
        throw new CliError(
          `Timed out after ${formatMs(elapsed())}: ${count(names)} still pending (${names.join(', ')})`,
          EXIT.notAcquired,
          `Is the migration job running? See who holds the lock: pg-migration-lock status${keyFlag}`,
        );
      }
      if (!stirred) {
        const napping = nap(Math.min(FALLBACK_POLL_MS * (0.8 + Math.random() * 0.4), deadline - elapsed()));
        wake = napping.wake;
        await napping.done;
        wake = undefined;
      }
      stirred = false;
      if (parentGone) throw new ParentGoneError();
      if (interrupted) throw new InterruptedError(interrupted);
      const before = names.length;
      names = await check.check();
      if (names.length > 0 && names.length !== before) out.info(`Still waiting for ${count(names)}`);
      if (names.length > 0) await sayHolder();
    }
    out.info(`Waited ${formatMs(elapsed())} for the migrations to be applied`);
    return names;
  } finally {
    disposeSignals();
    disposeWatch();
    await watch?.close().catch(() => {});
  }
}
