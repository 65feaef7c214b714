// postgres.js (npm `postgres`) behind the Session seam. Nothing here imports 'postgres': the caller's own
// `sql` object is all we use, typed structurally (./types.ts), so users without `postgres` installed typecheck.
import { endsSession } from './errors.js';
import type { PostgresJsReservedSql, PostgresJsSql, Session, SessionSource } from './types.js';

/** postgres.js' internal connection object, reached through the `onexecute` query option (as its own `sql.begin` does). */
interface Connection {
  /** Sends Terminate and ends the socket, and rejects everything queued on it at once. */
  terminate(): void;
  /** Called once (then cleared) when the socket closes, whatever the reason. `sql.begin` uses the same slot. */
  onclose?: ((error: unknown) => void) | null;
}

// The reserved sql's members that make a statement (called as a tagged template, it makes one too).
const STATEMENTS = new Set<PropertyKey>(['unsafe', 'file', 'notify']);

/** `reserved`, with every statement it makes passed through `watch`. */
function watched<S extends object>(reserved: S, watch: <Q>(query: Q) => Q): S {
  return new Proxy(reserved, {
    apply: (target, self, args) => watch(Reflect.apply(target as (...args: unknown[]) => unknown, self, args)),
    get(target, property) {
      const value = Reflect.get(target, property);
      if (!STATEMENTS.has(property) || typeof value !== 'function') return value;
      return (...args: unknown[]) => watch(Reflect.apply(value as (...args: unknown[]) => unknown, target, args));
    },
  });
}

/** What we read of a postgres.js sql's `options`. */
interface ParsedOptions {
  host?: string[];
  port?: number[];
  transform?: { column?: { from?: (name: string) => string } };
}

/**
 * With a column transform on the sql (`postgres.camel`: now_ms → nowMs), our rows come back renamed.
 * The transform is a function we can call, so each renamed column is mapped back to the identifier of
 * our statement it came from.
 */
function columnNamesBack(from: ((name: string) => string) | undefined) {
  if (typeof from !== 'function') return undefined;
  const cache = new Map<string, Map<string, string>>();
  return (text: string, row: Record<string, unknown>) => {
    let back = cache.get(text);
    if (!back) {
      back = new Map();
      for (const name of new Set(text.match(/\b[a-z_][a-z0-9_]*\b/g))) back.set(from(name), name);
      if (cache.size < 100) cache.set(text, back);
    }
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(row)) out[back.get(key) ?? key] = value;
    return out;
  };
}

type Unsafe = (query: string, parameters?: unknown[], options?: object) => PromiseLike<unknown>;

/** A postgres.js `sql` or reserved `sql`: a function with `unsafe` (a `pg` client is an object). */
export function isPostgresJs(source: unknown): source is PostgresJsSql | PostgresJsReservedSql {
  return typeof source === 'function' && typeof (source as { unsafe?: unknown }).unsafe === 'function';
}

/** Checks a postgres.js `sql` without touching the network. */
export function checkPostgresJs(source: PostgresJsSql | PostgresJsReservedSql): void {
  const sql = source as Partial<PostgresJsSql & PostgresJsReservedSql>;
  if (typeof sql.reserve === 'function' || typeof sql.release === 'function') return;
  // A transaction sql (inside sql.begin) would lock inside the caller's transaction, and end with it.
  throw new TypeError(
    'Expected a postgres.js `sql` from postgres() or a reserved one from `await sql.reserve()`, got another postgres.js sql (a transaction or savepoint?): pass the sql itself',
  );
}

/**
 * Sessions from postgres.js: a `sql` reserves one connection per call and gives it back after (and
 * waiters reserve another when theirs breaks); a reserved `sql` is the caller's, used as-is.
 */
export function postgresJsSource(source: PostgresJsSql | PostgresJsReservedSql): SessionSource {
  checkPostgresJs(source);
  const sql = source as PostgresJsSql;
  if (typeof sql.reserve === 'function') {
    return { reopenable: true, open: async () => postgresJsSession(await sql.reserve(), 'pooled', sql) };
  }
  return {
    reopenable: false,
    borrowed: source,
    open: async () => postgresJsSession(source as PostgresJsReservedSql, 'borrowed'),
  };
}

// How long a waiter waits for postgres.js' listen connection before it falls back to polling.
const LISTEN_WITHIN_MS = 5_000;

function postgresJsSession(reserved: PostgresJsReservedSql, kind: Session['kind'], parent?: PostgresJsSql): Session {
  const unsafe = reserved.unsafe.bind(reserved) as Unsafe;
  let connection: Connection | undefined;
  let lostError: unknown;
  let lostListener: ((error: unknown) => void) | undefined;
  let given = false;
  const lose = (error: unknown) => {
    if (lostError !== undefined) return;
    lostError = error ?? new Error('Connection closed');
    lostListener?.(lostError);
  };
  // postgres.js builds a statement at once but sends it only when it is awaited, so a statement is
  // checked when it is sent: after a loss it is refused, never written to the closed connection (which
  // hangs it, or crashes the process: porsager/postgres#1208). And a reset connection fails its
  // statements (ECONNRESET) a tick before its socket's close reaches `onclose`: the loss is also taken
  // from the first statement that fails that way, before anyone sees it fail. postgres.js sends a
  // statement through its own `handler` and settles it through its own `reject`, both wrapped here.
  // (Fragments such as sql('name') have neither, and pass as they are.)
  const watch = <Q>(query: Q): Q => {
    const statement = query as {
      handler?: (statement: unknown) => unknown;
      reject?: (error: unknown) => void;
    } | null;
    const { handler, reject } = statement ?? {};
    if (typeof handler !== 'function' || typeof reject !== 'function') return query;
    statement!.handler = (self: unknown) => (lostError === undefined ? handler(self) : statement!.reject!(lostError));
    statement!.reject = (error: unknown) => {
      if (endsSession(error)) lose(error);
      reject(error);
    };
    return query;
  };
  // postgres.js tells nobody when a reserved connection closes: the pool just takes it back. Its
  // Connection has one `onclose` slot (what `sql.begin` uses), reachable through `onexecute`, which
  // postgres.js calls for a statement without parameters (our first statement on a session has none).
  const onexecute = (c: Connection) => {
    if (!connection) {
      connection = c;
      c.onclose = lose;
    }
    return true; // false would mark the connection as full: later queries would queue
  };
  const options = (parent as { options?: ParsedOptions } | undefined)?.options;
  const untransform = columnNamesBack(options?.transform?.column?.from);
  return {
    // Ours (reserved for this call): watched, so that fn's own statements after a loss (e.g. its
    // ROLLBACK) fail instead of hanging or crashing. The caller's own reserved sql is theirs, as it is.
    client: kind === 'pooled' ? watched(reserved, watch) : reserved,
    kind,
    endpoint: options ? { host: options.host?.[0], port: options.port?.[0] } : undefined,
    async query<R>(text: string, params: unknown[] = []) {
      // After a close the pool may reconnect this very connection for someone else (or it has no
      // socket): a statement of ours must never run there.
      if (lostError !== undefined) throw lostError;
      const rows = Array.from((await watch(unsafe(text, params, { onexecute }))) as R[]);
      return untransform ? rows.map((row) => untransform(text, row as Record<string, unknown>) as R) : rows;
    },
    // A borrowed reserved sql has no `listen` (only its parent has): its waiters only poll.
    listen: parent
      ? async (channel, onPayload) => {
          // postgres.js delivers notifications on a connection of its own, idle between them: it holds
          // no snapshot, so a holder's CREATE INDEX CONCURRENTLY does not wait for it. Shared by every
          // call on this sql (postgres.js LISTENs once per channel), ended by `sql.end()`.
          const request = Promise.resolve(parent.listen(channel, onPayload));
          let timer: NodeJS.Timeout | undefined;
          const meta = await Promise.race([
            request,
            new Promise<undefined>((resolve) => {
              timer = setTimeout(() => resolve(undefined), LISTEN_WITHIN_MS);
            }),
          ])
            .catch(() => undefined)
            .finally(() => clearTimeout(timer));
          if (!meta) {
            // No listen connection (too many connections, a slow network): poll, and drop it if it comes.
            request
              .then(
                (late) => late.unlisten(),
                () => {},
              )
              .then(undefined, () => {});
            return async () => {};
          }
          return async () => {
            await meta.unlisten();
          };
        }
      : undefined,
    onLost(onLost) {
      lostListener = onLost;
      if (lostError !== undefined) onLost(lostError);
      return () => {
        if (lostListener === onLost) lostListener = undefined;
      };
    },
    destroy() {
      // No way to the socket itself: terminate() rejects what is queued at once and closes the socket;
      // the pool takes the connection back once it is closed.
      if (connection) {
        if (connection.onclose === lose) connection.onclose = null;
        connection.terminate();
      }
      lose(new Error('Connection destroyed'));
    },
    async release(discard) {
      if (given) return;
      given = true;
      if (connection?.onclose === lose) connection.onclose = null;
      // A closed connection went back to the pool by itself; handing it back again would put a dead
      // connection in its open queue. The caller's own reserved sql stays theirs.
      if (kind !== 'pooled' || lostError !== undefined) return;
      if (discard && connection) {
        // Closing the connection releases any lock it may still hold; the pool reconnects it later.
        connection.terminate();
        return;
      }
      reserved.release();
    },
  };
}
