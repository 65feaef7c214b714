// The seam between the lock and a driver: what a session is, and where sessions come from. The lowest
// layer: it imports nothing of ours, and nothing of a driver's but pg's types.
import type pg from 'pg';

/** What we use of a reserved postgres.js `sql` (from `await sql.reserve()`): one connection of its own. */
export interface PostgresJsReservedSql {
  unsafe(query: string, parameters?: unknown[], options?: object): PromiseLike<unknown>;
  release(): void;
}

/**
 * What we use of a postgres.js `sql` (from `postgres(url)`): `reserve()` for the lock session,
 * `listen()` for the waiters' wake-ups. Structural, so users without `postgres` installed typecheck.
 */
export interface PostgresJsSql {
  unsafe(query: string, parameters?: unknown[], options?: object): PromiseLike<unknown>;
  reserve(): Promise<PostgresJsReservedSql>;
  listen(channel: string, onnotify: (payload: string) => void): PromiseLike<{ unlisten(): PromiseLike<unknown> }>;
}

/** What we use of a Bun SQL connection (`new SQL(url)` from 'bun', or `await sql.reserve()`). Structural: no 'bun' types needed. */
export interface BunSqlReserved {
  unsafe(query: string, parameters?: unknown[]): PromiseLike<unknown>;
  release(): void;
  /** On a reserved sql: closes its one connection. */
  close?(): PromiseLike<unknown>;
  options?: { hostname?: string; port?: number; adapter?: string; onclose?: unknown };
}

/** What we use of a Bun `SQL` instance: `reserve()` for the lock session, `listen()` for the waiters' wake-ups. */
export interface BunSql {
  unsafe(query: string, parameters?: unknown[]): PromiseLike<unknown>;
  reserve(): Promise<BunSqlReserved>;
  listen(channel: string, onnotify: (payload: string) => void): PromiseLike<{ unlisten(): PromiseLike<unknown> }>;
  options?: BunSqlReserved['options'];
}

/**
 * A node-postgres pool or connected client from a package with its own copy of pg's code and types (Neon's
 * serverless `Pool` and `Client`): told apart at run time as pg's own are (./pg.ts), and `fn` gets its client.
 */
export interface PgCompatiblePool {
  connect(): Promise<object>;
  query(...args: never[]): unknown;
  readonly totalCount: number;
}
/** See {@link PgCompatiblePool}. */
export interface PgCompatibleClient {
  connect(): unknown;
  query(...args: never[]): unknown;
  end(): unknown;
  on(event: 'error', listener: (error: Error) => void): unknown;
}

/** The client `fn` gets for a postgres.js source: the reserved sql (the caller's own, when they passed a reserved one). */
export type ReservedOf<S> = S extends { reserve(): Promise<infer R> } ? R : S;

/**
 * Where a session comes from: a `pg.Pool` (one connection checked out per call), a connected
 * `pg.Client` or pool client (used as-is, never ended by us), a connection string / `pg` client
 * config (we open one connection and close it after), a postgres.js `sql` (one connection reserved
 * per call) or a reserved postgres.js `sql` (used as-is, never released by us), and the same for Bun's `SQL`;
 * Neon's serverless `Pool` and `Client` as pg's.
 */
export type ClientSource =
  | pg.Pool
  | pg.ClientBase
  | string
  | pg.ClientConfig
  | PostgresJsSql
  | PostgresJsReservedSql
  | BunSql
  | BunSqlReserved
  | PgCompatiblePool
  | PgCompatibleClient;

/** Runs one statement on a session and resolves its rows. */
export type Query = <R = Record<string, unknown>>(sql: string, params?: unknown[]) => Promise<R[]>;

/**
 * A statement whose text never changes, only its values: the ones that run at every acquisition and release.
 * `name` is derived from the text, so a driver may prepare it once per connection and skip parsing and planning.
 */
export interface Prepared {
  readonly name: string;
  readonly text: string;
  readonly values: unknown[];
}

/**
 * One database session, whatever the driver. This is the only seam between the lock and a driver:
 * the lock speaks SQL text through it, and never touches a driver's own API.
 */
export interface Session {
  /** What `fn` receives as `client`: the driver's own handle on this very session. */
  readonly client: unknown;
  /** `own`: we opened it (and close it); `pooled`: checked out of a pool; `borrowed`: the caller's. */
  readonly kind: 'own' | 'pooled' | 'borrowed';
  readonly query: Query;
  /** Runs a {@link Prepared} statement, prepared once on this connection where the driver can; else like `query`. */
  prepared?<R = Record<string, unknown>>(statement: Prepared): Promise<R[]>;
  /**
   * Delivers the payloads of NOTIFY on `channel` until the returned function is called. Absent where
   * the driver cannot deliver notifications to this session: waiters then only poll.
   */
  listen?(channel: string, onPayload: (payload: string) => void): Promise<() => Promise<void>>;
  /** Calls `onLost` once when the connection dies (backend terminated, network error); returns an unsubscribe. */
  onLost(onLost: (error: unknown) => void): () => void;
  /** Gives the session back: closes our own, returns a pooled one (or with `destroy`, discards it), leaves the caller's. */
  release(destroy?: boolean): Promise<void>;
  /** Cuts the connection now, without a round trip: for a session that stopped answering. */
  destroy(): void;
  /**
   * Whether the session is inside a transaction block, as the driver saw it in the server's last
   * ReadyForQuery; undefined when the driver does not say (then the lock asks the server).
   */
  inTransaction?(): boolean | undefined;
  /** Host and port the session talks to, when known: error messages use them to name a pooler. */
  readonly endpoint?: { host?: string; port?: number };
}

/** Opens sessions from one client source. */
export interface SessionSource {
  open(): Promise<Session>;
  /** A broken session can be replaced by opening another (a pool, a URL): waiters then reconnect. */
  readonly reopenable: boolean;
  /** The caller's own session object, which two concurrent calls must not share. */
  readonly borrowed?: object;
}

export interface SessionOptions {
  /** `application_name` for connections we open. */
  applicationName?: string;
}
