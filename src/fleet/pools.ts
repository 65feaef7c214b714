// The connections a fleet run shares among the schema targets of one database: a pool per database, reset at each checkout, ended with the run.
import pg from 'pg';
import { connectionConfig, pgQuery } from '../driver/pg.js';
import { resetSessionSql } from '../sql/settings.js';
import { isHeld } from '../sql/status.js';
import type { FleetTarget } from './target.js';

type Checkout = (err: Error | undefined, client: pg.PoolClient | undefined, release: () => void) => void;

/** A pg.Pool whose every checkout (promise or callback, `pool.query` included) is reset first. */
class ResettingPool extends pg.Pool {
  // biome-ignore lint/suspicious/noExplicitAny: pg.Pool's own overloads (a promise, or a callback)
  override connect(callback?: Checkout): any {
    const checkout = super.connect().then(async (client) => {
      try {
        // What a tenant's migration may have left on the session must not reach the next tenant.
        await client.query(resetSessionSql);
      } catch (err) {
        client.release(err as Error);
        throw err;
      }
      return client;
    });
    if (!callback) return checkout;
    checkout.then(
      (client) => callback(undefined, client, () => client.release()),
      (err) => callback(err, undefined, () => {}),
    );
  }
}

/**
 * One `pg.Pool` per database that schema targets of the run share (a database target gets none: its migrator
 * opens its own connection, since nothing else uses it): opening a connection (a backend forked, a password
 * checked, catalog caches warmed) costs more than checking a tenant that is up to date.
 */
export class FleetPools {
  readonly #pools = new Map<string, pg.Pool>();

  constructor(
    readonly max: number,
    readonly applicationName: string | undefined,
  ) {}

  /** The pool for `target`'s database, made on first use; undefined for a database target. */
  for(target: FleetTarget): pg.Pool | undefined {
    if (target.schema === undefined) return undefined;
    const id = typeof target.connection === 'string' ? target.connection : JSON.stringify(target.connection);
    let pool = this.#pools.get(id);
    if (!pool) {
      // Named like every connection the library opens (host and pid), with TCP keepalive and a bounded connect.
      const config = connectionConfig(target.connection, this.applicationName);
      pool = new ResettingPool({ ...config, max: this.max, idleTimeoutMillis: 10_000 });
      // An idle connection that dies must not crash the process; the next checkout gets another.
      pool.on('error', () => {});
      this.#pools.set(id, pool);
    }
    return pool;
  }

  /**
   * Whether another session holds `key` in `pool`'s database right now: one query on a connection the run keeps
   * anyway, where finding it busy through the migrator would cost its whole check (and, for TypeORM, a data
   * source). A lock taken just after is found busy by the migrator's own try.
   */
  static async held(pool: pg.Pool, key: bigint): Promise<boolean> {
    return isHeld(pgQuery(pool), key);
  }

  async end(): Promise<void> {
    await Promise.all([...this.#pools.values()].map((pool) => pool.end().catch(() => {})));
  }
}
