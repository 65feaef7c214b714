import { hostname } from 'node:os';
import pg from 'pg';

/**
 * Where a session comes from: a `pg.Pool` (one connection checked out per call), a connected
 * `pg.Client` or pool client (used as-is, never ended by us), or a connection string / `pg`
 * client config (we open one connection and close it after).
 */
export type ClientSource = pg.Pool | pg.ClientBase | string | pg.ClientConfig;

export interface Session {
  client: pg.ClientBase;
  /** `own`: we opened it (we may set it up, and we close it); `pooled`: checked out of a pg.Pool; `borrowed`: the caller's client. */
  kind: 'own' | 'pooled' | 'borrowed';
  /** Gives the session back: ends our own connection, returns (or, with `destroy`, destroys) a pooled one. */
  release(destroy?: boolean): Promise<void>;
}

export interface SessionOptions {
  /** `application_name` for connections we open. */
  applicationName?: string;
}

/** Checks the shape of `client` without touching the network, so bad input fails before any query. */
export function checkSource(source: unknown): asserts source is ClientSource {
  if (typeof source === 'string') {
    if (source.trim() === '') throw new TypeError('Expected a connection string, got an empty string');
    return;
  }
  if (source !== null && typeof source === 'object' && !Array.isArray(source)) {
    // A pg.Client that was never connected would queue our first query forever.
    const state = source as { _connected?: boolean; _connecting?: boolean; totalCount?: unknown };
    if (isClient(source) && state.totalCount === undefined && state._connected === false && !state._connecting) {
      throw new TypeError('Expected a connected pg.Client: call `await client.connect()` first, or pass a pg.Pool');
    }
    return;
  }
  throw new TypeError(
    `Expected \`client\` to be a pg.Pool, a connected pg.Client, a connection string or a pg client config, got ${source === null ? 'null' : typeof source}`,
  );
}

/** A client used as-is (not a pool, not a config to connect with). */
export function isConnectedClient(source: ClientSource): source is pg.ClientBase {
  return typeof source === 'object' && isClient(source) && !isPool(source);
}

function isPool(source: object): source is pg.Pool {
  return typeof (source as pg.Pool).connect === 'function' && typeof (source as pg.Pool).totalCount === 'number';
}

function isClient(source: object): source is pg.ClientBase {
  return typeof (source as pg.ClientBase).query === 'function';
}

/** Opens (or borrows) one session from any accepted source. */
export async function openSession(source: ClientSource, options: SessionOptions = {}): Promise<Session> {
  if (typeof source === 'object' && isPool(source)) {
    const client = await source.connect();
    return {
      client,
      kind: 'pooled',
      // Destroying (release with an error) closes the connection, so a lock it may still hold dies with it.
      release: async (destroy) =>
        client.release(destroy ? new Error('pg-migration-lock: session discarded') : undefined),
    };
  }
  if (typeof source === 'object' && isClient(source)) {
    return { client: source, kind: 'borrowed', release: async () => {} };
  }
  const client = new pg.Client(connectionConfig(source, options.applicationName));
  // A connection error before `connect()` settles is reported by the promise; this keeps it from crashing the process.
  client.on('error', () => {});
  await client.connect();
  return {
    client,
    kind: 'own',
    release: async () => {
      await client.end().catch(() => {});
    },
  };
}

/** Runs `fn` on one session from any source, and gives the session back after. */
export async function withSession<T>(
  source: ClientSource,
  fn: (client: pg.ClientBase) => Promise<T>,
  options?: SessionOptions,
): Promise<T> {
  checkSource(source);
  const session = await openSession(source, options);
  try {
    const result = await fn(session.client);
    await session.release();
    return result;
  } catch (err) {
    // The session may be broken; a pooled one is discarded rather than returned.
    await session.release(true);
    throw err;
  }
}

/** `pg-migration-lock:<host>:<pid>`, the host shortened so the whole fits PostgreSQL's 63-byte limit. */
export function defaultApplicationName(): string {
  const pid = String(process.pid);
  let host = hostname();
  const room = 63 - 'pg-migration-lock::'.length - pid.length;
  if (host.length > room) host = `${host.slice(0, room - Math.ceil(room / 2) - 1)}~${host.slice(-Math.ceil(room / 2))}`;
  return `pg-migration-lock:${host}:${pid}`;
}

/**
 * The config for a connection we open: it names the holder and turns on TCP keepalive. An explicit
 * `applicationName` wins over the connection string's; otherwise the string's own wins over our default.
 */
export function connectionConfig(source: string | pg.ClientConfig, applicationName?: string): pg.ClientConfig {
  const config: pg.ClientConfig = typeof source === 'string' ? { connectionString: source } : { ...source };
  const name = applicationName ?? config.application_name ?? defaultApplicationName();
  config.application_name = name;
  if (config.connectionString) {
    // pg lets the connection string override the config object, so the name must go into the string too.
    config.connectionString = withSearchParam(
      config.connectionString,
      'application_name',
      name,
      applicationName !== undefined,
    );
  }
  config.keepAlive ??= true;
  config.keepAliveInitialDelayMillis ??= 10_000;
  return config;
}

function withSearchParam(connectionString: string, param: string, value: string, override: boolean): string {
  let url: URL;
  try {
    url = new URL(connectionString);
  } catch {
    return connectionString;
  }
  if (!override && url.searchParams.has(param)) return connectionString;
  url.searchParams.set(param, value);
  return url.toString();
}
