import type { Blocker } from './sql/blockers.js';
import type { Holder } from './status.js';

/** Base class of every error this library throws about the lock itself. */
export class MigrationLockError extends Error {
  /** The lock key. */
  readonly key: bigint;
  /** The session holding the lock, when it was known. */
  readonly holder: Holder | null;

  constructor(message: string, key: bigint, holder: Holder | null = null, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.key = key;
    this.holder = holder;
  }
}

/** `wait: false` and another session holds the lock. */
export class MigrationLockBusyError extends MigrationLockError {}

/** `timeoutMs` elapsed before the lock could be taken. */
export class MigrationLockTimeoutError extends MigrationLockError {
  /** How long the call waited, in milliseconds. */
  readonly waitedMs: number;

  constructor(message: string, key: bigint, holder: Holder | null, waitedMs: number, options?: { cause?: unknown }) {
    super(message, key, holder, options);
    this.waitedMs = waitedMs;
  }
}

/** The session holding the lock was lost while `fn` ran; `cause` is the connection's own error. */
export class MigrationLockLostError extends MigrationLockError {}

/**
 * `lockTimeoutMs`/`lockRetries`: every try of `fn` failed on a lock timeout (SQLSTATE 55P03), the last one too.
 * `cause` is the last try's own error; `blockers` the sessions that held the table lock it waited for.
 */
export class MigrationBlockedError extends MigrationLockError {
  /** How many times `fn` was called. */
  readonly tries: number;
  /** Who blocked the last try (see `Blocker.seen`); empty when none could be found. */
  readonly blockers: Blocker[];
  /** The SQLSTATE of the last try's error, so code that looks for 55P03 still finds it. */
  readonly code = '55P03';

  constructor(message: string, key: bigint, tries: number, blockers: Blocker[], options?: { cause?: unknown }) {
    super(message, key, null, options);
    this.tries = tries;
    this.blockers = blockers;
  }
}

/** "backend pid 123 (application_name app-name)": how messages name a holder, its two names labelled. */
export function describeHolder(holder: Holder | null): string {
  if (!holder) return 'another session';
  const name = holder.applicationName ? ` (application_name ${holder.applicationName})` : '';
  return `backend pid ${holder.pid}${name}`;
}

/** `code` of the error an adapter throws when its migrator is not installed (the CLI exits 2 on it). */
export const MISSING_MIGRATOR = 'ERR_PG_MIGRATION_LOCK_MISSING_MIGRATOR';

/** The error for a migrator that is not installed: it names the package to install. */
export function missingMigrator(adapter: string, pkg: string, cause: unknown): Error {
  return Object.assign(new Error(`pg-migration-lock/${adapter} needs ${pkg}: npm install ${pkg}`, { cause }), {
    code: MISSING_MIGRATOR,
  });
}
