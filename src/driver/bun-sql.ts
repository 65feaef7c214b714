// Bun's own PostgreSQL client (`import { SQL } from 'bun'`) behind the Session seam. Nothing here imports
// 'bun': the caller's `SQL` instance is all we use, typed structurally (./types.ts), and it is recognised as
// an instance of the running Bun's `SQL` (under Node there is none, so nothing is ever taken for one).
//
// Bun's SQL looks like a postgres.js `sql` (a function with `unsafe` and `reserve`), but it is not one: its
// reserved sql has `reserve` too (postgres.js would take it for a pool), its transaction sql has `reserve` and
// no `release`, its errors carry the SQLSTATE in `errno`, and it tells of a closed connection only through the
// pool's `onclose` option, for any connection of the pool, without saying which.
import { codeOf, endsSession } from './errors.js';
import { listenWithin, lossLatch } from './kit.js';
import type { BunSql, BunSqlReserved, Session, SessionSource } from './types.js';

/** An instance of the running Bun's `SQL` (root, reserved or transaction sql); always false under Node. */
export function isBunSql(source: unknown): source is BunSql | BunSqlReserved {
  const SQL = (globalThis as { Bun?: { SQL?: unknown } }).Bun?.SQL;
  return typeof SQL === 'function' && typeof source === 'function' && source instanceof SQL;
}

/** Checks a Bun SQL without touching the network. */
export function checkBunSql(source: BunSql | BunSqlReserved): void {
  const adapter = (source as { options?: { adapter?: unknown } }).options?.adapter;
  if (adapter !== undefined && adapter !== 'postgres') {
    throw new TypeError(
      `Expected a Bun SQL for PostgreSQL, got one for ${String(adapter)}: a PostgreSQL advisory lock needs a PostgreSQL server`,
    );
  }
  // A transaction sql (inside sql.begin) would lock inside the caller's transaction, and end with it.
  if (typeof (source as { savepoint?: unknown }).savepoint === 'function') {
    throw new TypeError(
      'Expected a Bun SQL from `new SQL(url)` or a reserved one from `await sql.reserve()`, got a transaction sql (inside sql.begin): pass the SQL itself',
    );
  }
}

/**
 * Sessions from Bun's SQL: an `SQL` reserves one connection per call and gives it back after (and waiters
 * reserve another when theirs breaks); a reserved one is the caller's, used as-is (and, having no listen
 * connection of its own, its waiters only poll).
 */
export function bunSqlSource(source: BunSql | BunSqlReserved): SessionSource {
  checkBunSql(source);
  if (typeof (source as BunSqlReserved).release === 'function') {
    const reserved = source as BunSqlReserved;
    return { reopenable: false, borrowed: reserved, open: async () => bunSqlSession(reserved, 'borrowed') };
  }
  const sql = source as BunSql;
  return { reopenable: true, open: async () => bunSqlSession(await sql.reserve(), 'pooled', sql) };
}

// The sessions open on each pool, by its options object (the reserved sql shares its pool's): told when
// any connection of that pool closes.
const watchers = new WeakMap<object, Set<() => void>>();

/**
 * Calls `onClose` whenever a connection of `sql`'s pool closes, until the returned function is called.
 * Bun reads the pool's `onclose` option at each close, so a wrapper put there once per pool hears them all;
 * the caller's own `onclose` is still called first, as it was.
 */
function onPoolClose(sql: BunSqlReserved, onClose: () => void): () => void {
  const options = sql.options as { onclose?: unknown } | undefined;
  if (!options || typeof options !== 'object') return () => {};
  let set = watchers.get(options);
  if (!set) {
    const own = new Set<() => void>();
    set = own;
    watchers.set(options, own);
    const previous = options.onclose;
    options.onclose = function (this: unknown, ...args: unknown[]) {
      try {
        if (typeof previous === 'function') return previous.apply(this, args);
      } finally {
        for (const watcher of own) watcher();
      }
    };
  }
  set.add(onClose);
  return () => set.delete(onClose);
}

/**
 * A server's error with its SQLSTATE as `code`, as pg and postgres.js give it (Bun says ERR_POSTGRES_SERVER_ERROR
 * there, and the SQLSTATE in `errno`): the lock reads codes such as 57014 (its own cancel) from our statements'
 * errors. Only our own statements' errors are changed (a closed connection may answer ours with the very error
 * it gave fn, though).
 */
function withSqlState(error: unknown): unknown {
  const sqlState = codeOf(error);
  if (error !== null && typeof error === 'object' && sqlState !== (error as { code?: unknown }).code) {
    try {
      Object.defineProperty(error, 'code', { value: sqlState, configurable: true, writable: true, enumerable: true });
    } catch {
      // A frozen error keeps Bun's code; errors.ts reads errno then.
    }
  }
  return error;
}

function bunSqlSession(reserved: BunSqlReserved, kind: Session['kind'], parent?: BunSql): Session {
  const loss = lossLatch();
  const lose = loss.lose;
  let given = false;
  // A connection of the pool closed: ask ours. A closed reserved connection fails a statement at once,
  // without a round trip, with the error that closed it (57P01 for pg_terminate_backend); a live one
  // answers after whatever fn has queued on it (a failed transaction's 25P02 is no loss).
  let probing = false;
  const probe = () => {
    if (given || probing || loss.error !== undefined) return;
    probing = true;
    Promise.resolve(reserved.unsafe('SELECT 1')).then(
      () => {
        probing = false;
      },
      (error: unknown) => {
        probing = false;
        if (!given && endsSession(error)) lose(withSqlState(error));
      },
    );
  };
  const unwatch = onPoolClose(reserved, probe);
  /** Closes this one connection (what is queued on it fails); the pool opens another when needed. */
  const cut = () => {
    Promise.resolve(reserved.close?.()).catch(() => {});
  };
  const options = reserved.options;
  return {
    client: reserved,
    kind,
    endpoint: options ? { host: options.hostname, port: options.port } : undefined,
    async query<R>(text: string, params: unknown[] = []) {
      if (loss.error !== undefined) throw loss.error;
      try {
        return Array.from((await reserved.unsafe(text, params)) as R[]);
      } catch (err) {
        withSqlState(err);
        if (endsSession(err)) lose(err);
        throw err;
      }
    },
    // Bun delivers notifications on a connection of its own, one per pool.
    listen: parent ? (channel, onPayload) => listenWithin(parent.listen(channel, onPayload)) : undefined,
    onLost: loss.onLost,
    destroy() {
      cut();
      lose(new Error('Connection destroyed'));
    },
    async release(discard) {
      if (given) return;
      given = true;
      unwatch();
      if (kind !== 'pooled') return;
      // Closing the connection releases any lock it may still hold; the pool opens another later. Bun takes a
      // closed reserved connection back as closed.
      if (discard && loss.error === undefined) cut();
      reserved.release();
    },
  };
}
