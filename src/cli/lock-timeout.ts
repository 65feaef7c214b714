// --lock-timeout and --lock-retries (migrate, run): their flags, and for `run` how CMD gets the lock timeout
// (PGOPTIONS) and how a failure of CMD is told to be a lock timeout (its stderr), so that it is run again.
import { type Command, InvalidArgumentError, Option } from 'commander';
import { parseDurationArg } from './context.js';

export interface LockTimeoutFlags {
  /** Milliseconds, parsed from a duration. */
  lockTimeout?: number;
  lockRetries?: number;
}

// lock_timeout is an int4 of milliseconds; 0 would mean no timeout at all.
const MAX_MS = 2_147_483_647;

function parseLockTimeout(value: string): number {
  const ms = parseDurationArg(value);
  if (ms < 1 || ms > MAX_MS) throw new InvalidArgumentError(`Expected a duration from 1ms to ${MAX_MS}ms.`);
  return ms;
}

function parseRetries(value: string): number {
  const n = /^\d+$/.test(value.trim()) ? Number(value) : Number.NaN;
  if (!Number.isInteger(n) || n > 1000) throw new InvalidArgumentError('Expected an integer from 0 to 1000.');
  return n;
}

export function addLockTimeoutFlags(command: Command, forRun: boolean): Command {
  const where = forRun ? "CMD's statements (PGOPTIONS=-c lock_timeout=…)" : "the migration's statements";
  return command
    .addOption(
      new Option(
        '--lock-timeout <duration>',
        `${where} wait at most this long for a table lock, e.g. 500ms, 2s; then the run is tried again`,
      ).argParser(parseLockTimeout),
    )
    .addOption(
      new Option(
        '--lock-retries <n>',
        `tries after a lock timeout (SQLSTATE 55P03${forRun ? ' in CMD’s stderr' : ''}), the lock held (default 5 with --lock-timeout)`,
      ).argParser(parseRetries),
    );
}

/** `--lock-timeout` for CMD (PGOPTIONS), and the scan of its stderr when a lock timeout may be retried. */
export interface CmdLockTimeout {
  ms?: number;
  scan?: LockTimeoutScan;
}

/** A try's CMD settings: its lock_timeout, and a fresh scan of its stderr when a lock timeout is retried. */
export const cmdLockTimeoutOf = ({ lockTimeout, lockRetries }: LockTimeoutFlags): CmdLockTimeout => ({
  ms: lockTimeout,
  scan: lockTimeout !== undefined || lockRetries !== undefined ? new LockTimeoutScan() : undefined,
});

/** The lock options these flags give (none when neither is set). */
export const lockTimeoutOptions = ({ lockTimeout, lockRetries }: LockTimeoutFlags) => ({
  ...(lockTimeout !== undefined && { lockTimeoutMs: lockTimeout }),
  ...(lockRetries !== undefined && { lockRetries }),
});

/** CMD's PGOPTIONS with `-c lock_timeout=<ms>` appended (libpq reads it: psql, node-postgres, most drivers). */
export function withLockTimeout(pgOptions: string | undefined, ms: number): string {
  return [pgOptions?.trim(), `-c lock_timeout=${ms}`].filter(Boolean).join(' ');
}

// How a lock timeout reads in CMD's output: its SQLSTATE, or PostgreSQL's message ("canceling statement due to
// lock timeout"), as drivers and migrators print them.
const LOCK_TIMEOUT_TEXT = /55P03|lock timeout/i;

/**
 * Watches CMD's stderr (passed through as it comes) for a lock timeout. A match may straddle two chunks: the end of
 * the previous one is kept.
 */
export class LockTimeoutScan {
  #tail = '';
  matched = false;

  feed(chunk: Buffer | string): void {
    const text = this.#tail + chunk.toString();
    if (LOCK_TIMEOUT_TEXT.test(text)) this.matched = true;
    this.#tail = text.slice(-16);
  }
}

/**
 * What a try of `run` fails with when CMD exited non-zero and said "lock timeout" or 55P03 on stderr: an error with
 * the code of a lock timeout, for the core to run CMD again (or, after the last try, to name the blocker).
 */
export function cmdLockTimeout(shown: string, exitCode: number): Error & { code: string; exitCode: number } {
  return Object.assign(new Error(`\`${shown}\` exited with code ${exitCode} after a lock timeout (stderr)`), {
    code: '55P03',
    exitCode,
  });
}
