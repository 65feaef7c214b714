// node-postgres (`pg`) behind the Session seam: a Pool, a Client or pool client, or a connection we open.
import { hostname } from 'node:os';
import pg from 'pg';
import { asUrl } from './conninfo.js';
import type { Prepared, Query, Session, SessionOptions, SessionSource } from './types.js';

export function isPgPool(source: object): source is pg.Pool {
  return typeof (source as pg.Pool).connect === 'function' && typeof (source as pg.Pool).totalCount === 'number';
}

/** A pg.Client or pool client: it connects, queries, and has connection parameters (or a pool's release). */
export function isPgClient(source: object): source is pg.ClientBase {
  const client = source as pg.ClientBase & { connectionParameters?: object; release?: unknown };
  return (
    typeof client.query === 'function' &&
    typeof client.connect === 'function' &&
    (typeof client.connectionParameters === 'object' || typeof client.release === 'function')
  );
}

/**
 * Whether a pg.Client was never connected (our first query would queue forever). pg >= 8.21 says so through
 * `getTransactionStatus()` (null until the server's first ReadyForQuery); older versions only through a
 * private flag.
 */
export function isUnconnected(client: pg.ClientBase): boolean {
  const c = client as { getTransactionStatus?: () => string | null; _connected?: boolean; _connecting?: boolean };
  if (c._connecting) return false;
  if (typeof c.getTransactionStatus === 'function') return c.getTransactionStatus() === null;
  return c._connected === false;
}

/** Where sessions of a pg source come from (its shape already checked). */
export function pgSource(
  source: pg.Pool | pg.ClientBase | string | pg.ClientConfig,
  options: SessionOptions,
): SessionSource {
  if (typeof source === 'object' && isPgPool(source)) {
    return { reopenable: true, open: async () => pgSession(await source.connect(), 'pooled') };
  }
  if (typeof source === 'object' && isPgClient(source)) {
    return { reopenable: false, borrowed: source, open: async () => pgSession(source, 'borrowed') };
  }
  const config = connectionConfig(source as string | pg.ClientConfig, options.applicationName);
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

// 26000: no such prepared statement; 42P05: one of that name exists already (a pooler's server connection).
const STALE_PREPARED = new Set(['26000', '42P05']);
/** Clients on which a prepared statement of ours went missing: they get plain statements. */
const unprepared = new WeakSet<object>();

/** A pg client as a Session; `release` follows `kind` (close ours, return a pooled one, leave the caller's). */
export function pgSession(client: pg.ClientBase, kind: Session['kind']): Session {
  const destroy = () => socketOf(client)?.destroy();
  const params = client as unknown as { host?: string; port?: number };
  return {
    client,
    kind,
    endpoint: { host: params.host, port: params.port },
    query: async <R>(sql: string, values?: unknown[]) => (await client.query(sql, values)).rows as R[],
    async prepared<R>({ name, text, values }: Prepared) {
      if (!unprepared.has(client)) {
        try {
          return (await client.query({ name, text, values })).rows as R[];
        } catch (err) {
          if (!STALE_PREPARED.has((err as { code?: string }).code ?? '')) throw err;
          // The server's statements are not what pg remembers preparing (the app ran DISCARD ALL, or a
          // transaction-mode pooler moved us to another server connection): plain statements from now on.
          unprepared.add(client);
        }
      }
      return (await client.query(text, values)).rows as R[];
    },
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
      // A FATAL error (pg_terminate_backend, shutdown, a server timeout) rejects the running query before
      // the socket's 'end' arrives; seeing it here, in the same dispatch, lets fn's own catch find the
      // signal aborted.
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
    inTransaction() {
      // pg >= 8.21: 'I' idle, 'T' in a transaction block, 'E' in a failed one; null before it connected.
      const status = (client as { getTransactionStatus?: () => string | null }).getTransactionStatus?.();
      return typeof status === 'string' ? status !== 'I' : undefined;
    },
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

/** `pg-migration-lock:<host>:<pid>`, the host shortened so the whole fits PostgreSQL's 63-byte limit. */
export function defaultApplicationName(): string {
  const pid = String(process.pid);
  return `pg-migration-lock:${shortened(hostname(), 63 - 'pg-migration-lock::'.length - pid.length)}:${pid}`;
}

/** `text` in at most `room` characters: its start and end, with a `~` between. */
export function shortened(text: string, room: number): string {
  if (text.length <= room) return text;
  const tail = Math.ceil(room / 2);
  return `${text.slice(0, Math.max(0, room - tail - 1))}~${text.slice(-tail)}`;
}

/**
 * The config for a connection we open: it names the holder, turns on TCP keepalive and bounds the
 * connect. An explicit `applicationName` wins over the connection string's; otherwise the string's
 * own wins over our default.
 */
export function connectionConfig(source: string | pg.ClientConfig, applicationName?: string): pg.ClientConfig {
  const config: pg.ClientConfig = typeof source === 'string' ? { connectionString: asUrl(source) } : { ...source };
  if (config.connectionString) config.connectionString = asUrl(config.connectionString);
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

/** `connectionString` with `param` set to `value` (kept as it is when it has one and `override` is false). */
export function withSearchParam(connectionString: string, param: string, value: string, override = true): string {
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

/** SQL on a node-postgres client or pool, as the core's `Query`. */
export const pgQuery =
  (client: Pick<pg.ClientBase, 'query'>): Query =>
  async <R>(sql: string, params?: unknown[]) =>
    (await client.query(sql, params)).rows as R[];
