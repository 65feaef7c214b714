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
import { type ClientSource, checkSource, isConnectedClient, openSession, type Session } from './session.js';
import { type Holder, lockRowsOf, queryLockStatus, waitingComment } from './status.js';

/** What `fn` receives while it holds the lock. */
export interface LockContext {
  /** The very session that holds the lock: run the migration on it, so lock and migration share fate. */
  client: pg.ClientBase;
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
   * While waiting, retry this often when no release notification arrives (a holder that died, or one
   * that is not using this library, cannot notify).
   * @default 250
   */
  pollIntervalMs?: number;
}

// Sessions inside a call right now. Advisory locks are re-entrant per session, so two calls sharing
// one session would both "acquire" and exclude nothing.
const busySessions = new WeakSet<pg.ClientBase>();

/**
 * Runs `fn` while holding a session-level PostgreSQL advisory lock on `key`, and releases it after.
 *
 * @param client a `pg.Pool`, a connected `pg.Client` / pool client, or a connection string / `pg` config.
 * @param key a bigint, a safe-integer number or a decimal string; see `lockKey(name)`.
 * @returns what `fn` returns; an error thrown by `fn` is rethrown as-is, after the lock is released.
 *
 * @example
 * await withMigrationLock(pool, DEFAULT_LOCK_KEY, async ({ client }) => {
 *   await runMigrations(client);
 * });
 */
export async function withMigrationLock<T>(
  client: ClientSource,
  key: LockKeyInput,
  fn: (ctx: LockContext) => T | Promise<T>,
  options: MigrationLockOptions = {},
): Promise<T> {
  const k = parseKey(key);
  if (typeof fn !== 'function') throw new TypeError(`Expected \`fn\` to be a function, got ${typeof fn}`);
  checkSource(client);
  const opts = resolveOptions(options);
  opts.signal?.throwIfAborted();
  // A caller's client is marked before the first await, so two calls started in the same tick on it
  // cannot both get past the check (a pool hands each call a session of its own).
  const borrowed = isConnectedClient(client) ? client : undefined;
  if (borrowed && busySessions.has(borrowed)) {
    throw new TypeError(
      'This pg client is already inside withMigrationLock: advisory locks are re-entrant per session, so a second call on it would exclude nothing. Pass a pg.Pool or another client.',
    );
  }
  if (borrowed) busySessions.add(borrowed);

  let session: Session;
  try {
    session = await openSession(client, { applicationName: opts.applicationName });
  } catch (err) {
    if (borrowed) busySessions.delete(borrowed);
    throw err;
  }
  busySessions.add(session.client);
  const watch = watchSession(session.client);
  try {
    let acquired: Acquired;
    try {
      acquired = await acquire(session, k, opts, watch);
    } catch (err) {
      // Busy, timed out or aborted: the session is clean and goes back. Anything else (a failed query,
      // a session that moved or already held the key) may have left it in doubt: a pooled one is destroyed.
      const orderly =
        err instanceof MigrationLockBusyError ||
        err instanceof MigrationLockTimeoutError ||
        (opts.signal?.aborted === true && err === opts.signal.reason);
      await session.release(!orderly || watch.error !== undefined);
      throw err;
    }
    return await runLocked(session, k, fn, opts, watch, acquired);
  } finally {
    watch.dispose();
    busySessions.delete(session.client);
  }
}

type ResolvedOptions = Required<Pick<MigrationLockOptions, 'wait' | 'reportEveryMs' | 'pollIntervalMs'>> &
  Pick<MigrationLockOptions, 'timeoutMs' | 'applicationName' | 'signal'> & { logger: Logger; hooks: LockHooks };

function resolveOptions(options: MigrationLockOptions): ResolvedOptions {
  if (options === null || typeof options !== 'object') {
    throw new TypeError(`Expected \`options\` to be an object, got ${options === null ? 'null' : typeof options}`);
  }
  const { wait = true, timeoutMs, reportEveryMs = 10_000, pollIntervalMs = 250, hooks = {} } = options;
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
function watchSession(client: pg.ClientBase) {
  let lostError: unknown;
  let onLost: ((error: unknown) => void) | undefined;
  const lost = (error: unknown) => {
    if (lostError !== undefined) return;
    lostError = error;
    onLost?.(error);
  };
  const onEnd = () => lost(new Error('Connection terminated unexpectedly'));
  // A FATAL error (pg_terminate_backend, shutdown) rejects the running query before the socket's 'end'
  // arrives; seeing it here, in the same dispatch, lets fn's own catch find the signal already aborted.
  const onMessage = (message: { severity?: string }) => {
    if (message.severity === 'FATAL' || message.severity === 'PANIC') lost(message);
  };
  const connection = (client as { connection?: NodeJS.EventEmitter }).connection;
  client.on('error', lost);
  client.on('end', onEnd);
  connection?.on('errorMessage', onMessage);
  return {
    get error() {
      return lostError;
    },
    set onLost(callback: ((error: unknown) => void) | undefined) {
      onLost = callback;
    },
    dispose() {
      client.off('error', lost);
      client.off('end', onEnd);
      connection?.off('errorMessage', onMessage);
    },
  };
}
type Watch = ReturnType<typeof watchSession>;

interface Acquired {
  pid: number;
  waitedMs: number;
  /** performance.now() when the lock was taken. */
  at: number;
  /** The session LISTENs and sits in the waiters' registry: undone with the unlock, in the same round trip. */
  registered: boolean;
}

// On connections we open, the server drops the session ~40 s after its client's host vanishes
// (instead of the kernel's two hours), which releases the lock. Folded into the first query: no extra round trip.
const KEEPALIVE_COLUMNS = `, set_config('tcp_keepalives_idle', '10', false), set_config('tcp_keepalives_interval', '5', false), set_config('tcp_keepalives_count', '6', false)`;

// Quoted: an unquoted -9223372036854775808 parses as minus an out-of-range 9223372036854775808.
const sqlKey = (key: bigint) => `'${key}'::bigint`;
const channelOf = (key: bigint) => `pg_migration_lock_${key}`;

// One registered waiter, picked at random (no waiter starves): the release wakes only it, so N
// waiters do not stampede the server and the CPU at every hand-off. The others keep polling.
const nextWaiterSql = (key: bigint) =>
  `(SELECT pid::text FROM pg_locks WHERE ${lockRowsOf(key, 2)} AND granted AND pid <> pg_backend_pid() ORDER BY random() LIMIT 1)`;
const sleepTimer = (ms: number) => ms * (0.8 + Math.random() * 0.4);

/*
 * Waiting never blocks inside pg_advisory_lock(): a session blocked there holds a snapshot, and a
 * holder running CREATE INDEX CONCURRENTLY waits for that snapshot while the waiter waits for the
 * holder: "deadlock detected", and either side may be the victim. Waiters instead poll with
 * pg_try_advisory_lock() and LISTEN on a per-key channel; the holder NOTIFYs one of them in the
 * statement that unlocks, so it wakes within a round trip. Holders that die (or plain
 * pg_advisory_lock users) cannot notify, so a waiter also retries every pollIntervalMs.
 * Each waiter holds a shared two-key advisory lock on the same classid/objid (objsubid 2): a
 * registry that never conflicts, so getLockStatus can list waiters. A try-lock never waits, so a
 * role's statement_timeout / lock_timeout cannot cancel the wait, and no setting is changed.
 */
async function acquire(session: Session, key: bigint, opts: ResolvedOptions, watch: Watch): Promise<Acquired> {
  const { client } = session;
  const startedAt = performance.now();
  const elapsed = () => performance.now() - startedAt;
  // A session that already holds the key would "acquire" it again (advisory locks are re-entrant):
  // that is a transaction-mode pooler sharing one server connection between clients, or a lock taken
  // outside this library. Refuse instead of excluding nobody.
  const first = await client.query<{ locked: boolean; held: boolean; pid: number }>(
    `SELECT CASE WHEN s.held THEN false ELSE pg_try_advisory_lock(${sqlKey(key)}) END AS locked, s.held,
       pg_backend_pid() AS pid${session.kind === 'own' ? KEEPALIVE_COLUMNS : ''}
     FROM (SELECT EXISTS (SELECT 1 FROM pg_locks WHERE ${lockRowsOf(key, 1)} AND granted AND pid = pg_backend_pid()) AS held) s`,
  );
  const { pid, locked, held } = first.rows[0]!;
  if (held) {
    throw new MigrationLockError(
      `This session (backend ${pid}) already holds migration lock ${key}, so taking it again would exclude nobody. Behind a transaction-mode pooler, clients share server connections: connect directly or through a session-mode pooler.`,
      key,
    );
  }
  if (locked) return { pid, waitedMs: 0, at: performance.now(), registered: false };

  if (!opts.wait) {
    const { holder } = await queryLockStatus(client, key);
    throw new MigrationLockBusyError(`Migration lock ${key} is held by ${describeHolder(holder)}`, key, holder);
  }

  const channel = channelOf(key);
  const { hi, lo } = keyParts(key);
  let notified = false;
  let wake: (() => void) | undefined;
  const onNotification = (message: pg.Notification) => {
    // An empty payload wakes everyone; a pid wakes only that waiter.
    if (message.channel !== channel || (message.payload && message.payload !== String(pid))) return;
    notified = true;
    wake?.();
  };
  client.on('notification', onNotification);
  const abort = () => wake?.();
  opts.signal?.addEventListener('abort', abort);
  let acquired = false;
  try {
    const registered = await client.query(
      `LISTEN "${channel}"; SELECT pg_try_advisory_lock_shared(${hi}, ${lo}), pg_backend_pid() AS pid,
         (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS now_ms`,
    );
    const { now_ms: sinceMs, pid: registeredOn } = (registered as unknown as pg.QueryResult[])[1]!.rows[0];
    checkSameSession(key, pid, registeredOn);
    const prefix = waitingComment(key, Math.round(sinceMs));
    let holder: Holder | null = null;
    const report = async () => {
      holder = (await queryLockStatus(client, key, prefix)).holder;
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
      const poll = await client.query<{ locked: boolean; pid: number }>(
        `${prefix}SELECT pg_try_advisory_lock(${sqlKey(key)}) AS locked, pg_backend_pid() AS pid`,
      );
      checkSameSession(key, pid, poll.rows[0]!.pid);
      if (poll.rows[0]!.locked) {
        acquired = true;
        return { pid, waitedMs: elapsed(), at: performance.now(), registered: true };
      }
      opts.signal?.throwIfAborted();
      if (elapsed() >= deadline) {
        holder = (await queryLockStatus(client, key, prefix)).holder;
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
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, Math.max(0, ms));
          function done() {
            clearTimeout(timer);
            wake = undefined;
            resolve();
          }
          wake = done;
          if (opts.signal?.aborted) done();
        });
      }
      opts.signal?.throwIfAborted();
    }
  } finally {
    client.off('notification', onNotification);
    opts.signal?.removeEventListener('abort', abort);
    // Leave the waiters' registry and the channel. This fails only on a broken connection, which the
    // watch has seen: the session is then discarded.
    if (!acquired && watch.error === undefined) {
      await client.query(`UNLISTEN "${channel}"; SELECT pg_advisory_unlock_shared(${hi}, ${lo})`).catch(() => {});
    }
  }
}

/** Waiting is only meaningful on one session; a pooler that moves us between server connections breaks it. */
function checkSameSession(key: bigint, expectedPid: number, pid: number): void {
  if (pid === expectedPid) return;
  throw new MigrationLockError(
    `The session waiting for migration lock ${key} moved from backend ${expectedPid} to ${pid}: a transaction-mode pooler does not keep a session, and session advisory locks need one. Connect directly or through a session-mode pooler.`,
    key,
  );
}

async function runLocked<T>(
  session: Session,
  key: bigint,
  fn: (ctx: LockContext) => T | Promise<T>,
  opts: ResolvedOptions,
  watch: Watch,
  acquired: Acquired,
): Promise<T> {
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
  if (watch.error !== undefined) loseLock(watch.error);
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
  const lost = await release(session, key, acquired, opts, watch, fnFailed ? fnError : undefined);
  if (lost) {
    callSafely(logger, 'onLockLost', hooks.onLockLost, lost);
    throw lost;
  }
  if (fnFailed) throw fnError;
  return value as T;
}

const UNLOCK_FAILURE_OUTCOME = {
  own: '; closing the connection releases it',
  pooled: '; destroying the pooled connection so the lock dies with it',
  borrowed: '; it stays held until that client disconnects',
};

/**
 * Unlocks, wakes the next waiter and gives the session back. Returns the MigrationLockLostError to
 * throw when it turns out the lock was lost before fn settled; an unlock failure is only reported.
 */
async function release(
  session: Session,
  key: bigint,
  acquired: Acquired,
  { logger, hooks }: ResolvedOptions,
  watch: Watch,
  fnError: unknown,
): Promise<MigrationLockLostError | undefined> {
  const heldSince = acquired.at;
  const lostLock = (message: string, cause: unknown) => new MigrationLockLostError(message, key, null, { cause });
  let row: UnlockRow | undefined;
  let unlockError: unknown;
  try {
    row = await unlockAfter(session, key, acquired, logger);
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
  if (fnError !== undefined && isSessionGone(unlockError, watch)) {
    return lostLock(
      `Lost the session holding migration lock ${key} (pid ${acquired.pid}): ${errorMessage(fnError)}`,
      fnError,
    );
  }
  logger.warn(
    `Could not release migration lock ${key} on pid ${acquired.pid}: ${errorMessage(unlockError)}${UNLOCK_FAILURE_OUTCOME[session.kind]}`,
  );
  callSafely(logger, 'onUnlockError', hooks.onUnlockError, unlockError);
  // Closing or destroying the connection released the lock; the caller's own client still holds it.
  if (session.kind !== 'borrowed') released();
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
    await session.client.query('ROLLBACK');
    row = await unlock(session, key, acquired, logger);
  }
  if (row.in_transaction && session.kind !== 'borrowed') {
    // Going back to the pool (or closed) with it open would hand it to the next user (or cut it anyway).
    logger.warn('fn left a transaction open on the lock session: rolling it back before giving the session back');
    await session.client.query('ROLLBACK');
  }
  return row;
}

/** Unlocks and wakes the next waiter in one round trip. */
async function unlock(session: Session, key: bigint, acquired: Acquired, logger: Logger): Promise<UnlockRow> {
  const { hi, lo } = keyParts(key);
  const channel = channelOf(key);
  // pg_notify is delivered when this statement's implicit transaction commits, just after the unlock.
  let sql = `SELECT pg_advisory_unlock(${sqlKey(key)}) AS unlocked, pg_backend_pid() AS pid,
    now() <> statement_timestamp() AS in_transaction, pg_notify('${channel}', coalesce(${nextWaiterSql(key)}, ''))`;
  if (acquired.registered) sql += `, pg_advisory_unlock_shared(${hi}, ${lo}); UNLISTEN "${channel}"`;
  const result = await session.client.query(sql);
  const row = (Array.isArray(result) ? result[0] : result).rows[0] as UnlockRow;
  if (row.pid !== acquired.pid) {
    // A transaction-mode pooler ran the unlock on another server connection: the lock still sits on
    // the one that took it, which the pooler hands to other clients. End that backend so it cannot linger.
    // One statement: if the pooler hands us the locking backend now, it must unlock, not terminate itself.
    await session.client.query(
      `SELECT CASE WHEN pid = pg_backend_pid() THEN pg_advisory_unlock(${sqlKey(key)}) ELSE pg_terminate_backend(pid) END
       FROM pg_locks WHERE ${lockRowsOf(key, 1)} AND granted AND pid = ${acquired.pid}`,
    );
    logger.warn(
      `Migration lock ${key} was taken on backend ${acquired.pid} but released from backend ${row.pid}: a transaction-mode pooler does not keep a session, so the lock did not exclude anyone. Backend ${acquired.pid} was terminated to free it. Connect directly or through a session-mode pooler.`,
    );
  }
  return row;
}

function isSessionGone(error: unknown, watch: Watch): boolean {
  if (watch.error !== undefined) return true;
  const severity = (error as { severity?: string } | null)?.severity;
  return (
    severity === 'FATAL' || severity === 'PANIC' || /Connection terminated|not queryable/.test(errorMessage(error))
  );
}

export function formatMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  const seconds = Math.round(ms / 1000);
  return `${Math.floor(seconds / 60)}m${seconds % 60}s`;
}
