// kysely's side of the lock: one connection of a Kysely as the core's session (every statement through kysely, so
// any PostgreSQL dialect works), kysely itself imported only when used, and a dialect without kysely's own lock.
import type { Dialect, Kysely } from 'kysely';
import type pg from 'pg';
import { type FleetTarget, importPeer, type Query, type Session, type SessionSource, targetPool } from '../kit.js';
import type { KyselyModules } from './types.js';

/**
 * One connection of a Kysely instance as the core's session: every statement goes through kysely
 * (`CompiledQuery.raw`), so any kysely PostgreSQL dialect works (pg, postgres.js). It is the caller's
 * connection: never ended by us, kysely gives it back to its pool. kysely exposes neither the driver's
 * notifications nor its connection events: waiters poll every `pollIntervalMs` (no LISTEN), and a lost
 * session shows as the failing statement rather than at once.
 */
export function kyselySessionSource(conn: Kysely<unknown>, modules: KyselyModules): SessionSource {
  const session: Session = {
    client: conn,
    kind: 'borrowed',
    query: kyselyQuery(conn, modules),
    onLost: () => () => {},
    release: async () => {},
    // kysely offers no way to cut its connection: a session that stopped answering is left to kysely.
    destroy: () => {},
  };
  return { reopenable: false, borrowed: conn, open: async () => session };
}

/** SQL on one connection of a Kysely instance, as the core's `Query`. */
export function kyselyQuery(conn: Kysely<unknown>, { CompiledQuery }: KyselyModules): Query {
  return async <R>(sql: string, params: unknown[] = []) =>
    (await conn.executeQuery(CompiledQuery.raw(sql, params))).rows as R[];
}

export function importKysely(): Promise<KyselyModules> {
  return importPeer('kysely', 'kysely', async () => {
    const kysely = await import('kysely');
    // kysely 0.29 moved the migrator to 'kysely/migration'; 0.28 has it in 'kysely'.
    const migration = await import('kysely/migration' as string).catch((err) => {
      if ((err as { code?: string }).code === 'ERR_PACKAGE_PATH_NOT_EXPORTED') return kysely;
      throw err;
    });
    return {
      Migrator: (migration as { Migrator: KyselyModules['Migrator'] }).Migrator,
      CompiledQuery: kysely.CompiledQuery,
      Kysely: kysely.Kysely,
      PostgresDialect: kysely.PostgresDialect,
    };
  });
}

/**
 * `dialect` without kysely's own migration lock: a fleet's schema target is locked by its own key, on the very
 * session kysely migrates on, and kysely's one key per database would queue the schemas behind one another.
 */
export function withoutOwnLock(dialect: Dialect): Dialect {
  const none = { value: async () => {} };
  return {
    createDriver: () => dialect.createDriver(),
    createQueryCompiler: () => dialect.createQueryCompiler(),
    createIntrospector: (db) => dialect.createIntrospector(db),
    createAdapter: () =>
      Object.create(dialect.createAdapter(), { acquireMigrationLock: none, releaseMigrationLock: none }),
  };
}

/** The statement that failed last, per Kysely of a fleet's target. */
export const failedStatements = new WeakMap<Kysely<unknown>, { sql?: string }>();

/**
 * A fleet target's Kysely: on the run's shared pool, else a pool of its own; in a tenant's schema without kysely's
 * own lock (ours is taken per target). Its log keeps the statement that failed: kysely's error does not name it.
 */
export async function fleetKysely(
  target: FleetTarget,
  shared: pg.Pool | undefined,
  applicationName?: string,
): Promise<Kysely<unknown>> {
  const { Kysely: KyselyClass, PostgresDialect: Postgres } = await importKysely();
  const dialect = new Postgres({ pool: shared ?? (await targetPool(target, applicationName)) });
  const failed: { sql?: string } = {};
  const db = new KyselyClass<unknown>({
    dialect: target.schema === undefined ? dialect : withoutOwnLock(dialect),
    log: (event) => {
      if (event.level === 'error') failed.sql = event.query.sql;
    },
  });
  failedStatements.set(db, failed);
  return db;
}
