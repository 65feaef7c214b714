// The options of a lock call and what its hooks receive: types, defaults, and the up-front checks that
// turn bad options into a TypeError before anything touches the database.
import type pg from 'pg';
import type { MigrationBlockedError, MigrationLockLostError } from '../errors.js';
import { type Logger, resolveLogger } from '../logger.js';
import { checkOptionNames } from '../option-names.js';
import type { Holder } from '../sql/status.js';

/** What `fn` receives while it holds the lock. */
export interface LockContext<C = pg.ClientBase> {
  /** The very session that holds the lock: run the migration on it, so lock and migration share fate. */
  client: C;
  key: bigint;
  /** Aborts if the lock session is lost (terminated, network error) while `fn` runs. */
  signal: AbortSignal;
  /** How long acquiring took, in milliseconds (0 when the lock was free). */
  waitedMs: number;
  /**
   * This holding's fencing tag, `pg-migration-lock:<key>:<token>`: the lock session's `application_name`
   * while `fn` runs. Give it as `application_name` (or `PGAPPNAME`) to any other connection `fn` migrates
   * on: the next holder terminates such connections before it starts, and they are terminated at once if
   * this holding loses its session.
   */
  tag: string;
}

export interface WaitingInfo {
  key: bigint;
  /** The session holding the lock, when visible. */
  holder: Holder | null;
  /**
   * The holding's work: other sessions wearing its tag (a `run` command's connections, fn's extra ones), each
   * with what it runs (`query`, `queryStart`, `progress`): where the holder's statements run when it is idle.
   */
  work: Holder[];
  /** How long this call has waited so far, in milliseconds. */
  waitedMs: number;
}

export interface AcquiredInfo {
  key: bigint;
  /** Backend pid of the session now holding the lock. */
  pid: number;
  waitedMs: number;
  /** This holding's fencing tag (see {@link LockContext.tag}). */
  tag: string;
}

export interface ReleasedInfo {
  key: bigint;
  pid: number;
  /** How long the lock was held, in milliseconds. */
  heldMs: number;
}

/** Lifecycle callbacks. A hook that throws (or rejects) is logged and never fails the run. */
export interface LockHooks {
  /**
   * The lock is held by another session: called when waiting starts, then every `reportEveryMs`. Setting it
   * takes the waiting report over: the logger's line about it then comes at debug level, not info.
   */
  onWaiting?(info: WaitingInfo): void;
  onAcquired?(info: AcquiredInfo): void;
  onReleased?(info: ReleasedInfo): void;
  /** Unlocking failed; the call still succeeds (a pooled connection is destroyed instead). */
  onUnlockError?(error: unknown): void;
  /** The lock session was lost while `fn` ran; `ctx.signal` aborts with the same error. */
  onLockLost?(error: MigrationLockLostError): void;
}

export interface MigrationLockOptions {
  /**
   * Wait for the lock when another session holds it. `false`: one try, then `MigrationLockBusyError`.
   * @default true
   */
  wait?: boolean;
  /**
   * Give up waiting after this many milliseconds with `MigrationLockTimeoutError`.
   * @default undefined (wait as long as it takes)
   * @example { timeoutMs: 5 * 60_000 }
   */
  timeoutMs?: number;
  /**
   * Where to report waiting, holders and unlock problems: `console`, a pino logger, or `null` for silence.
   * @default console, each line prefixed with `[pg-migration-lock]`
   */
  logger?: Logger | null;
  /**
   * While waiting, report who holds the lock (pid, application_name, how long we waited) this often.
   * @default 10000
   */
  reportEveryMs?: number;
  /** Lifecycle callbacks, see {@link LockHooks}. */
  hooks?: LockHooks;
  /**
   * `application_name` of connections we open (connection string or config forms); also the readable end
   * of the fencing tag a holding's session carries.
   * @default `pg-migration-lock:<host>:<pid>`
   */
  applicationName?: string;
  /**
   * Stop waiting when this signal aborts; the call rejects with the signal's reason. It does not stop `fn`.
   * @default undefined
   */
  signal?: AbortSignal;
  /**
   * While waiting, retry about this often (0.9 to 1.3 times it) when no release notification arrives: a holder
   * that died, or one that is not using this library, cannot notify. A release by this library wakes a
   * waiter at once, so this only bounds how soon a dead holder's lock is noticed, and each waiting
   * session costs the server about one statement per interval.
   * @default 1000
   */
  pollIntervalMs?: number;
  /**
   * How messages name the key, e.g. `"billing" (key 123…)`; the CLI passes its own.
   * @default the key, and whose it is for a key of the key table: `-4853655304891776800 (default key)`
   */
  keyLabel?: string;
  /**
   * While `fn` runs, the lock session's `lock_timeout`: a statement of the migration waits at most this long for
   * a table lock (an `ALTER TABLE` behind a long transaction), instead of making every app query on that table
   * queue behind it. It bounds lock waits only: a long statement that is not waiting for a lock is not affected.
   * Other connections `fn` migrates on need it too: give them `-c lock_timeout=<ms>` (the CLI's `run` does, in
   * PGOPTIONS). A whole number of milliseconds from 1 to 2147483647.
   * @default undefined (the session's own lock_timeout, usually none)
   */
  lockTimeoutMs?: number;
  /**
   * When `fn` fails on a lock timeout (SQLSTATE 55P03, looked for through `cause` chains and the wrappers of
   * knex, TypeORM, Sequelize, MikroORM, drizzle and umzug), call it again, up to this many more times, the
   * advisory lock held throughout, after a back-off of min(5 s, 100 ms × 2^(n−1)) × a random 0.8 to 1.2 before
   * retry n. Each failed try is logged at warn with the session that blocked it; after the last, the call rejects
   * with a {@link MigrationBlockedError} naming it. `fn` must be safe to call again: a migrator's run is (what
   * failed rolled back with its transaction; what committed is no longer pending).
   * @default 5 with `lockTimeoutMs`, else 0
   */
  lockRetries?: number;
}

export type ResolvedOptions = Required<
  Pick<MigrationLockOptions, 'wait' | 'reportEveryMs' | 'pollIntervalMs' | 'lockRetries'>
> &
  Pick<MigrationLockOptions, 'timeoutMs' | 'applicationName' | 'signal' | 'keyLabel' | 'lockTimeoutMs'> & {
    logger: Logger;
    hooks: LockHooks;
  };

/** `lockRetries` when `lockTimeoutMs` is given without it. */
export const DEFAULT_LOCK_RETRIES = 5;
// lock_timeout is an int4 of milliseconds.
const MAX_LOCK_TIMEOUT_MS = 2_147_483_647;

/** Every option of a lock call: anything else in an options object is a typo, refused by {@link resolveOptions}. */
export const LOCK_OPTION_NAMES: readonly string[] = [
  'wait',
  'timeoutMs',
  'logger',
  'reportEveryMs',
  'hooks',
  'applicationName',
  'signal',
  'pollIntervalMs',
  'keyLabel',
  'lockTimeoutMs',
  'lockRetries',
] satisfies (keyof MigrationLockOptions)[];
const HOOK_NAMES = [
  'onWaiting',
  'onAcquired',
  'onReleased',
  'onUnlockError',
  'onLockLost',
] satisfies (keyof LockHooks)[];

/**
 * Checks and completes a lock call's options. `also` names the keys the caller's own options object may hold
 * beside them (an adapter's `lock` holds `key`): any other key is a TypeError naming it and the nearest known one.
 */
export function resolveOptions(options: MigrationLockOptions, also: readonly string[] = []): ResolvedOptions {
  if (options === null || typeof options !== 'object') {
    throw new TypeError(`Expected \`options\` to be an object, got ${options === null ? 'null' : typeof options}`);
  }
  checkOptionNames(options, [...LOCK_OPTION_NAMES, ...also], 'option');
  const { wait = true, timeoutMs, reportEveryMs = 10_000, pollIntervalMs = 1_000, hooks = {} } = options;
  if (typeof wait !== 'boolean') throw new TypeError(`Expected \`wait\` to be a boolean, got ${typeof wait}`);
  checkMs('timeoutMs', timeoutMs, 0, true);
  checkMs('reportEveryMs', reportEveryMs, 1, false);
  checkMs('pollIntervalMs', pollIntervalMs, 10, false);
  if (hooks === null || typeof hooks !== 'object') throw new TypeError('Expected `hooks` to be an object of callbacks');
  checkOptionNames(hooks, HOOK_NAMES, 'hook');
  for (const [name, hook] of Object.entries(hooks)) {
    if (hook !== undefined && typeof hook !== 'function') {
      throw new TypeError(`Expected hook \`${name}\` to be a function, got ${typeof hook}`);
    }
  }
  for (const name of ['applicationName', 'keyLabel'] as const) {
    if (options[name] !== undefined && typeof options[name] !== 'string') {
      throw new TypeError(`Expected \`${name}\` to be a string, got ${typeof options[name]}`);
    }
  }
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) {
    throw new TypeError('Expected `signal` to be an AbortSignal');
  }
  const { lockTimeoutMs, lockRetries = lockTimeoutMs === undefined ? 0 : DEFAULT_LOCK_RETRIES } = options;
  checkCount('lockTimeoutMs', lockTimeoutMs, 1, MAX_LOCK_TIMEOUT_MS, true);
  checkCount('lockRetries', lockRetries, 0, 1_000, false);
  return {
    wait,
    timeoutMs,
    reportEveryMs,
    pollIntervalMs,
    hooks,
    logger: resolveLogger(options.logger),
    applicationName: options.applicationName,
    signal: options.signal,
    keyLabel: options.keyLabel,
    lockTimeoutMs,
    lockRetries,
  };
}

/** A whole-number option: a TypeError when it is not a number, a RangeError when it is not a whole one in range. */
function checkCount(name: string, value: unknown, min: number, max: number, optional: boolean): void {
  if (value === undefined && optional) return;
  if (typeof value !== 'number') throw new TypeError(`Expected \`${name}\` to be a number, got ${typeof value}`);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`Expected \`${name}\` to be a whole number from ${min} to ${max}, got ${value}`);
  }
}

/** A duration option in milliseconds: a finite number of at least `min` (or absent, when optional). */
export function checkMs(name: string, value: unknown, min: number, optional: boolean): void {
  if (value === undefined && optional) return;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min) {
    throw new TypeError(`Expected \`${name}\` to be a finite number of milliseconds >= ${min}, got ${String(value)}`);
  }
}
