import { constants } from 'node:os';
import { isConnectFailure } from '../driver/errors.js';
import { MISSING_MIGRATOR, MigrationLockBusyError, MigrationLockTimeoutError } from '../errors.js';
import { errorMessage } from '../logger.js';

/** The SPEC's exit codes. */
export const EXIT = {
  ok: 0,
  failure: 1,
  usage: 2,
  /** EX_TEMPFAIL from sysexits.h: the lock was not acquired, try again later. */
  notAcquired: 75,
} as const;

/** A failure the CLI explains itself: the message is printed as-is and the process exits with `exitCode`. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = EXIT.failure,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** Bad flags or configuration: anything the user can fix without the database being involved. */
export class UsageError extends CliError {
  constructor(message: string, hint?: string) {
    super(message, EXIT.usage, hint);
  }
}

/** A SIGINT/SIGTERM that stopped the command; exits like a shell would report it (128 + signal number). */
export class InterruptedError extends CliError {
  constructor(readonly signal: NodeJS.Signals) {
    super(`Interrupted by ${signal}`, signalExitCode(signal));
  }
}

/** The process that started the CLI went away while it waited for the lock: the wait is given up. */
export class ParentGoneError extends CliError {
  constructor() {
    super('The process that started pg-migration-lock is gone: stopped waiting for the lock', signalExitCode('SIGHUP'));
  }
}

export function signalExitCode(signal: NodeJS.Signals): number {
  return 128 + (constants.signals[signal] ?? 0);
}

/** The error says we could not connect (unreachable, refused, authentication, no such database, TLS): the driver's one classifier. */
export const isConnectError = isConnectFailure;

/**
 * The connection offered no password where the server asks for one: pg's own SCRAM error ("client password
 * must be a string") or the server's answer to an empty password (method `password`); the error or its cause.
 */
export function isMissingPassword(err: unknown): boolean {
  let current = err;
  for (let depth = 0; current && depth < 3; depth++) {
    if (/client password must be a (non-empty )?string|empty password returned by client/.test(errorMessage(current))) {
      return true;
    }
    current = (current as { cause?: unknown }).cause;
  }
  return false;
}

/** Maps any error to the SPEC's exit code. */
export function exitCodeOf(err: unknown): number {
  if (err instanceof CliError) return err.exitCode;
  if (err instanceof MigrationLockBusyError || err instanceof MigrationLockTimeoutError) return EXIT.notAcquired;
  // A migrator that is not installed is a set-up problem, like a missing migrations folder.
  if ((err as { code?: unknown } | null)?.code === MISSING_MIGRATOR) return EXIT.usage;
  return EXIT.failure;
}
