import { type ChildProcess, spawn } from 'node:child_process';
import type { Command } from 'commander';
import { MigrationLockLostError } from '../../errors.js';
import { withMigrationLock } from '../../lock.js';
import { errorMessage } from '../../logger.js';
import { clientConfig, createContext, databaseUrl } from '../context.js';
import { CliError, InterruptedError, signalExitCode } from '../errors.js';
import { addLockFlags, type LockFlags, lockOptions } from '../locking.js';
import type { Output } from '../output.js';

/** How long CMD gets to exit after SIGTERM when the lock is lost, before SIGKILL. */
const KILL_AFTER_MS = 10_000;

export function registerRun(program: Command, out: Output): Command {
  return addLockFlags(
    program
      .command('run')
      .summary('hold the lock while a command runs (any migrator)')
      .description(
        'Take the lock, run CMD with the same stdio, and release the lock when it exits. Exits with CMD’s exit code (128+n if a signal killed it). SIGINT and SIGTERM are forwarded to CMD. If the lock session is lost while CMD runs, CMD is stopped and the command fails (exit 1).',
      )
      .argument('<cmd...>', 'the command and its arguments (put them after --)'),
  )
    .passThroughOptions()
    .addHelpText(
      'after',
      `
Examples:
  $ pg-migration-lock run -- npx prisma migrate deploy
  $ pg-migration-lock run --timeout 5m -- dbmate up
  $ pg-migration-lock run --name billing --no-wait -- npx sequelize-cli db:migrate`,
    )
    .action(async (argv: string[], flags: LockFlags, command: Command) => {
      const ctx = createContext(command, out);
      const url = databaseUrl(command, out, true);
      const [file, ...args] = argv as [string, ...string[]];
      const shown = argv.join(' ');

      let child: ChildProcess | undefined;
      let interrupted: NodeJS.Signals | undefined;
      const lock = lockOptions(ctx, flags, (signal) => {
        // CMD decides what a signal means (finish the current migration, roll back…); we wait for it.
        if (child) child.kill(signal);
        else interrupted ??= signal;
      });
      try {
        process.exitCode = await withMigrationLock(
          clientConfig(url),
          ctx.key,
          async ({ signal: lockLost }) => {
            if (interrupted) throw new InterruptedError(interrupted);
            lockLost.throwIfAborted();
            const running = spawn(file, args, { stdio: 'inherit' });
            child = running;
            // The core reports the loss as it happens; the final error says what became of CMD.
            const onLost = () => {
              running.kill('SIGTERM');
              setTimeout(() => running.kill('SIGKILL'), KILL_AFTER_MS).unref();
            };
            lockLost.addEventListener('abort', onLost, { once: true });
            try {
              return await new Promise<number>((resolve, reject) => {
                running.once('error', (err: NodeJS.ErrnoException) =>
                  reject(
                    new CliError(
                      err.code === 'ENOENT' ? `Command not found: ${file}` : `Cannot run \`${shown}\`: ${err.message}`,
                    ),
                  ),
                );
                running.once('exit', (code, signal) => resolve(code ?? signalExitCode(signal ?? 'SIGTERM')));
              });
            } finally {
              lockLost.removeEventListener('abort', onLost);
            }
          },
          lock.options,
        );
      } catch (err) {
        if (err instanceof MigrationLockLostError) {
          throw new CliError(
            `Lost the migration lock while \`${shown}\` ran (${errorMessage(err.cause ?? err)}): it was stopped (SIGTERM), and what it was doing may be incomplete. Check the database, then run it again.`,
          );
        }
        throw err;
      } finally {
        lock.dispose();
      }
    });
}
