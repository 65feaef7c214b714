// What postgres.js tells us of its connections, and how we read it: 3.x's Connection object, 4.x's diagnostics
// channels (a statement's trace names its connection, the pool announces a close), the reserved sql's statements
// passed through a watch, and a column transform undone on our own rows. Used by ./postgres-js.ts only.
import { subscribe, unsubscribe } from 'node:diagnostics_channel';

/** postgres.js 3's internal connection object, reached through the `onexecute` query option. */
export interface ConnectionV3 {
  /** Sends Terminate and ends the socket, and rejects everything queued on it at once. */
  terminate(): void;
  /** Called once (then cleared) when the socket closes, whatever the reason. `sql.begin` uses the same slot. */
  onclose?: ((error: unknown) => void) | null;
}

/** What a `postgres:query` trace (postgres.js 4) tells of a statement, once it settled. */
export interface QueryTrace {
  connection?: number | null;
  host?: string | null;
  port?: number | null;
  database?: string;
  result?: unknown;
  error?: unknown;
}

/** A `postgres:pool` message (postgres.js 4). */
export interface PoolEvent {
  event?: string;
  connection?: number | null;
  host?: string | null;
  port?: number | null;
  database?: string;
  error?: unknown;
}

export const QUERY_SETTLED = 'tracing:postgres:query:asyncEnd';
export const POOL = 'postgres:pool';

// Traces of settled statements, by what the statement resolved or rejected with (the very object its
// caller gets). Only collected while a session still has to learn its connection: postgres.js 4 builds
// traces only while someone listens.
const traces = new WeakMap<object, QueryTrace>();
const collect = (message: unknown) => {
  const trace = message as QueryTrace;
  const outcome = trace.error ?? trace.result;
  if (outcome !== null && typeof outcome === 'object' && typeof trace.connection === 'number') {
    traces.set(outcome, trace);
  }
};
let collecting = 0;
/** Awaits `statement` with traces collected: how it settled, and its trace (postgres.js 4 only). */
export async function traced(
  statement: PromiseLike<unknown>,
): Promise<{ ok: boolean; outcome: unknown; trace?: QueryTrace }> {
  if (collecting++ === 0) subscribe(QUERY_SETTLED, collect);
  let settled: { ok: boolean; outcome: unknown };
  try {
    settled = { ok: true, outcome: await statement };
  } catch (err) {
    settled = { ok: false, outcome: err };
  } finally {
    if (--collecting === 0) unsubscribe(QUERY_SETTLED, collect);
  }
  const { outcome } = settled;
  return { ...settled, trace: typeof outcome === 'object' && outcome !== null ? traces.get(outcome) : undefined };
}

/** Which connection a trace or a pool message is about: ids count per postgres.js module, so with the endpoint. */
export const connectionOf = (x: { connection?: number | null; host?: string | null; port?: number | null }) =>
  `${x.connection}@${x.host}:${x.port}`;

// The reserved sql's members that make a statement (called as a tagged template, it makes one too).
const STATEMENTS = new Set<PropertyKey>(['unsafe', 'file', 'notify']);

/** `reserved`, with every statement it makes passed through `watch`. */
export function watched<S extends object>(reserved: S, watch: <Q>(query: Q) => Q): S {
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
export interface ParsedOptions {
  host?: string[];
  port?: number[];
  transform?: { column?: { from?: (name: string) => string } };
}

/**
 * With a column transform on the sql (`postgres.camel`: now_ms → nowMs), our rows come back renamed
 * (postgres.js 3, whose statements cannot opt out of it; on 4 ours use `.transform(false)`).
 * The transform is a function we can call, so each renamed column is mapped back to the identifier of
 * our statement it came from.
 */
export function columnNamesBack(from: ((name: string) => string) | undefined) {
  if (typeof from !== 'function') return undefined;
  const cache = new Map<string, Map<string, string>>();
  return (text: string, row: Record<string, unknown>) => {
    let back = cache.get(text);
    if (!back) {
      back = new Map();
      for (const name of new Set(text.match(/\b[a-z_][a-z0-9_]*\b/g))) {
        // A transform may choke on a word that is no column (postgres.js 3's camel on `pg_`): not a name to map back.
        try {
          back.set(from(name), name);
        } catch {}
      }
      if (cache.size < 100) cache.set(text, back);
    }
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(row)) out[back.get(key) ?? key] = value;
    return out;
  };
}

export type Unsafe = (query: string, parameters?: unknown[], options?: object) => PromiseLike<unknown>;

/** A statement as postgres.js builds it: sent when awaited. */
export interface Statement extends PromiseLike<unknown> {
  /** 4.x: leaves the sql's transforms out of this statement's rows. */
  transform?: (transform: false) => unknown;
  /** 4.x: asks the server to cancel it. */
  cancel?: () => unknown;
  /** 4.x, internal: the connection it was sent on. Only used to cut a connection (see `cut`). */
  connection?: { destroy?: (error?: Error) => void };
}
