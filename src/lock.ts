import type pg from 'pg';
import {
  describeHolder,
  MigrationLockBusyError,
  MigrationLockError,
  MigrationLockLostError,
  MigrationLockTimeoutError,
} from './errors.js';
import { keyParts, type LockKeyInput, parseKey } from './key.js';
import { callSafely, errorMessage, type Logger, resolveLogger } from './logger.js';
import type { PostgresJsReservedSql, PostgresJsSql, ReservedOf } from './postgres-js.js';
import { type ClientSource, type Session, type SessionSource, sessionSource } from './session.js';
import { type Holder, lockRowsOf, queryLockStatus, waitingComment } from './status.js';

/** What `fn` receives while it holds the lock. */
export interface LockContext<C = pg.ClientBase> {
  /** The very session that holds the lock: run the migration on it, so lock and migration share fate. */
  client: C;
  key: bigint;
  /** Aborts if the lock session is lost (terminated, network error) while `fn` runs. */
  signal: AbortSignal;
  /** How long acquiring took, in milliseconds (0 when the lock was free). */
  waitedMs: number;
}

export interface WaitingInfo {
  key: bigint;
  /** The session holding the lock, when visible. */
  holder: Holder | null;
  /** How long this call has waited so far, in milliseconds. */
  waitedMs: number;
}

export interface AcquiredInfo {
  key: bigint;
  /** Backend pid of the session now holding the lock. */
  pid: number;
  waitedMs: number;
}

export interface ReleasedInfo {
  key: bigint;
  pid: number;
  /** How long the lock was held, in milliseconds. */
  heldMs: number;
}

/** Lifecycle callbacks. A hook that throws (or rejects) is logged and never fails the run. */
export interface LockHooks {
  /** The lock is held by another session: called when waiting starts, then every `reportEveryMs`. */
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
   * `application_name` of connections we open (connection string or config forms).
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
}

// Sessions inside a call right now. Advisory locks are re-entrant per session, so two calls sharing
// one session would both "acquire" and exclude nothing.
const busySessions = new WeakSet<object>();

/** What a call resolves to when `isDone` ended its wait: it never took the lock and never ran `fn`. */
export const SKIPPED: unique symbol = Symbol('pg-migration-lock: skipped');

/**
 * Runs `fn` while holding a session-level PostgreSQL advisory lock on `key`, and releases it after.
 *
 * @param client a `pg.Pool`, a connected `pg.Client` / pool client, a connection string / `pg` config,
 *   a postgres.js `sql` (one connection is reserved for the call) or a reserved postgres.js `sql`.
 * @param key a bigint, a safe-integer number or a decimal string; see `lockKey(name)`.
 * @param fn gets the session holding the lock as `client`: a `pg` client, or for postgres.js the reserved `sql`.
 * @returns what `fn` returns; an error thrown by `fn` is rethrown as-is, after the lock is released.
 *
 * @example
 * await withMigrationLock(pool, DEFAULT_LOCK_KEY, async ({ client }) => {
 *   await client.query('CREATE TABLE IF NOT EXISTS accounts (id bigint PRIMARY KEY)');
 * });
 * @example
 * // postgres.js: `client` is the reserved sql
 * await withMigrationLock(sql, DEFAULT_LOCK_KEY, async ({ client }) => {
 *   await client`CREATE TABLE IF NOT EXISTS accounts (id bigint PRIMARY KEY)`;
 * });
 */
export function withMigrationLock<T, S extends PostgresJsSql | PostgresJsReservedSql>(
  client: S,
  key: LockKeyInput,
  fn: (ctx: LockContext<ReservedOf<S>>) => T | Promise<T>,
  options?: MigrationLockOptions,
): Promise<T>;
export function withMigrationLock<T>(
  client: ClientSource,
  key: LockKeyInput,
  fn: (ctx: LockContext) => T | Promise<T>,
  options?: MigrationLockOptions,
): Promise<T>;
export async function withMigrationLock<T>(
  client: ClientSource,
  key: LockKeyInput,
  fn: (ctx: LockContext<never>) => T | Promise<T>,
  options: MigrationLockOptions = {},
): Promise<T> {
  return (await lockFrom(client, key, fn, options)) as T;
}

/**
 * For adapters: `withMigrationLock`, except that it checks before queueing. `isDone(session)` is asked on
 * each session this call opens, before it tries the lock (one connection serves the check and the lock),
 * and again each time a holder releases the lock while this call waits. When it resolves true (nothing
 * is pending any more) the call resolves to {@link SKIPPED} without taking the lock. Safe as long as what
 * `fn` does re-checks under the lock, as every migrator does: a wrong "not done" only costs a wait.
 * An error of `isDone` (e.g. a corrupt migrations directory) reaches the caller as it is.
 */
export async function withMigrationLockUnless<T, C = pg.ClientBase>(
  client: ClientSource | SessionSource,
  key: LockKeyInput,
  fn: (ctx: LockContext<C>) => T | Promise<T>,
  options: MigrationLockOptions,
  isDone: (client: C) => Promise<boolean>,
): Promise<T | typeof SKIPPED> {
  if (typeof isDone !== 'function') throw new TypeError('Expected `isDone` to be a function');
  return lockFrom(client, key, fn, options, isDone);
}

async function lockFrom<T, C>(
  client: ClientSource | SessionSource,
  key: LockKeyInput,
  fn: (ctx: LockContext<C>) => T | Promise<T>,
  options: MigrationLockOptions,
  isDone?: (client: C) => Promise<boolean>,
): Promise<T | typeof SKIPPED> {
  const k = parseKey(key);
  if (typeof fn !== 'function') throw new TypeError(`Expected \`fn\` to be a function, got ${typeof fn}`);
  const opts = resolveOptions(options);
  const source = isSessionSource(client) ? client : sessionSource(client, { applicationName: opts.applicationName });
  opts.signal?.throwIfAborted();
  // A caller's session is marked before the first await, so two calls started in the same tick on it
  // cannot both get past the check (a pool hands each call a session of its own).
  const { borrowed } = source;
  if (borrowed && busySessions.has(borrowed)) {
    throw new TypeError(
      'This client is already inside withMigrationLock: advisory locks are re-entrant per session, so a second call on it would exclude nothing. Pass a pool or another client.',
    );
  }
  if (borrowed) busySessions.add(borrowed);
  try {
    const held = await acquireWithRetries(
      source,
      k,
      opts,
      isDone as ((client: unknown) => Promise<boolean>) | undefined,
    );
    if (held === SKIPPED) return SKIPPED;
    try {
      return await runLocked(held, k, fn as (ctx: LockContext<unknown>) => T | Promise<T>, opts);
    } finally {
      held.watch.dispose();
    }
  } finally {
    if (borrowed) busySessions.delete(borrowed);
  }
}

function isSessionSource(value: unknown): value is SessionSource {
  return typeof (value as SessionSource | null)?.open === 'function' && 'reopenable' in (value as object);
}

type ResolvedOptions = Required<Pick<MigrationLockOptions, 'wait' | 'reportEveryMs' | 'pollIntervalMs'>> &
  Pick<MigrationLockOptions, 'timeoutMs' | 'applicationName' | 'signal'> & { logger: Logger; hooks: LockHooks };

function resolveOptions(options: MigrationLockOptions): ResolvedOptions {
  if (options === null || typeof options !== 'object') {
    throw new TypeError(`Expected \`options\` to be an object, got ${options === null ? 'null' : typeof options}`);
  }
  const { wait = true, timeoutMs, reportEveryMs = 10_000, pollIntervalMs = 1_000, hooks = {} } = options;
  if (typeof wait !== 'boolean') throw new TypeError(`Expected \`wait\` to be a boolean, got ${typeof wait}`);
  checkMs('timeoutMs', timeoutMs, 0, true);
  checkMs('reportEveryMs', reportEveryMs, 1, false);
  checkMs('pollIntervalMs', pollIntervalMs, 10, false);
  if (hooks === null || typeof hooks !== 'object') throw new TypeError('Expected `hooks` to be an object of callbacks');
  for (const [name, hook] of Object.entries(hooks)) {
    if (hook !== undefined && typeof hook !== 'function') {
      throw new TypeError(`Expected hook \`${name}\` to be a function, got ${typeof hook}`);
    }
  }
  if (options.applicationName !== undefined && typeof options.applicationName !== 'string') {
    throw new TypeError(`Expected \`applicationName\` to be a string, got ${typeof options.applicationName}`);
  }
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) {
    throw new TypeError('Expected `signal` to be an AbortSignal');
  }
  return {
    wait,
    timeoutMs,
    reportEveryMs,
    pollIntervalMs,
    hooks,
    logger: resolveLogger(options.logger),
    applicationName: options.applicationName,
    signal: options.signal,
  };
}

function checkMs(name: string, value: unknown, min: number, optional: boolean): void {
  if (value === undefined && optional) return;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min) {
    throw new TypeError(`Expected \`${name}\` to be a finite number of milliseconds >= ${min}, got ${String(value)}`);
  }
}

/** Notices the session dying (backend terminated, socket closed) and remembers why. */
function watchSession(session: Session) {
  let lostError: unknown;
  let onLost: ((error: unknown) => void) | undefined;
  const dispose = session.onLost((error) => {
    lostError = error;
    onLost?.(error);
  });
  return {
    get error() {
      return lostError;
    },
    set onLost(callback: ((error: unknown) => void) | undefined) {
      onLost = callback;
    },
    dispose,
  };
}
type Watch = ReturnType<typeof watchSession>;

interface Acquired {
  pid: number;
  waitedMs: number;
  /** performance.now() when the lock was taken. */
  at: number;
  /** The session LISTENs and sits in the waiters' registry: undone with the unlock. */
  unlisten?: () => Promise<void>;
  registered: boolean;
  /** The session's own keepalive settings, put back before a pooled or borrowed session is given back. */
  restore: string;
}

interface Held {
  session: Session;
  watch: Watch;
  acquired: Acquired;
}

// How long one statement of ours may take before the session counts as gone. Ours never wait inside
// the server (try-locks only), so only a dead network or a wedged server takes this long.
const STATEMENT_BOUND_MS = 15_000;
// Reconnecting waiters: back-off from 250 ms to 5 s; without timeoutMs, give up after 60 s without a session.
const RECONNECT_FIRST_MS = 250;
const RECONNECT_MAX_MS = 5_000;
const RECONNECT_FOR_MS = 60_000;

/** A statement of ours that got no answer in time: the session was cut. */
class UnansweredError extends Error {
  constructor(ms: number) {
    super(`the session did not answer within ${formatMs(ms)} (network or server gone): it was cut`);
  }
}

/** Carries an error of `isDone` through the waiting loop, so it reaches the caller unwrapped. */
class IsDoneFailure {
  constructor(readonly error: unknown) {}
}

function askIsDone(isDone: (client: unknown) => Promise<boolean>, session: Session): Promise<boolean> {
  return isDone(session.client).catch((error) => Promise.reject(new IsDoneFailure(error)));
}

/** Resolves like `promise`, or cuts the session and rejects after `ms`. */
function bounded<T>(session: Session, promise: Promise<T>, ms = STATEMENT_BOUND_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      session.destroy();
      reject(new UnansweredError(ms));
    }, ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Opens a session and acquires the lock on it. A waiter whose connection breaks (server restart,
 * failover, network error) opens another session and keeps waiting when the source can be reopened,
 * with back-off; a caller's own client cannot be, so the call fails. Every failure here is a
 * MigrationLockError (or the caller's abort reason), and fn never runs on a session that lost the lock.
 */
async function acquireWithRetries(
  source: SessionSource,
  key: bigint,
  opts: ResolvedOptions,
  isDone: ((client: unknown) => Promise<boolean>) | undefined,
): Promise<Held | typeof SKIPPED> {
  const startedAt = performance.now();
  let connected = false;
  let brokenSince: number | undefined;
  for (let attempt = 1; ; attempt++) {
    let session: Session | undefined;
    let watch: Watch | undefined;
    try {
      session = await source.open();
      connected = true;
      watch = watchSession(session);
      // Checked on every session, a reopened one too: a release may have come while we were disconnected.
      const acquired =
        isDone && (await askIsDone(isDone, session))
          ? SKIPPED
          : await acquire(session, key, opts, watch, startedAt, isDone);
      if (acquired === SKIPPED) {
        watch.dispose();
        await session.release(watch.error !== undefined);
        return SKIPPED;
      }
      // Lost between the try-lock and here: the lock went with the session, so fn must not run.
      if (watch.error !== undefined) throw watch.error;
      return { session, watch, acquired };
    } catch (err) {
      const orderly =
        err instanceof MigrationLockBusyError ||
        err instanceof MigrationLockTimeoutError ||
        (opts.signal?.aborted === true && err === opts.signal.reason);
      watch?.dispose();
      // Busy, timed out or aborted: the session is clean and goes back. Anything else may have left it
      // in doubt: a pooled one is destroyed.
      await session?.release(!orderly || watch?.error !== undefined);
      if (orderly) throw err;
      if (err instanceof MigrationLockError) throw err;
      // The adapter's own re-check failed (e.g. a corrupt migrations directory): its error, as it is.
      if (err instanceof IsDoneFailure) throw err.error;
      const broken = watch?.error !== undefined || isConnectionError(err);
      // Never connected (a wrong URL or password, a server that is not there): pg's own error, at once.
      if (!connected && !(broken && isServerStartingUp(err))) throw err;
      if (!broken) {
        throw new MigrationLockError(`Could not take migration lock ${key}: ${errorMessage(err)}`, key, null, {
          cause: err,
        });
      }
      if (!source.reopenable) {
        throw new MigrationLockError(
          `Lost the connection while waiting for migration lock ${key}: ${errorMessage(watch?.error ?? err)}. The client you passed cannot be reopened; pass a pool or a connection string to keep waiting through a server restart or failover.`,
          key,
          null,
          { cause: watch?.error ?? err },
        );
      }
      const now = performance.now();
      brokenSince ??= now;
      const delay =
        Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** Math.min(attempt - 1, 5)) * (0.8 + Math.random() * 0.4);
      const until = opts.timeoutMs !== undefined ? startedAt + opts.timeoutMs : brokenSince + RECONNECT_FOR_MS;
      if (now + delay > until) {
        const waitedMs = now - startedAt;
        if (opts.timeoutMs !== undefined) {
          throw new MigrationLockTimeoutError(
            `Timed out after ${formatMs(waitedMs)} waiting for migration lock ${key}: the connection was lost (${errorMessage(err)}) and could not be reopened in time`,
            key,
            null,
            waitedMs,
            { cause: err },
          );
        }
        throw new MigrationLockError(
          `Gave up waiting for migration lock ${key}: no session could be opened for ${formatMs(now - brokenSince)} (${errorMessage(err)})`,
          key,
          null,
          { cause: err },
        );
      }
      opts.logger.warn(
        `Lost the connection while waiting for migration lock ${key} (${errorMessage(watch?.error ?? err)}); reconnecting in ${formatMs(delay)} (attempt ${attempt})`,
      );
      await nap(delay, opts.signal).done;
      opts.signal?.throwIfAborted();
    }
  }
}

// SQLSTATE classes and codes of a connection that broke or a server that is not there (yet):
// 08 connection exception, 57P01–57P03 admin/crash shutdown and "cannot connect now", 53300 too many connections;
// postgres.js' own codes for a connection that closed, was cut, or could not connect in time.
const TRANSIENT_CODES =
  /^(08...|57P0[123]|53300|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|EHOSTUNREACH|ENETUNREACH|EHOSTDOWN|EAI_AGAIN|ENOTFOUND|CONNECTION_CLOSED|CONNECTION_DESTROYED|CONNECT_TIMEOUT)$/;

function isConnectionError(err: unknown): boolean {
  if (err instanceof UnansweredError) return true;
  const { code } = (err ?? {}) as { code?: string };
  // Any other SQLSTATE (a wrong password, a missing database, a failed statement) will not go away by retrying.
  if (typeof code === 'string') return TRANSIENT_CODES.test(code);
  return /Connection terminated|not queryable|timeout expired/.test(errorMessage(err));
}

/** A server that is starting up or shutting down is worth retrying even before we ever connected. */
function isServerStartingUp(err: unknown): boolean {
  return /^(57P03|53300)$/.test((err as { code?: string } | null)?.code ?? '');
}

/**
 * Sleeps `ms`, or less: until `wake()` is called or `signal` aborts. Waiters nap between polls this way,
 * so a release notification (or the caller's abort) ends the nap at once.
 */
export function nap(ms: number, signal?: AbortSignal): { done: Promise<void>; wake: () => void } {
  let wake!: () => void;
  const done = new Promise<void>((resolve) => {
    const timer = setTimeout(() => wake(), Math.max(0, ms));
    wake = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', wake);
      resolve();
    };
    signal?.addEventListener('abort', wake);
    if (signal?.aborted) wake();
  });
  return { done, wake };
}

// Server-side TCP keepalive for the lock session, so the server drops a holder whose host vanished
// (no FIN, no RST) in about 10 + 5 × 4 = 30 s instead of the kernel's two hours, and with it the lock.
// tcp_user_timeout covers a server with unacknowledged data in flight (keepalive only probes an idle
// socket); client_connection_check_interval (PostgreSQL 14+) lets a backend busy in a long statement
// notice. The settings in force before are read first (OFFSET 0 keeps that subquery from being
// merged into the outer one, which sets them) and put back before a pooled or borrowed session goes back.
const KEEPALIVE: [name: string, value: string][] = [
  ['tcp_keepalives_idle', '10'],
  ['tcp_keepalives_interval', '5'],
  ['tcp_keepalives_count', '4'],
  ['tcp_user_timeout', '30000'],
  ['client_connection_check_interval', '5000'],
];
// A setting this server does not have (client_connection_check_interval before 14) is skipped.
const NEW_SETTINGS = KEEPALIVE.map(
  ([name, value], i) =>
    `CASE WHEN current_setting('${name}', true) IS NOT NULL THEN set_config('${name}', '${value}', false) END AS set${i}`,
).join(', ');
const OLD_SETTINGS = `concat_ws(',', ${KEEPALIVE.map(([name]) => `coalesce(current_setting('${name}', true), '')`).join(', ')})`;

/** SQL columns that put back the settings `old` (read by OLD_SETTINGS) held. */
function restoreSql(old: string): string {
  const values = old.split(',');
  return KEEPALIVE.map(([name], i) => (values[i] ? `, set_config('${name}', ${quote(values[i])}, false)` : '')).join(
    '',
  );
}
const quote = (text: string) => `'${text.replace(/'/g, "''")}'`;

// Quoted: an unquoted -9223372036854775808 parses as minus an out-of-range 9223372036854775808.
const sqlKey = (key: bigint) => `'${key}'::bigint`;
const channelOf = (key: bigint) => `pg_migration_lock_${key}`;

// Wakes one registered waiter, picked at random (no waiter starves), so N waiters do not stampede the
// server and the CPU at every hand-off; the others keep polling. Nobody registered (the exclusive
// try-lock on the registry key succeeds, and is dropped at once) is the common, uncontended case: then
// neither the pg_locks scan (which reads every lock of the server) nor the NOTIFY runs. A NOTIFY makes
// its transaction take a transaction id, and so a commit record the server must flush to disk.
const wakeNextWaiterSql = (key: bigint) => {
  const { hi, lo } = keyParts(key);
  return `(SELECT pg_notify('${channelOf(key)}', next.pid) FROM (SELECT
      CASE WHEN pg_try_advisory_lock(${hi}, ${lo}) THEN (SELECT NULL::text FROM pg_advisory_unlock(${hi}, ${lo}))
      ELSE (SELECT pid::text FROM pg_locks WHERE ${lockRowsOf(key, 2)} AND granted AND pid <> pg_backend_pid() ORDER BY random() LIMIT 1) END
    AS pid OFFSET 0) next WHERE next.pid IS NOT NULL)`;
};
// From 0.9 to 1.3 times the interval: waiters drift apart instead of polling in step, and with the
// report every reportEveryMs a waiter costs the server about one statement per second by default.
const sleepTimer = (ms: number) => ms * (0.9 + Math.random() * 0.4);

/*
 * Waiting never blocks inside pg_advisory_lock(): a session blocked there holds a snapshot, and a
 * holder running CREATE INDEX CONCURRENTLY waits for that snapshot while the waiter waits for the
 * holder: "deadlock detected", and either side may be the victim. Waiters instead poll with
 * pg_try_advisory_lock() and LISTEN on a per-key channel; the holder NOTIFYs one of them in the
 * statement that unlocks, so it wakes within a round trip. Holders that die (or plain
 * pg_advisory_lock users) cannot notify, so a waiter also retries every pollIntervalMs.
 * Each waiter holds a shared two-key advisory lock on the same classid/objid (objsubid 2): a
 * registry that never conflicts, so getLockStatus can list waiters. A try-lock never waits, so a
 * role's statement_timeout / lock_timeout cannot cancel the wait, and no setting of theirs is changed.
 */
async function acquire(
  session: Session,
  key: bigint,
  opts: ResolvedOptions,
  watch: Watch,
  startedAt: number,
  isDone: ((client: unknown) => Promise<boolean>) | undefined,
): Promise<Acquired | typeof SKIPPED> {
  const query = <R>(sql: string, params?: unknown[]) => bounded(session, session.query<R>(sql, params));
  const elapsed = () => performance.now() - startedAt;
  // A session that already holds the key would "acquire" it again (advisory locks are re-entrant):
  // that is a transaction-mode pooler sharing one server connection between clients, or a lock taken
  // outside this library. Refuse instead of excluding nobody.
  let first: { locked: boolean; held: boolean; pid: number; version: string; old: string };
  try {
    [first] = (await query<typeof first>(
      `SELECT CASE WHEN s.held THEN false ELSE pg_try_advisory_lock(${sqlKey(key)}) END AS locked, s.held,
         pg_backend_pid() AS pid, s.version, s.old, ${NEW_SETTINGS}
       FROM (SELECT EXISTS (SELECT 1 FROM pg_locks WHERE ${lockRowsOf(key, 1)} AND granted AND pid = pg_backend_pid()) AS held,
               version() AS version, ${OLD_SETTINGS} AS old OFFSET 0) s`,
    )) as [typeof first];
  } catch (err) {
    // A server that only looks like PostgreSQL may reject the statement itself: name it if we can.
    if (!isConnectionError(err) && watch.error === undefined) {
      const version = await query<{ version: string }>('SELECT version() AS version').catch(() => []);
      refuseUnsupported(key, version[0]?.version ?? '', err);
    }
    throw err;
  }
  const { pid, locked, held, old } = first;
  refuseUnsupported(key, first.version);
  if (held) {
    throw new MigrationLockError(
      `This session (backend ${pid}) already holds migration lock ${key}, so taking it again would exclude nobody. ${poolerAdvice(session)}`,
      key,
    );
  }
  const restore = session.kind === 'own' ? '' : restoreSql(old);
  if (locked) return { pid, waitedMs: 0, at: performance.now(), registered: false, restore };

  // Not ours: put the session's settings back before it is given back.
  const restoreNow = async () => {
    if (restore && watch.error === undefined) await query(`SELECT 1${restore}`).catch(() => {});
  };
  if (!opts.wait) {
    const { holder } = await queryLockStatus(session, key);
    await restoreNow();
    throw new MigrationLockBusyError(`Migration lock ${key} is held by ${describeHolder(holder)}`, key, holder);
  }

  const channel = channelOf(key);
  const { hi, lo } = keyParts(key);
  let notified = false;
  // A release happened since isDone was last asked; `chosen`: that release picked this waiter.
  let released = false;
  let chosen = false;
  let wake: (() => void) | undefined;
  let acquired = false;
  let unlisten: (() => Promise<void>) | undefined;
  let registered = false;
  try {
    unlisten = await session.listen?.(channel, (payload) => {
      // An empty payload wakes everyone; a pid wakes only that waiter. Waiters that re-check what is
      // left to do react to every release.
      const mine = payload === String(pid);
      if (!(isDone || !payload || mine)) return;
      released = true;
      chosen ||= mine;
      notified = true;
      wake?.();
    });
    const [registration] = await query<{ pid: number; now_ms: number }>(
      `SELECT pg_try_advisory_lock_shared(${hi}, ${lo}), pg_backend_pid() AS pid,
         (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS now_ms`,
    );
    registered = true;
    checkSameSession(session, key, pid, registration!.pid);
    const prefix = waitingComment(key, Math.round(registration!.now_ms));
    let holder: Holder | null = null;
    const report = async () => {
      holder = (await bounded(session, queryLockStatus(session, key, prefix))).holder;
      const waitedMs = elapsed();
      opts.logger.info(
        `Waiting for migration lock ${key}, held by ${describeHolder(holder)} (waited ${formatMs(waitedMs)})`,
      );
      callSafely(opts.logger, 'onWaiting', opts.hooks.onWaiting, { key, holder, waitedMs });
    };
    await report();
    let nextReport = elapsed() + opts.reportEveryMs;
    const deadline = opts.timeoutMs ?? Number.POSITIVE_INFINITY;

    for (;;) {
      notified = false;
      if (isDone && released) {
        const handedToUs = chosen;
        released = false;
        chosen = false;
        if (await askIsDone(isDone, session)) {
          // The release that woke us chose us: pass its wake-up on, or a plain waiter would sleep until its poll.
          if (handedToUs) await query(`SELECT ${wakeNextWaiterSql(key)}`);
          return SKIPPED;
        }
      }
      const [poll] = await query<{ locked: boolean; pid: number }>(
        `${prefix}SELECT pg_try_advisory_lock(${sqlKey(key)}) AS locked, pg_backend_pid() AS pid`,
      );
      checkSameSession(session, key, pid, poll!.pid);
      if (poll!.locked) {
        acquired = true;
        return { pid, waitedMs: elapsed(), at: performance.now(), registered, unlisten, restore };
      }
      opts.signal?.throwIfAborted();
      if (elapsed() >= deadline) {
        holder = (await bounded(session, queryLockStatus(session, key, prefix))).holder;
        throw new MigrationLockTimeoutError(
          `Timed out after ${formatMs(elapsed())} waiting for migration lock ${key}, held by ${describeHolder(holder)}`,
          key,
          holder,
          elapsed(),
        );
      }
      if (elapsed() >= nextReport) {
        await report();
        nextReport = elapsed() + opts.reportEveryMs;
      }
      // A notification that arrived while the poll was in flight must not be slept through.
      if (!notified) {
        const ms = Math.min(sleepTimer(opts.pollIntervalMs), deadline - elapsed(), nextReport - elapsed());
        const napping = nap(ms, opts.signal);
        wake = napping.wake;
        await napping.done;
        wake = undefined;
      }
      opts.signal?.throwIfAborted();
    }
  } finally {
    // Leave the waiters' registry and the channel, and put the settings back. Only a session that goes
    // back to a pool or its owner needs it; a broken one is discarded, our own is closed.
    if (!acquired && watch.error === undefined && session.kind !== 'own') {
      await bounded(
        session,
        (async () => {
          await unlisten?.();
          if (registered) await session.query(`SELECT pg_advisory_unlock_shared(${hi}, ${lo})${restore}`);
          else await restoreNow();
        })(),
      ).catch(() => {});
    }
  }
}

/**
 * CockroachDB accepts the advisory-lock functions but they lock nothing; YugabyteDB has no
 * LISTEN/NOTIFY and, unless enabled, no advisory locks. "Locking" there would exclude nobody.
 */
function refuseUnsupported(key: bigint, version: string, cause?: unknown): void {
  const server = unsupportedServer(version);
  if (!server) return;
  throw new MigrationLockError(
    `${server} cannot hold a PostgreSQL session advisory lock the way pg-migration-lock needs (session-level pg_advisory_lock shared by every session, and LISTEN/NOTIFY), so the lock would exclude nobody. Use the migrator's own locking there, or run migrations from a single job. (server: ${version.slice(0, 80)})`,
    key,
    null,
    cause === undefined ? undefined : { cause },
  );
}

/** The name of a PostgreSQL look-alike whose `version()` this is, when its locks cannot be relied on. */
export function unsupportedServer(version: string): string | undefined {
  return /CockroachDB/i.test(version) ? 'CockroachDB' : /-YB-/.test(version) ? 'YugabyteDB' : undefined;
}

/** What to do about a transaction-mode pooler, with the likely culprit named when the endpoint shows it. */
export function poolerAdvice(session: Pick<Session, 'endpoint'>): string {
  const { host = '', port } = session.endpoint ?? {};
  const culprit =
    port === 6543
      ? " Port 6543 is Supabase's transaction pooler: use the session pooler (port 5432) or the direct host."
      : /-pooler\./.test(host)
        ? ' A "-pooler" host is Neon\'s pooled endpoint: use the host without "-pooler".'
        : /\.proxy-[a-z0-9]+\..*rds\.amazonaws\.com$/.test(host)
          ? ' This looks like an RDS Proxy endpoint: connect to the database instance endpoint.'
          : '';
  return `A transaction-mode pooler hands each transaction to any server connection, so a session advisory lock excludes nobody.${culprit} Connect directly or through a session-mode pooler: Supabase port 5432 instead of 6543, Neon's host without "-pooler", PgBouncer pool_mode = session, or the database endpoint instead of RDS Proxy.`;
}

/** Waiting is only meaningful on one session; a pooler that moves us between server connections breaks it. */
function checkSameSession(session: Session, key: bigint, expectedPid: number, pid: number): void {
  if (pid === expectedPid) return;
  throw new MigrationLockError(
    `The session waiting for migration lock ${key} moved from backend ${expectedPid} to ${pid}. ${poolerAdvice(session)}`,
    key,
  );
}

async function runLocked<T>(
  held: Held,
  key: bigint,
  fn: (ctx: LockContext<unknown>) => T | Promise<T>,
  opts: ResolvedOptions,
): Promise<T> {
  const { session, watch, acquired } = held;
  const { logger, hooks } = opts;
  const controller = new AbortController();
  let lostDuringFn: MigrationLockLostError | undefined;
  const loseLock = (cause: unknown) => {
    lostDuringFn ??= new MigrationLockLostError(
      `Lost the session holding migration lock ${key} (pid ${acquired.pid}): ${errorMessage(cause)}`,
      key,
      null,
      { cause },
    );
    logger.warn(`${lostDuringFn.message}; signalling the migration to stop`);
    controller.abort(lostDuringFn);
    callSafely(logger, 'onLockLost', hooks.onLockLost, lostDuringFn);
  };
  watch.onLost = loseLock;

  logger.debug?.(`Acquired migration lock ${key} on pid ${acquired.pid} after ${formatMs(acquired.waitedMs)}`);
  callSafely(logger, 'onAcquired', hooks.onAcquired, { key, pid: acquired.pid, waitedMs: acquired.waitedMs });

  let value: T | undefined;
  let fnFailed = false;
  let fnError: unknown;
  try {
    value = await fn({ client: session.client, key, signal: controller.signal, waitedMs: acquired.waitedMs });
  } catch (err) {
    fnFailed = true;
    fnError = err;
  }
  watch.onLost = undefined;

  if (lostDuringFn) {
    await session.release(true);
    throw lostDuringFn;
  }
  const lost = await release(held, key, opts, fnFailed ? fnError : undefined);
  if (lost) {
    callSafely(logger, 'onLockLost', hooks.onLockLost, lost);
    throw lost;
  }
  if (fnFailed) throw fnError;
  return value as T;
}

const UNLOCK_FAILURE_OUTCOME = {
  own: '; closing the connection releases it',
  pooled: '; destroying the pooled connection releases it',
  borrowed: '; it stays held until that client disconnects',
};

// After fn, everything (unlock, clean-up, giving the session back) is done within this bound, so a
// call never hangs on a dead network.
const RELEASE_BOUND_MS = 15_000;

/**
 * Unlocks, wakes the next waiter and gives the session back. Returns the MigrationLockLostError to
 * throw when it turns out the lock was lost before fn settled; an unlock failure is only reported.
 */
async function release(
  { session, watch, acquired }: Held,
  key: bigint,
  { logger, hooks }: ResolvedOptions,
  fnError: unknown,
): Promise<MigrationLockLostError | undefined> {
  const heldSince = acquired.at;
  const lostLock = (message: string, cause: unknown) => new MigrationLockLostError(message, key, null, { cause });
  let row: UnlockRow | undefined;
  let unlockError: unknown;
  try {
    row = await bounded(session, unlockAfter(session, key, acquired, logger), RELEASE_BOUND_MS);
  } catch (err) {
    unlockError = err;
  }
  await session.release(unlockError !== undefined);
  const released = () =>
    callSafely(logger, 'onReleased', hooks.onReleased, {
      key,
      pid: acquired.pid,
      heldMs: performance.now() - heldSince,
    });
  if (unlockError === undefined) {
    // Same session, lock gone: fn (or its migrator) released it, e.g. DISCARD ALL or pg_advisory_unlock_all().
    if (row && row.pid === acquired.pid && !row.unlocked) {
      return lostLock(
        `Lost migration lock ${key} while fn ran: its session (pid ${acquired.pid}) no longer held it at release (DISCARD ALL or pg_advisory_unlock_all() in fn?)`,
        null,
      );
    }
    released();
    return undefined;
  }
  // fn failed and the session turned out dead: the failure was the lock session going away.
  if (fnError !== undefined && watch.error !== undefined) {
    return lostLock(
      `Lost the session holding migration lock ${key} (pid ${acquired.pid}): ${errorMessage(fnError)}`,
      fnError,
    );
  }
  if (unlockError instanceof UnansweredError) {
    // Say what really happens: the client side is gone, but the server keeps the lock until it notices.
    logger.warn(
      `Could not release migration lock ${key} on pid ${acquired.pid}: ${unlockError.message}. The server keeps the lock until it notices the connection is gone: within about 30 s, by the TCP keepalive set on this session.`,
    );
  } else {
    logger.warn(
      `Could not release migration lock ${key} on pid ${acquired.pid}: ${errorMessage(unlockError)}${UNLOCK_FAILURE_OUTCOME[session.kind]}`,
    );
  }
  callSafely(logger, 'onUnlockError', hooks.onUnlockError, unlockError);
  // Closing or destroying a connection that answers released the lock; the caller's own client still holds it.
  if (session.kind !== 'borrowed' && !(unlockError instanceof UnansweredError)) released();
  return undefined;
}

interface UnlockRow {
  unlocked: boolean;
  pid: number;
  /** fn left a transaction block open: the unlock took effect, the wake-up NOTIFY waits for its end. */
  in_transaction: boolean;
}

/** Unlocks after fn, ending a transaction fn left behind where that is ours to end. */
async function unlockAfter(session: Session, key: bigint, acquired: Acquired, logger: Logger): Promise<UnlockRow> {
  let row: UnlockRow;
  try {
    row = await unlock(session, key, acquired, logger);
  } catch (err) {
    // in_failed_sql_transaction: fn left its transaction aborted. Nothing in it can commit and nothing
    // else can run until it ends, so roll it back and unlock again.
    if ((err as { code?: string }).code !== '25P02') throw err;
    await session.query('ROLLBACK');
    row = await unlock(session, key, acquired, logger);
  }
  if (row.in_transaction && session.kind !== 'borrowed') {
    // Going back to the pool (or closed) with it open would hand it to the next user (or cut it anyway).
    // The rollback also undoes the settings put back inside it: put them back again after.
    logger.warn('fn left a transaction open on the lock session: rolling it back before giving the session back');
    await session.query('ROLLBACK');
    if (acquired.restore) await session.query(`SELECT 1${acquired.restore}`);
  }
  // Our own session is closed next, which stops listening anyway.
  if (session.kind !== 'own') await acquired.unlisten?.();
  return row;
}

/** Unlocks and wakes the next waiter in one round trip. */
async function unlock(session: Session, key: bigint, acquired: Acquired, logger: Logger): Promise<UnlockRow> {
  const { hi, lo } = keyParts(key);
  // pg_notify is delivered when this statement's implicit transaction commits, just after the unlock.
  const [row] = await session.query<UnlockRow>(
    `SELECT pg_advisory_unlock(${sqlKey(key)}) AS unlocked, pg_backend_pid() AS pid,
      now() <> statement_timestamp() AS in_transaction, ${wakeNextWaiterSql(key)}
      ${acquired.registered ? `, pg_advisory_unlock_shared(${hi}, ${lo})` : ''}${acquired.restore}`,
  );
  if (row!.pid !== acquired.pid) {
    // A transaction-mode pooler ran the unlock on another server connection: the lock still sits on
    // the one that took it, which the pooler hands to other clients. End that backend so it cannot linger.
    // One statement: if the pooler hands us the locking backend now, it must unlock, not terminate itself.
    await session.query(
      `SELECT CASE WHEN pid = pg_backend_pid() THEN pg_advisory_unlock(${sqlKey(key)}) ELSE pg_terminate_backend(pid) END
       FROM pg_locks WHERE ${lockRowsOf(key, 1)} AND granted AND pid = ${acquired.pid}`,
    );
    logger.warn(
      `Migration lock ${key} was taken on backend ${acquired.pid} but released from backend ${row!.pid}, so it did not exclude anyone; backend ${acquired.pid} was terminated to free it. ${poolerAdvice(session)}`,
    );
  }
  return row!;
}

export function formatMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  const seconds = Math.round(ms / 1000);
  return `${Math.floor(seconds / 60)}m${seconds % 60}s`;
}
