// postgres.js (npm `postgres`, 3.x and 4.x) behind the Session seam. Nothing here imports 'postgres': the
// caller's own `sql` object is all we use, typed structurally (./types.ts), so users without `postgres`
// installed typecheck.
//
// postgres.js tells nobody when a reserved connection closes: the pool just takes it back. How we notice
// depends on the major version, told apart by what it does with our first statement on a session:
// - 4.x publishes what it does on diagnostics channels (its public API): the `postgres:query` trace of our
//   first statement names the connection, and `postgres:pool` announces that connection's `close`. A
//   reserved sql refuses statements once its connection closed, by itself.
// - 3.x (no longer developed) has no such API: its Connection object is reached through the `onexecute`
//   query option (as its own `sql.begin` does), and statements are checked before they are sent, because
//   3.x would write them to the closed (or reconnected) connection.
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { endsSession } from './errors.js';
import { listenWithin, lossLatch } from './kit.js';
import {
  type ConnectionV3,
  columnNamesBack,
  connectionOf,
  type ParsedOptions,
  POOL,
  type PoolEvent,
  type QueryTrace,
  type Statement,
  traced,
  type Unsafe,
  watched,
} from './postgres-js-wire.js';
import type { PostgresJsReservedSql, PostgresJsSql, Session, SessionSource } from './types.js';

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

function postgresJsSession(reserved: PostgresJsReservedSql, kind: Session['kind'], parent?: PostgresJsSql): Session {
  const unsafe = reserved.unsafe.bind(reserved) as Unsafe;
  // How this postgres.js tells us of a close, learnt from our first statement: 3.x through its Connection
  // (`v3`), 4.x through its diagnostics channels (`channels`); undefined until then.
  let flavor: 'v3' | 'channels' | undefined;
  let v3: ConnectionV3 | undefined;
  // 4.x: our connection (`id@host:port`), and the connection object our statements were sent on (see `cut`).
  let ours: string | undefined;
  let sentOn: Statement['connection'];
  const pending = new Set<Statement>();
  const loss = lossLatch();
  const lose = loss.lose;
  let given = false;

  // 4.x: a close is announced on `postgres:pool`, in the same tick as the connection's statements are
  // rejected, so the loss is known before anyone sees them fail. Closes heard before our first statement
  // named our connection are kept until it does.
  const closedEarly = new Set<string>();
  const onPool = (message: unknown) => {
    const event = message as PoolEvent;
    if (event.event !== 'close') return;
    const which = connectionOf(event);
    if (which === ours) lose(event.error);
    else if (flavor === undefined && closedEarly.size < 1_000) closedEarly.add(which);
  };
  let listening = true;
  subscribe(POOL, onPool);
  const stopListening = () => {
    if (listening) unsubscribe(POOL, onPool);
    listening = false;
  };
  const learn = (trace: QueryTrace | undefined) => {
    if (flavor !== undefined || !trace) return;
    flavor = 'channels';
    ours = connectionOf(trace);
    if (closedEarly.has(ours)) lose(new Error('Connection closed'));
    closedEarly.clear();
  };

  // 3.x: postgres.js builds a statement at once but sends it only when it is awaited, so a statement is
  // checked when it is sent: after a loss it is refused, never written to the closed connection (which
  // hangs it, or crashes the process: porsager/postgres#1208). And a reset connection fails its
  // statements (ECONNRESET) a tick before its socket's close reaches `onclose`: the loss is also taken
  // from the first statement that fails that way, before anyone sees it fail. postgres.js 3 sends a
  // statement through its own `handler` and settles it through its own `reject`, both
  // wrapped here. (Fragments such as sql('name') have neither, and pass as they are; 4.x needs none of it.)
  const watch = <Q>(query: Q): Q => {
    if (flavor !== 'v3') return query;
    const statement = query as {
      handler?: (statement: unknown) => unknown;
      reject?: (error: unknown) => void;
    } | null;
    const { handler, reject } = statement ?? {};
    if (typeof handler !== 'function' || typeof reject !== 'function') return query;
    statement!.handler = (self: unknown) => (loss.error === undefined ? handler(self) : statement!.reject!(loss.error));
    statement!.reject = (error: unknown) => {
      if (endsSession(error)) lose(error);
      reject(error);
    };
    return query;
  };
  // 3.x: its Connection has one `onclose` slot (what `sql.begin` uses), reachable through `onexecute`,
  // which postgres.js 3 calls for a statement without parameters (our first statement on a session has
  // none). 4.x does not know the option.
  const onexecute = (c: ConnectionV3) => {
    if (!v3 && flavor === undefined) {
      flavor = 'v3';
      v3 = c;
      c.onclose = lose;
      stopListening();
    }
    return true; // false would mark the connection as full: later queries would queue
  };
  /** Closes the connection at once: what is queued on it is rejected, and the pool opens another later. */
  const cut = () => {
    if (v3) {
      if (v3.onclose === lose) v3.onclose = null;
      v3.terminate();
      return;
    }
    // 4.x has no public way to close one connection: its connection object, which our statements carry,
    // can. Without it, cancelling what is pending is the next best thing: postgres.js closes the
    // connection itself when the server does not answer the cancel within `cancel_timeout`.
    if (typeof sentOn?.destroy === 'function') sentOn.destroy();
    else for (const statement of pending) Promise.resolve(statement.cancel?.()).catch(() => {});
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
      if (loss.error !== undefined) throw loss.error;
      const statement = unsafe(text, params, { onexecute }) as Statement;
      // 4.x: our rows as the server names their columns, whatever the sql's transforms (3.x: see untransform).
      const transformed = typeof statement.transform !== 'function';
      if (!transformed) statement.transform!(false);
      pending.add(statement);
      let result: unknown;
      try {
        if (flavor !== undefined) result = await watch(statement);
        else {
          const { ok, outcome, trace } = await traced(statement);
          learn(trace);
          if (!ok) throw outcome;
          result = outcome;
        }
      } finally {
        pending.delete(statement);
        sentOn ??= statement.connection;
      }
      const rows = Array.from(result as R[]);
      return untransform && transformed
        ? rows.map((row) => untransform(text, row as Record<string, unknown>) as R)
        : rows;
    },
    // A borrowed reserved sql has no `listen` (only its parent has): its waiters only poll.
    // Shared by every call on this sql (postgres.js LISTENs once per channel), ended by `sql.end()`.
    listen: parent ? (channel, onPayload) => listenWithin(parent.listen(channel, onPayload)) : undefined,
    onLost: loss.onLost,
    destroy() {
      // No round trip: what is queued is rejected at once and the socket closed; the pool takes the
      // connection back once it is closed.
      stopListening();
      cut();
      lose(new Error('Connection destroyed'));
    },
    async release(discard) {
      if (given) return;
      given = true;
      stopListening();
      if (v3?.onclose === lose) v3.onclose = null;
      // A closed connection went back to the pool by itself; handing it back again would put a dead
      // connection in its open queue (3.x). The caller's own reserved sql stays theirs.
      if (kind !== 'pooled' || loss.error !== undefined) return;
      if (discard && (v3 || typeof sentOn?.destroy === 'function')) {
        // Closing the connection releases any lock it may still hold; the pool reconnects it later.
        cut();
        return;
      }
      reserved.release();
    },
  };
}
