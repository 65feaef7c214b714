import { createInterface } from 'node:readline';
import type { Command } from 'commander';
import { describeKey } from '../../key.js';
import { findMigrationLocks, getLockStatus, type Holder, releaseLock } from '../../status.js';
import { announceTarget, clientConfig, createContext, databaseUrl } from '../context.js';
import { CliError, EXIT, UsageError } from '../errors.js';
import { describeSession } from '../locking.js';
import type { Output } from '../output.js';
import { releaseRefused } from '../privileges.js';
import { formatHolder, keyFlagOf } from './status.js';

const DANGER = `Releasing terminates that PostgreSQL session (pg_terminate_backend), and the work running under its holding's tag (a run command's statements). If it is running a migration, the migration is cut off mid-way: its open transaction rolls back, but steps already committed stay (a migration without a transaction can be left half-applied, CREATE INDEX CONCURRENTLY can leave an INVALID index), and the process that held the lock fails. Release only a holder that is stuck or gone.`;

export function registerRelease(program: Command, out: Output): Command {
  return program
    .command('release')
    .summary('terminate the session holding the lock (stale holders)')
    .description(
      `Show the session holding the lock and terminate it, which releases the lock. ${DANGER} Refuses without --force; asks y/N on a terminal unless --yes; with no terminal, refuses unless --yes. "No lock to release" is a success.`,
    )
    .option('--force', 'really terminate the holder (required)')
    .option('-y, --yes', 'do not ask for confirmation (needed without a terminal)')
    .addHelpText(
      'after',
      `
Examples:
  $ pg-migration-lock status                  # look first
  $ pg-migration-lock release --force        # asks y/N
  $ pg-migration-lock release --force --yes  # scripts and CI`,
    )
    .action(async (flags: { force?: boolean; yes?: boolean }, command: Command) => {
      const ctx = createContext(command, out);
      if (!flags.force) {
        throw new UsageError(
          'release terminates the session holding the lock, which interrupts a running migration: pass --force to do it',
          'Look first: pg-migration-lock status',
        );
      }
      const connection = clientConfig(databaseUrl(command, out, true));
      announceTarget(out);
      const status = await getLockStatus(connection, ctx.key);
      // A backend that only wears a tag (its role cannot change the database) is no holding's work: left alone.
      const work = status.work.filter((session) => session.canMigrate !== false);
      const { holder } = status;
      if (!holder && work.length === 0) {
        // No key asked for, and another migration lock is held (a migrator's own key, a --name): that is the one a
        // stuck deploy waits for. Name it and the exact command; release nothing, and do not say all is well.
        const held = ctx.keyFlag ? [] : (await findMigrationLocks(connection)).filter((found) => found.holder);
        if (held.length > 0) {
          throw new CliError(
            `Migration lock ${ctx.keyLabel} is not held, so nothing was released; but ${held
              .map((other) => `migration lock ${describeKey(other.key)} is held by ${describeSession(other.holder)}`)
              .join('; and ')}`,
            EXIT.failure,
            held.map((other) => `To release it: pg-migration-lock release --force${keyFlagOf(other.key)}`).join('\n'),
          );
        }
        out.info(`Nothing to release: migration lock ${ctx.keyLabel} is not held`);
        return;
      }
      if (!out.quiet) {
        // The holder's query may hold a password (ALTER ROLE … PASSWORD): scrubbed like every other line.
        const lines = holder
          ? [`Migration lock ${ctx.keyLabel} is held by:`, ...formatHolder(out, holder)]
          : [`Migration lock ${ctx.keyLabel} is free, but an earlier holding's work still runs under its tag:`];
        if (holder && work.length > 0) lines.push("  and its holding's work:");
        for (const session of work) lines.push(`    ${describeSession(session)}`);
        if (out.format === 'json') {
          out.event('info', 'release.target', lines.join('\n'), { pid: holder?.pid, work: work.map((w) => w.pid) });
        } else process.stderr.write(out.scrub(`${lines.join('\n')}\n`));
      }
      out.warn(DANGER);

      if (!flags.yes) {
        if (!process.stdin.isTTY || !process.stderr.isTTY) {
          throw new UsageError('Not releasing: there is no terminal to confirm on. Add --yes to confirm.');
        }
        const what = holder
          ? `Terminate pid ${holder.pid}${work.length > 0 ? ` and ${pids(work)}` : ''} and release the lock?`
          : `Terminate ${pids(work)}?`;
        if (!(await confirm(`${what} [y/N] `))) {
          throw new CliError('Not released: nothing was terminated');
        }
      }

      // Only the session shown: a human may take a while to answer, and the lock may change hands meanwhile.
      let result: Awaited<ReturnType<typeof releaseLock>>;
      try {
        result = await releaseLock(connection, ctx.key, holder ? { pid: holder.pid } : {});
      } catch (err) {
        // insufficient_privilege: say which role lacks which right, not just PostgreSQL's "permission denied".
        if ((err as { code?: unknown }).code === '42501')
          throw await releaseRefused(connection, holder?.pid ?? work[0]!.pid, err);
        throw err;
      }
      const others = result.terminated.filter((pid) => pid !== result.pid);
      const alsoWork =
        others.length > 0 ? ` and its holding's work: ${others.map((pid) => `pid ${pid}`).join(', ')}` : '';
      if (result.released) {
        out.success(`Released migration lock ${ctx.keyLabel}: terminated pid ${result.pid}${alsoWork}`, {
          event: 'release.forced',
          terminated: result.terminated,
        });
        return;
      }
      if (!holder) {
        out.success(
          `Terminated the earlier holding's work on migration lock ${ctx.keyLabel}: ${others.map((pid) => `pid ${pid}`).join(', ') || 'it had ended meanwhile'}`,
        );
        return;
      }
      if (result.pid !== null) {
        throw new CliError(
          `Not released: pid ${result.pid} was terminated but had not exited after 10s. Run status to see it.`,
        );
      }
      const now = await getLockStatus(connection, ctx.key);
      if (now.holder) {
        throw new CliError(
          `Not released: the lock changed hands; it is now held by ${describeSession(now.holder)}. Run the command again.`,
        );
      }
      out.success(`No lock to release: pid ${holder.pid} released it meanwhile`);
    });
}

const pids = (sessions: Holder[]) => sessions.map(({ pid }) => `pid ${pid}`).join(', ');

/** Asks on the terminal; anything but y/yes (including Ctrl-C and Ctrl-D) is a no. */
async function confirm(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await new Promise<string>((resolve) => {
      rl.question(question, resolve);
      rl.once('SIGINT', () => {
        process.stderr.write('\n');
        resolve('');
      });
      rl.once('close', () => resolve(''));
    });
    return /^y(es)?$/i.test(answer.trim());
  } finally {
    rl.close();
  }
}
