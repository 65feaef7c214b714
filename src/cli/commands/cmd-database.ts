// Where `run`'s CMD connects, and whether its connections reach the server itself (then they can wear the
// holding's tag for fencing) or a pooler in front of it (then they must not: a pooler's server connections serve
// other clients after CMD).
import type { Socket } from 'node:net';
import pg from 'pg';
import { asUrl } from '../../driver/conninfo.js';
import { connectionConfig, pgQuery } from '../../driver/pg.js';
import { portsSeen } from '../../sql/fencing.js';

/** Where CMD connects, as far as this process can tell: its DATABASE_URL, else the PG* variables, else the lock's URL. */
export function cmdDatabase(lockUrl: string): pg.ClientConfig {
  const { DATABASE_URL, PGHOST, PGPORT } = process.env;
  if (DATABASE_URL) return { connectionString: asUrl(DATABASE_URL) };
  return PGHOST || PGPORT ? {} : { connectionString: lockUrl };
}
export const cmdDatabaseName = () =>
  process.env.DATABASE_URL
    ? 'DATABASE_URL'
    : process.env.PGHOST || process.env.PGPORT
      ? 'PGHOST/PGPORT'
      : '--database-url';

/**
 * `portsSeen`, tried again when the role's own statement_timeout cancels it (a timeout of a millisecond on a
 * busy server can): this connection is only asked, never changed, so the timeout is left as the role set it.
 */
async function portsSeenRetried(query: ReturnType<typeof pgQuery>): ReturnType<typeof portsSeen> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await portsSeen(query);
    } catch (err) {
      if ((err as { code?: string }).code !== '57014' || attempt >= 10) throw err;
    }
  }
}

/**
 * Whether connections to `database` reach the PostgreSQL server itself, not a pooler or proxy in front of it
 * (PgBouncer, Supavisor, PgDog, RDS Proxy, a port forward): the server must see this very connection, that is, the
 * client port it reports must be this socket's own (over a Unix socket, the port in the socket's name must be the
 * server's). Through a pooler it sees the pooler's connection instead.
 */
export async function reachesServerDirectly(database: pg.ClientConfig): Promise<{ direct: boolean; why: string }> {
  const client = new pg.Client(connectionConfig(database));
  client.on('error', () => {});
  await client.connect();
  try {
    const seen = await portsSeenRetried(pgQuery(client));
    const socket = (client as unknown as { connection?: { stream?: Socket } }).connection?.stream;
    const own = socket?.localPort;
    if (own !== undefined) {
      return seen.clientPort === own
        ? { direct: true, why: '' }
        : {
            direct: false,
            why: `is reached through a pooler or proxy: the server sees client port ${seen.clientPort}, not this connection's ${own}`,
          };
    }
    const port = (client as unknown as { port?: number }).port;
    return String(port) === seen.port
      ? { direct: true, why: '' }
      : {
          direct: false,
          why: `is reached through a pooler: its socket is for port ${port}, the server's is ${seen.port}`,
        };
  } finally {
    await client.end().catch(() => {});
  }
}
