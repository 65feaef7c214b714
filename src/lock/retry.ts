// Lock timeouts and retries while fn runs (lockTimeoutMs, lockRetries): the lock session gets lock_timeout, so a
// migration's statement that waits for a table lock gives up instead of queueing the app's queries behind it; a
// try that failed so is logged with who blocked it and tried again after a back-off, the advisory lock held.
import { codeOf } from '../driver/errors.js';
import type { Query, Session, SessionSource } from '../driver/index.js';
import { MigrationBlockedError } from '../errors.js';
import { errorMessage, type Logger } from '../logger.js';
import { type Blocker, blockersOfTag, LOCK_NOT_AVAILABLE, likelyBlockers, setLockTimeout } from '../sql/blockers.js';
import { rollbackSql } from '../sql/settings.js';
import { Backoff, formatMs, nap } from '../time.js';
import type { ResolvedOptions } from './options.js';
import { inTransactionBlock } from './release.js';
import { bounded } from './watch.js';

// Where migrators keep the error they wrap: `cause` (drizzle, umzug, ours), `driverError` (TypeORM), `original`
// and `parent` (Sequelize), `originalError`, `nativeError`, `previous` (MikroORM), `error` (kysely's result).
const WRAPPED = ['cause', 'driverError', 'original', 'parent', 'originalError', 'nativeError', 'previous', 'error'];

/**
 * Whether `err` is a lock timeout (SQLSTATE 55P03, `code` or `sqlState`), itself or an error it wraps (see
 * WRAPPED, and AggregateError's `errors`), up to a few levels deep.
 */
export function isLockTimeout(err: unknown, depth = 0): boolean {
  if (err === null || typeof err !== 'object' || depth > 6) return false;
  const e = err as Record<string, unknown>;
  // codeOf: Bun's SQL keeps the SQLSTATE in `errno`, under a code of its own.
  if (codeOf(err) === LOCK_NOT_AVAILABLE || e.sqlState === LOCK_NOT_AVAILABLE) return true;
  const inner = [...WRAPPED.map((name) => e[name]), ...(Array.isArray(e.errors) ? e.errors : [])];
  return inner.some((wrapped) => wrapped !== err && isLockTimeout(wrapped, depth + 1));
}

/** `pid 4242 (application_name report), idle in transaction, in a transaction for 5.2s: SELECT …` */
export function describeBlocker(blocker: Blocker, now = Date.now()): string {
  const name = blocker.applicationName ? ` (application_name ${blocker.applicationName})` : '';
  const since = blocker.xactStart ?? blocker.queryStart;
  const parts = [
    blocker.state,
    since &&
      `${blocker.xactStart ? 'in a transaction' : 'running'} for ${formatMs(Math.max(0, now - since.getTime()))}`,
  ].filter(Boolean);
  const query = blocker.query ? `: ${oneLine(blocker.query, 200)}` : '';
  return `pid ${blocker.pid}${name}${parts.length > 0 ? `, ${parts.join(', ')}` : ''}${query}`;
}

const oneLine = (text: string, max: number) => {
  const line = text.replace(/\s+/g, ' ').trim();
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
};

/** Who blocked: those seen blocking, else the likely ones, named for a message. */
export function describeBlockers(blockers: Blocker[]): string {
  if (blockers.length === 0) return 'a session that could not be found (gone, or not visible to this role)';
  const seen = blockers.every((b) => b.seen === 'seen');
  const list = blockers.map((b) => describeBlocker(b)).join('; ');
  return seen
    ? list
    : `probably ${blockers.length === 1 ? '' : 'one of '}${list} (the oldest transaction${blockers.length === 1 ? '' : 's'} holding a table lock)`;
}

/** What a holding's retries need: its session, where to open a look-out session, its tag, how to name it. */
export interface Retrying {
  session: Session;
  source: SessionSource;
  tag: string;
  key: bigint;
  label: string;
  options: ResolvedOptions;
  /** Aborts when the lock session is lost: no more tries then. */
  lost: AbortSignal;
}

/**
 * Runs `run` with the lock session's lock_timeout set to `lockTimeoutMs` (put back at release, with the other
 * settings), and calls it again when it fails on a lock timeout, up to `lockRetries` more times. Without either
 * option, just `run`.
 */
export async function withLockRetries<T>(r: Retrying, run: () => T | Promise<T>): Promise<T> {
  const { lockTimeoutMs, lockRetries, logger } = r.options;
  if (lockTimeoutMs === undefined && lockRetries === 0) return run();
  const backoff = new Backoff(100, 5_000);
  // A look every quarter of the timeout catches a wait that lasts the whole timeout about four times.
  const lookout = LookOut.start(r, Math.min(1_000, Math.max(25, (lockTimeoutMs ?? 2_000) / 4)));
  try {
    for (let tries = 1; ; tries++) {
      if (lockTimeoutMs !== undefined) await setLockTimeout(boundedQuery(r.session), lockTimeoutMs);
      lookout?.clear();
      try {
        return await run();
      } catch (err) {
        if (!isLockTimeout(err) || r.lost.aborted) throw err;
        // What the failed try left open or aborted is rolled back first: nothing else runs in an aborted block.
        if (!(await endLeftTransaction(r.session, logger))) throw err;
        const blockers = await whoBlocked(r, lookout);
        const timeout = lockTimeoutMs === undefined ? 'its lock_timeout' : `lock_timeout ${formatMs(lockTimeoutMs)}`;
        const blocked = `waited longer than ${timeout} for a table lock, held by ${describeBlockers(blockers)}`;
        if (tries > lockRetries) {
          throw new MigrationBlockedError(
            `Migration under lock ${r.label} gave up after ${tries} ${tries === 1 ? 'try' : 'tries'}: a statement of each ${blocked}. What a try was doing when it timed out rolled back with its transaction; run it again once that session is done, or end it`,
            r.key,
            tries,
            blockers,
            { cause: err },
          );
        }
        const delay = backoff.next();
        logger.warn(
          `Migration under lock ${r.label}, try ${tries} of ${lockRetries + 1}: a statement ${blocked} (${errorMessage(err)}); trying again in ${formatMs(delay)}, the migration lock held`,
        );
        await nap(delay, r.lost).done;
        // A lost session ends the call (runLocked reports it), not another try.
        if (r.lost.aborted) throw err;
      }
    }
  } finally {
    lookout?.stop();
  }
}

/** The session's statements, each bounded like every statement of ours: a dead network must not hang a retry. */
const boundedQuery =
  (session: Session): Query =>
  (sql, params) =>
    bounded(session, session.query(sql, params));

/** Who blocked the try that just failed: what the look-out saw, else the likely ones, asked on the lock session. */
async function whoBlocked(r: Retrying, lookout: LookOut | undefined): Promise<Blocker[]> {
  if (lookout && lookout.seen.length > 0) return lookout.seen;
  try {
    return await likelyBlockers(boundedQuery(r.session), r.tag);
  } catch (err) {
    r.options.logger.debug?.(`Could not look for the sessions that blocked the migration: ${errorMessage(err)}`);
    return [];
  }
}

/**
 * A failed try's transaction that fn left open or aborted: rolled back, or the next try could not even start.
 * Resolves false when the session could not be asked or rolled back (it is then no place for another try).
 */
async function endLeftTransaction(session: Session, logger: Logger): Promise<boolean> {
  try {
    if (!(await bounded(session, inTransactionBlock(session)))) return true;
    logger.debug?.('The failed try left a transaction open on the lock session: rolling it back');
    await bounded(session, session.query(rollbackSql));
    return true;
  } catch (err) {
    logger.debug?.(`Could not end the failed try's transaction: ${errorMessage(err)}`);
    return false;
  }
}

// How long a look-out session may take to open (a pool with no connection free): past it, none is used.
const OPEN_BOUND_MS = 2_000;

/**
 * A second session that looks, while fn runs, for sessions blocking a lock wait of the holding's work: once a
 * statement is cancelled by lock_timeout, pg_blocking_pids no longer shows who blocked it. Only for a source
 * that opens connections of its own (a URL, a config): never one of a pool, nor the caller's own client. It is
 * opened beside the first try, which does not wait for it.
 */
class LookOut {
  seen: Blocker[] = [];
  readonly #stopped = new AbortController();

  private constructor(
    private readonly r: Retrying,
    private readonly everyMs: number,
  ) {}

  static start(r: Retrying, everyMs: number): LookOut | undefined {
    // Not from a pool (pg's or postgres.js'): a second connection held for all of fn could be the one fn or its
    // migrator waits for. Only a source that opens connections of its own (a URL, a config) gets a look-out.
    if (!r.source.reopenable || r.session.kind !== 'own') return undefined;
    const lookout = new LookOut(r, everyMs);
    void lookout.#run();
    return lookout;
  }

  clear(): void {
    this.seen = [];
  }

  stop(): void {
    this.#stopped.abort();
  }

  async #run(): Promise<void> {
    const { logger } = this.r.options;
    const stopped = this.#stopped.signal;
    const opening = this.r.source.open();
    const bound = nap(OPEN_BOUND_MS, stopped);
    const session = await Promise.race([opening.catch(() => undefined), bound.done.then(() => undefined)]);
    bound.wake();
    if (!session || stopped.aborted) {
      // Given back whenever it comes.
      void opening.then((late) => late.release()).catch(() => {});
      if (!stopped.aborted) logger.debug?.('No session to look for blockers with: they are guessed after a timeout');
      return;
    }
    try {
      while (!stopped.aborted) {
        const blockers = await blockersOfTag(session.query, this.r.tag);
        if (blockers.length > 0) this.seen = blockers;
        await nap(this.everyMs, stopped).done;
      }
      await session.release();
    } catch (err) {
      logger.debug?.(`Stopped looking for blockers: ${errorMessage(err)}`);
      await session.release(true).catch(() => {});
    }
  }
}
