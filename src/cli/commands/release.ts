import { createInterface } from 'node:readline';
import type { Command } from 'commander';
import { getLockStatus, releaseLock } from '../../status.js';
import { clientConfig, createContext, databaseUrl } from '../context.js';
import { CliError, UsageError } from '../errors.js';
import { describeSession } from '../locking.js';
import type { Output } from '../output.js';
import { releaseRefused } from '../privileges.js';
import { formatHolder } from './status.js';

const DANGER = `Releasing terminates that PostgreSQL session (pg_terminate_backend). If it is running a migration, the migration is cut off mid-way: its open transaction rolls back, but steps already committed stay (a migration without a transaction can be left half-applied, CREATE INDEX CONCURRENTLY can leave an INVALID index), and the process that held the lock fails. Release only a holder that is stuck or gone.`;

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
      const status = await getLockStatus(connection, ctx.key);
      if (!status.holder) {
        out.success(`No lock to release: migration lock ${ctx.keyLabel} is not held`);
        return;
      }
      const { pid } = status.holder;
      if (!out.quiet) {
        // The holder's query may hold a password (ALTER ROLE … PASSWORD): scrubbed like every other line.
        process.stderr.write(
          out.scrub(`Migration lock ${ctx.keyLabel} is held by:\n${formatHolder(out, status.holder).join('\n')}\n`),
        );
      }
      out.warn(DANGER);

      if (!flags.yes) {
        if (!process.stdin.isTTY || !process.stderr.isTTY) {
          throw new UsageError('Not releasing: there is no terminal to confirm on. Add --yes to confirm.');
        }
        if (!(await confirm(`Terminate pid ${pid} and release the lock? [y/N] `))) {
          throw new CliError('Not released: nothing was terminated');
        }
      }

      // Only the session shown: a human may take a while to answer, and the lock may change hands meanwhile.
      let result: Awaited<ReturnType<typeof releaseLock>>;
      try {
        result = await releaseLock(connection, ctx.key, { pid });
      } catch (err) {
        // insufficient_privilege: say which role lacks which right, not just PostgreSQL's "permission denied".
        if ((err as { code?: unknown }).code === '42501') throw await releaseRefused(connection, pid, err);
        throw err;
      }
      if (result.released) {
        out.success(`Released migration lock ${ctx.keyLabel}: terminated pid ${result.pid}`);
        return;
      }
      const now = await getLockStatus(connection, ctx.key);
      if (now.holder) {
        throw new CliError(
          `Not released: the lock changed hands; it is now held by ${describeSession(now.holder)}. Run the command again.`,
        );
      }
      out.success(`No lock to release: pid ${pid} released it meanwhile`);
    });
}

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
