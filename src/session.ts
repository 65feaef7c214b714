import { hostname } from 'node:os';
import pg from 'pg';

/**
 * Where a session comes from: a `pg.Pool` (one connection checked out per call), a connected
 * `pg.Client` or pool client (used as-is, never ended by us), or a connection string / `pg` client
 * config (we open one connection and close it after).
 */
export type ClientSource = pg.Pool | pg.ClientBase | string | pg.ClientConfig;

/**
 * One database session, whatever the driver. This is the only seam between the lock and a driver:
 * the lock speaks SQL text through it, and never touches a driver's own API.
 */
export interface Session {
  /** What `fn` receives as `client`: the driver's own handle on this very session. */
  readonly client: unknown;
  /** `own`: we opened it (and close it); `pooled`: checked out of a pool; `borrowed`: the caller's. */
  readonly kind: 'own' | 'pooled' | 'borrowed';
  /** Runs one statement and resolves its rows. */
  query<R = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<R[]>;
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

/** Checks the shape of `client` without touching the network, so bad input fails before any query. */
export function checkSource(source: unknown): asserts source is ClientSource {
  if (typeof source === 'string') {
    if (source.trim() === '') throw new TypeError('Expected a connection string, got an empty string');
    checkConnectionString(source);
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

const EXAMPLE_URL = 'postgres://user:password@host:5432/database';

/**
 * pg reads a connection string as a URL (or a Unix socket path), and reads anything else as a host
 * name relative to "base": say what is wrong before that. The string is never echoed: it may hold a password.
 */
function checkConnectionString(text: string): void {
  if (text.startsWith('/')) return;
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(text)?.[1]?.toLowerCase();
  if (scheme !== 'postgres' && scheme !== 'postgresql' && scheme !== 'socket') {
    throw new TypeError(
      `Expected a PostgreSQL connection string like ${EXAMPLE_URL}, got ${scheme ? `a ${scheme}: URL` : 'a string that is not a URL'}`,
    );
  }
  try {
    // As pg does: a URL with no host (`postgres://user@/db?host=/socket/dir`) is valid.
    new URL(text.replace('@/', '@localhost/'));
  } catch {
    throw new TypeError(
      `The connection string is not a valid URL (expected ${EXAMPLE_URL}; a port must be 1-65535, and a host in [brackets] must be an IPv6 address)`,
    );
  }
}

function isPool(source: object): source is pg.Pool {
  return typeof (source as pg.Pool).connect === 'function' && typeof (source as pg.Pool).totalCount === 'number';
}

function isClient(source: object): source is pg.ClientBase {
  return typeof (source as pg.ClientBase).query === 'function';
}

/** Where sessions of `source` come from. Validates its shape first, without touching the network. */
export function sessionSource(source: unknown, options: SessionOptions = {}): SessionSource {
  checkSource(source);
  if (typeof source === 'object' && isPool(source)) {
    return { reopenable: true, open: async () => pgSession(await source.connect(), 'pooled') };
  }
  if (typeof source === 'object' && isClient(source)) {
    return { reopenable: false, borrowed: source, open: async () => pgSession(source, 'borrowed') };
  }
  const config = connectionConfig(source, options.applicationName);
  return {
    reopenable: true,
    open: async () => {
      const client = new pg.Client(config);
      // A connection error before `connect()` settles is reported by the promise; this keeps it from crashing the process.
      client.on('error', () => {});
      try {
        await client.connect();
      } catch (err) {
        socketOf(client)?.destroy();
        throw err;
      }
      return pgSession(client, 'own');
    },
  };
}

/** The `pg` driver behind the seam: a Client, a pool client, or a connection we opened. */
function pgSession(client: pg.ClientBase, kind: Session['kind']): Session {
  const destroy = () => socketOf(client)?.destroy();
  const params = client as unknown as { host?: string; port?: number };
  return {
    client,
    kind,
    endpoint: { host: params.host, port: params.port },
    query: async <R>(sql: string, values?: unknown[]) => (await client.query(sql, values)).rows as R[],
    async listen(channel, onPayload) {
      const onNotification = (message: pg.Notification) => {
        if (message.channel === channel) onPayload(message.payload ?? '');
      };
      client.on('notification', onNotification);
      await client.query(`LISTEN "${channel}"`);
      return async () => {
        client.off('notification', onNotification);
        await client.query(`UNLISTEN "${channel}"`);
      };
    },
    onLost(onLost) {
      let done = false;
      const lost = (error: unknown) => {
        if (done) return;
        done = true;
        onLost(error);
      };
      const onEnd = () => lost(new Error('Connection terminated unexpectedly'));
      // A FATAL error (pg_terminate_backend, shutdown) rejects the running query before the socket's
      // 'end' arrives; seeing it here, in the same dispatch, lets fn's own catch find the signal aborted.
      const onMessage = (message: { severity?: string }) => {
        if (message.severity === 'FATAL' || message.severity === 'PANIC') lost(message);
      };
      const connection = (client as { connection?: NodeJS.EventEmitter }).connection;
      client.on('error', lost);
      client.on('end', onEnd);
      connection?.on('errorMessage', onMessage);
      return () => {
        client.off('error', lost);
        client.off('end', onEnd);
        connection?.off('errorMessage', onMessage);
      };
    },
    destroy,
    async release(discard) {
      if (kind === 'pooled') {
        // Discarding closes the connection, so a lock it may still hold dies with it (on the server,
        // once it sees the close: at once on a live network, within keepalive's bound on a dead one).
        if (discard) destroy();
        (client as pg.PoolClient).release(discard ? new Error('pg-migration-lock: session discarded') : undefined);
      } else if (kind === 'own') {
        if (discard) return destroy();
        // end() waits for the server to close; a server that no longer answers must not hold us.
        const timer = setTimeout(destroy, 5_000);
        await (client as pg.Client).end().catch(() => {});
        clearTimeout(timer);
      }
    },
  };
}

function socketOf(client: pg.ClientBase): { destroy(): void } | undefined {
  return (client as { connection?: { stream?: { destroy(): void } } }).connection?.stream;
}

/** Runs `fn` on one session from any source, and gives the session back after. */
export async function withSession<T>(
  source: ClientSource,
  fn: (session: Session) => Promise<T>,
  options?: SessionOptions,
): Promise<T> {
  const session = await sessionSource(source, options).open();
  try {
    const result = await fn(session);
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
 * The config for a connection we open: it names the holder, turns on TCP keepalive and bounds the
 * connect. An explicit `applicationName` wins over the connection string's; otherwise the string's
 * own wins over our default.
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
  // Without it, connecting to a host that vanished waits for the kernel's SYN retries (about 2 min).
  config.connectionTimeoutMillis ??= 10_000;
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
