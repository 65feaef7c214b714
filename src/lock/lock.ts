// withMigrationLock: the lock's life in one place: open a session and take the lock (acquire.ts), run fn on
// it tagged (fencing), notice a lost session, release (release.ts).
import { AsyncLocalStorage } from 'node:async_hooks';
import type pg from 'pg';
import {
  type ClientSource,
  isSessionSource,
  type PostgresJsReservedSql,
  type PostgresJsSql,
  type ReservedOf,
  type SessionSource,
  sessionSource,
} from '../driver/index.js';
import { MigrationLockLostError } from '../errors.js';
import { describeKey, type LockKeyInput, parseKey } from '../key.js';
import { callSafely, errorMessage } from '../logger.js';
import { newTag } from '../sql/fencing.js';
import { databaseAttributes, migratorOf, traceHold, traceWait, waitOutcome } from '../telemetry.js';
import { formatMs } from '../time.js';
import { acquire } from './acquire.js';
import { fenceOwn } from './fence.js';
import { type Held, SKIPPED, type Unless } from './holding.js';
import { type LockContext, type MigrationLockOptions, type ResolvedOptions, resolveOptions } from './options.js';
import { release } from './release.js';
import { withLockRetries } from './retry.js';

export { SKIPPED, type Unless } from './holding.js';

// Sessions inside a call right now. Advisory locks are re-entrant per session, so two calls sharing
// one session would both "acquire" and exclude nothing.
const busySessions = new WeakSet<object>();

// The tags of the holdings an async context runs inside: a call nested in fn on the same key would wait
// for its own caller forever, and is refused instead. Enabled only while some holding runs, since on
// Node 20 an enabled AsyncLocalStorage costs every promise of the process a hook.
const holdings = new AsyncLocalStorage<ReadonlySet<string>>();
let running = 0;
// The first run of an AsyncLocalStorage in a process costs about 0.6 ms (Node sets its hooks up), the next ones
// 0.02 ms: paid here, at import, rather than between a waiter taking the lock and its fn starting.
holdings.run(new Set(), () => {});
holdings.disable();

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
 * For adapters: `withMigrationLock`, except that it checks before queueing. `unless.isDone` is asked on each
 * session this call opens, before it tries the lock (one connection serves the check and the lock), and
 * again while it waits (see {@link Unless}). When it resolves true (nothing is pending any more) the call
 * resolves to {@link SKIPPED} without taking the lock. An error of `isDone` reaches the caller as it is.
 */
export async function withMigrationLockUnless<T, C = pg.ClientBase>(
  client: ClientSource | SessionSource,
  key: LockKeyInput,
  fn: (ctx: LockContext<C>) => T | Promise<T>,
  options: MigrationLockOptions,
  unless: Unless<C>,
): Promise<T | typeof SKIPPED> {
  if (typeof unless?.isDone !== 'function') throw new TypeError('Expected `unless.isDone` to be a function');
  return lockFrom(client, key, fn, options, unless);
}

async function lockFrom<T, C>(
  client: ClientSource | SessionSource,
  key: LockKeyInput,
  fn: (ctx: LockContext<C>) => T | Promise<T>,
  options: MigrationLockOptions,
  unless?: Unless<C>,
): Promise<T | typeof SKIPPED> {
  const k = parseKey(key);
  if (typeof fn !== 'function') throw new TypeError(`Expected \`fn\` to be a function, got ${typeof fn}`);
  // The options a fleet hands its migrator (KeyedLockOptions) carry the key they were made for: as options of a
  // call on that same key they are taken as they are; on another key they would mislead, and are refused.
  const opts = resolveOptions(options, ['key']);
  const keyed = (options as { key?: LockKeyInput }).key;
  if (keyed !== undefined && parseKey(keyed) !== k) {
    throw new TypeError(
      `The options carry key ${String(keyed)}, but the call locks ${k}: pass the same key, or leave it out`,
    );
  }
  // Messages name a key of the key table as the CLI does: `-4853655304891776800 (default key)`.
  opts.keyLabel ??= describeKey(k);
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
    const tag = newTag(k, opts.applicationName);
    // pg_migration_lock.wait: from here to the lock taken, or given up.
    const migrator = migratorOf(options);
    const waiting = traceWait(k, migrator);
    let held: Held | typeof SKIPPED;
    try {
      held = await waiting.within(() =>
        acquire({
          source,
          key: k,
          options: opts,
          tag,
          unless: unless as Unless<unknown> | undefined,
          enclosing: holdings.getStore(),
        }),
      );
    } catch (err) {
      const outcome = waitOutcome(err, opts.signal);
      waiting.end(outcome, {}, outcome === 'error' ? err : undefined);
      throw err;
    }
    if (held === SKIPPED) waiting.end('skipped');
    else waiting.end('acquired', { 'pg_migration_lock.pid': held.pid, ...databaseAttributes(held.session.client) });
    if (held === SKIPPED) return SKIPPED;
    try {
      const holding = traceHold(k, migrator, { pid: held.pid, client: held.session.client, since: held.at });
      return await runLocked(held, source, k, fn as (ctx: LockContext<unknown>) => T | Promise<T>, opts, holding);
    } finally {
      held.watch.dispose();
    }
  } finally {
    if (borrowed) busySessions.delete(borrowed);
  }
}

/** Runs fn on the held session, tagged; a session lost meanwhile aborts fn's signal and fails the call. */
async function runLocked<T>(
  held: Held,
  source: SessionSource,
  key: bigint,
  fn: (ctx: LockContext<unknown>) => T | Promise<T>,
  opts: ResolvedOptions,
  holding: ReturnType<typeof traceHold>,
): Promise<T> {
  const { session, watch, pid, waitedMs, tag } = held;
  const { logger, hooks } = opts;
  const label = opts.keyLabel ?? String(key);
  const controller = new AbortController();
  let lostDuringFn: MigrationLockLostError | undefined;
  let fencing: Promise<void> | undefined;
  // Only fn can have put the tag on other connections (it read ctx.tag): only then is there work to stop.
  let tagHandedOut = false;
  // What ran under this holding's tag is no longer protected: stop it now, not when fn settles.
  const fenceOwnWork = () => {
    if (tagHandedOut) fencing ??= fenceOwn(source, tag, logger);
    return fencing;
  };
  watch.onLost = (cause: unknown) => {
    lostDuringFn ??= new MigrationLockLostError(
      `Lost the session holding migration lock ${label} (pid ${pid}): ${errorMessage(cause)}`,
      key,
      null,
      { cause },
    );
    logger.warn(`${lostDuringFn.message}; signalling the migration to stop`);
    controller.abort(lostDuringFn);
    callSafely(logger, 'onLockLost', hooks.onLockLost, lostDuringFn);
    void fenceOwnWork();
  };

  logger.debug?.(`Acquired migration lock ${label} on pid ${pid} after ${formatMs(waitedMs)} (tag ${tag})`);
  callSafely(logger, 'onAcquired', hooks.onAcquired, { key, pid, waitedMs, tag });

  let value: T | undefined;
  let fnFailed = false;
  let fnError: unknown;
  try {
    const ctx: LockContext<unknown> = {
      client: session.client,
      key,
      signal: controller.signal,
      waitedMs,
      get tag() {
        tagHandedOut = true;
        return tag;
      },
    };
    const retrying = { session, source, tag, key, label, options: opts, lost: controller.signal };
    value = await holding.within(() => inHolding(tag, () => withLockRetries(retrying, () => fn(ctx))));
  } catch (err) {
    fnFailed = true;
    fnError = err;
  }
  watch.onLost = undefined;

  if (lostDuringFn) {
    holding.end('lost', {}, lostDuringFn);
    await session.release(true);
    await fenceOwnWork();
    throw lostDuringFn;
  }
  const lost = await release(held, key, opts, fnFailed ? fnError : undefined);
  if (lost) {
    holding.end('lost', {}, lost);
    callSafely(logger, 'onLockLost', hooks.onLockLost, lost);
    await fenceOwnWork();
    throw lost;
  }
  holding.end(fnFailed ? 'failed' : 'released', {}, fnFailed ? fnError : undefined);
  if (fnFailed) throw fnError;
  return value as T;
}

/** Runs `fn` with `tag` among the holdings of its async context. */
async function inHolding<T>(tag: string, fn: () => T | Promise<T>): Promise<T> {
  running++;
  try {
    return await holdings.run(new Set([...(holdings.getStore() ?? []), tag]), fn);
  } finally {
    if (--running === 0) holdings.disable();
  }
}
