import { spawn } from 'node:child_process';
import { accessSync, constants, type Stats, statSync } from 'node:fs';
import type { Socket } from 'node:net';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { asUrl } from '../../driver/conninfo.js';
import { withSearchParam } from '../../driver/pg.js';
import { MigrationBlockedError, MigrationLockLostError } from '../../errors.js';
import { withMigrationLock } from '../../lock/lock.js';
import { errorMessage } from '../../logger.js';
import { announceTarget, clientConfig, createContext, databaseUrl } from '../context.js';
import { CliError, InterruptedError, signalExitCode } from '../errors.js';
import {
  addLockTimeoutFlags,
  type CmdLockTimeout,
  cmdLockTimeout,
  cmdLockTimeoutOf,
  withLockTimeout,
} from '../lock-timeout.js';
import { addLockFlags, type LockFlags, lockOptions } from '../locking.js';
import type { Output } from '../output.js';
import type { ReaperMessage } from '../reaper.js';
import { cmdDatabase, cmdDatabaseName, reachesServerDirectly } from './cmd-database.js';

/**
 * How long CMD gets to exit after SIGTERM when the lock is lost or the CLI's parent is gone, before SIGKILL:
 * with the parent check every 0.5 s, the lock is free within the SPEC's 15 s.
 */
const KILL_AFTER_MS = 10_000;

// Beside this file in dist/cli/ (the CLI is built as ESM only), however the CLI was started: an npm bin
// link, npx, a path.
const REAPER = fileURLToPath(new URL('./reaper.js', import.meta.url));

/** CMD, running under the reaper (./reaper.ts) in a process group of its own. */
interface Cmd {
  /** Signals CMD's whole group, once: a Ctrl-C at the terminal reaches only the CLI, which passes it on here. */
  signal(signal: NodeJS.Signals): void;
  /** SIGTERM now, SIGKILL to the group if it has not exited after KILL_AFTER_MS. */
  stop(): void;
  /** CMD's exit code as a shell reports it (128+n for a signal), or the spawn's failure. */
  exited: Promise<number>;
}

/**
 * Starts CMD, under a reaper that kills CMD's group if this process dies. With `tag`, CMD gets the holding's tag as
 * `PGAPPNAME` (and as `application_name` in a `DATABASE_URL` it reads), so the next holder can stop its statements.
 */
function startCmd(file: string, args: string[], tag: string | undefined, shown: string, lt: CmdLockTimeout): Cmd {
  const env: NodeJS.ProcessEnv = { ...process.env };
  if (tag !== undefined) {
    env.PGAPPNAME = tag;
    if (env.DATABASE_URL) env.DATABASE_URL = withSearchParam(asUrl(env.DATABASE_URL), 'application_name', tag);
  }
  if (lt.ms !== undefined) env.PGOPTIONS = withLockTimeout(env.PGOPTIONS, lt.ms);
  const reaper = spawn(process.execPath, [REAPER, file, ...args], {
    // With a lock timeout, CMD's stderr is passed through here, to tell a failure by lock timeout (lock-timeout.ts).
    stdio: ['inherit', 'inherit', lt.scan ? 'pipe' : 'inherit', 'pipe'],
    detached: true,
    env,
  });
  reaper.stderr?.on('data', (chunk: Buffer) => {
    process.stderr.write(chunk);
    lt.scan?.feed(chunk);
  });
  const group = reaper.pid!;
  const signal = (sig: NodeJS.Signals) => {
    try {
      process.kill(-group, sig);
    } catch {
      // the group is gone already
    }
  };
  let reported: ReaperMessage | undefined;
  let text = '';
  const control = reaper.stdio[3] as Socket;
  control.on('data', (chunk) => {
    text += chunk;
    if (text.includes('\n')) reported = JSON.parse(text) as ReaperMessage;
  });
  control.on('error', () => {});
  let killer: NodeJS.Timeout | undefined;
  const exited = new Promise<number>((resolve, reject) => {
    reaper.once('error', (err: NodeJS.ErrnoException) => reject(spawnError(err, process.execPath, shown)));
    reaper.once('close', (code, sig) => {
      clearTimeout(killer);
      if (reported && 'error' in reported)
        reject(spawnError(Object.assign(new Error(reported.message), { code: reported.error }), file, shown));
      else if (reported) resolve(reported.code ?? signalExitCode(reported.signal ?? 'SIGTERM'));
      // The reaper itself was killed (with CMD's group): that is how CMD ended.
      else resolve(code ?? signalExitCode(sig ?? 'SIGKILL'));
    });
  });
  return {
    signal,
    stop() {
      signal('SIGTERM');
      killer ??= setTimeout(() => signal('SIGKILL'), KILL_AFTER_MS);
    },
    exited,
  };
}

/** Exit codes of a shell for a command it cannot run. */
const NOT_FOUND = 127;
const NOT_EXECUTABLE = 126;

/**
 * Why a shell could not run `file` (127: not found, 126: found but not executable), looked up in PATH like
 * execvp does; undefined when it can be run.
 */
function whyNotRunnable(file: string): CliError | undefined {
  const candidates = file.includes('/')
    ? [file]
    : (process.env.PATH ?? '').split(delimiter).map((dir) => join(dir || '.', file));
  let found: string | undefined;
  for (const path of candidates) {
    let stats: Stats;
    try {
      stats = statSync(path);
    } catch {
      continue;
    }
    if (stats.isFile() && isExecutable(path)) return undefined;
    // In PATH a directory of that name is skipped, as a shell does; a path given is what was asked for.
    if (stats.isFile() || file.includes('/')) found ??= path;
  }
  if (found === undefined) {
    return new CliError(
      `Command not found: ${file}`,
      NOT_FOUND,
      file.includes('/')
        ? undefined
        : 'Check the spelling, or install it (or give its path); PATH is searched like a shell does.',
    );
  }
  return new CliError(`Permission denied: ${found} is not an executable file`, NOT_EXECUTABLE, `chmod +x ${found}?`);
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** A spawn that failed anyway (the file changed since the check): the shell's exit codes still apply. */
function spawnError(err: NodeJS.ErrnoException, file: string, shown: string): CliError {
  if (err.code === 'ENOENT') return new CliError(`Command not found: ${file}`, NOT_FOUND);
  if (err.code === 'EACCES') return new CliError(`Permission denied: cannot run ${file}`, NOT_EXECUTABLE);
  return new CliError(`Cannot run \`${shown}\`: ${err.message}`, NOT_EXECUTABLE);
}

export function registerRun(program: Command, out: Output): Command {
  const run = addLockFlags(
    program
      .command('run')
      .summary('hold the lock while a command runs (any migrator)')
      .description(
        "Take the lock, run CMD with the same stdio, and release the lock when it exits. Exits with CMD’s exit code (128+n if a signal killed it). SIGINT and SIGTERM are forwarded to CMD, once. CMD gets the holding's fencing tag as PGAPPNAME (and as application_name in DATABASE_URL), so the next holder terminates whatever statement of it is still running before it starts. If the lock session is lost while CMD runs, CMD is stopped (and its tagged statements terminated) and the command fails (exit 1). If this process is killed, CMD's process group is killed with it. If the process that started this one goes away (an npx wrapper or CI runner killed), CMD gets SIGTERM (SIGKILL after 10 s) and the lock is released. A CMD that cannot be run exits 127 (not found) or 126 (not executable), without taking the lock.",
      )
      .argument('<cmd...>', 'the command and its arguments (put them after --)'),
  );
  return addLockTimeoutFlags(run, true)
    .passThroughOptions()
    .addHelpText(
      'after',
      `
Examples:
  $ pg-migration-lock run -- npx prisma migrate deploy
  $ pg-migration-lock run --timeout 5m -- dbmate up
  $ pg-migration-lock run --name billing --no-wait -- npx sequelize-cli db:migrate
  $ pg-migration-lock run --lock-timeout 2s --lock-retries 10 -- npx prisma migrate deploy`,
    )
    .action(async (argv: string[], flags: LockFlags, command: Command) => {
      const ctx = createContext(command, out);
      const url = databaseUrl(command, out, true);
      const [file, ...args] = argv as [string, ...string[]];
      const shown = argv.join(' ');

      let cmd: Cmd | undefined;
      let interrupted: NodeJS.Signals | undefined;
      // Before any connection: a CMD a shell could not run never takes the lock.
      const notRunnable = whyNotRunnable(file);
      if (notRunnable) throw notRunnable;
      announceTarget(out);

      // Whether CMD's connections may carry the tag: checked while the lock is being taken.
      const fenceable = reachesServerDirectly(cmdDatabase(url)).catch((err: unknown) => ({
        direct: false,
        why: `could not check it: ${errorMessage(err)}`,
      }));
      const lock = lockOptions(ctx, flags, (signal, why) => {
        // Kept even while CMD runs: between lock-timeout tries there is no CMD, and no next try may start.
        interrupted ??= signal;
        if (!cmd) return;
        // CMD decides what a signal means (finish the current migration, roll back…); we wait for it. With
        // the parent gone nobody waits for us, so CMD gets a bounded grace and the lock is freed in time.
        if (why === 'parent-gone') cmd.stop();
        else cmd.signal(signal);
      });
      try {
        process.exitCode = await withMigrationLock(
          clientConfig(url),
          ctx.key,
          async ({ signal: lockLost, tag }) => {
            if (interrupted) throw new InterruptedError(interrupted);
            lockLost.throwIfAborted();
            const { direct, why } = await fenceable;
            if (!direct) {
              out.warn(
                `CMD's connections are not tagged for fencing: its database (${cmdDatabaseName()}) ${why}. A pooler's server connections go on to serve other clients, which a later holder must never terminate, so if this lock is lost CMD is stopped, but statements it left running on the server cannot be. To fence them, give CMD a direct URL (the server's own host and port).`,
              );
            }
            lockLost.throwIfAborted();
            const lt = cmdLockTimeoutOf(flags);
            const running = startCmd(file, args, direct ? tag : undefined, shown, lt);
            cmd = running;
            // The core reports the loss as it happens, and terminates CMD's tagged statements; the final error
            // says what became of CMD.
            const onLost = () => running.stop();
            lockLost.addEventListener('abort', onLost, { once: true });
            try {
              const code = await running.exited;
              out.event(code === 0 ? 'info' : 'warn', 'run.exited', `${shown} exited with code ${code}`, {
                exitCode: code,
              });
              // Failed on a lock timeout: the core runs CMD again (or names the blocker after the last try).
              if (code !== 0 && lt.scan?.matched && !interrupted) throw cmdLockTimeout(shown, code);
              return code;
            } finally {
              lockLost.removeEventListener('abort', onLost);
            }
          },
          lock.options,
        );
      } catch (err) {
        // The last try failed on a lock timeout too: the blocker is named, and CMD's own exit code kept.
        const cmdCode = (err as { cause?: { exitCode?: unknown } }).cause?.exitCode;
        if (err instanceof MigrationBlockedError && typeof cmdCode === 'number')
          throw new CliError(err.message, cmdCode);
        if (err instanceof MigrationLockLostError) {
          throw new CliError(
            `Lost the migration lock while \`${shown}\` ran (${errorMessage(err.cause ?? err)}): it was stopped (SIGTERM), its statements still running on the server were terminated, and what it was doing may be incomplete. Check the database, then run it again.`,
          );
        }
        throw err;
      } finally {
        lock.dispose();
      }
    });
}
