// Compile-time checks only (`npm run typecheck`): a postgres.js sql (4.x, and 3.x installed as postgres-v3) is
// accepted wherever a client is, and fn's `client` is then typed as postgres.js' own reserved sql.
import { drizzle } from 'drizzle-orm/postgres-js';
import type pg from 'pg';
import type postgres from 'postgres';
import type postgresV3 from 'postgres-v3';
import { expectTypeOf } from 'vitest';
import { migrate } from '../adapters/drizzle.js';
import { getLockStatus, type LockStatus, type ReleaseResult, releaseLock, withMigrationLock } from '../src/index.js';

type Types = { bigint: bigint };

export function typed(sql: postgres.Sql, custom: postgres.Sql<Types>, reserved: postgres.ReservedSql, pool: pg.Pool) {
  withMigrationLock(sql, 1n, ({ client }) => expectTypeOf(client).toEqualTypeOf<postgres.ReservedSql>());
  withMigrationLock(custom, 1n, ({ client }) => expectTypeOf(client).toEqualTypeOf<postgres.ReservedSql<Types>>());
  withMigrationLock(reserved, 1n, ({ client }) => expectTypeOf(client).toEqualTypeOf<postgres.ReservedSql>());
  withMigrationLock(pool, 1n, ({ client }) => expectTypeOf(client).toEqualTypeOf<pg.ClientBase>());
  expectTypeOf(withMigrationLock(sql, 1n, async ({ client }) => (await client`SELECT 1 AS one`).length)).toEqualTypeOf<
    Promise<number>
  >();
  expectTypeOf(getLockStatus(sql, 1n)).toEqualTypeOf<Promise<LockStatus>>();
  expectTypeOf(releaseLock(reserved, 1n)).toEqualTypeOf<Promise<ReleaseResult>>();
  expectTypeOf(migrate(drizzle(sql), { migrationsFolder: './drizzle' })).toEqualTypeOf<Promise<void>>();
  expectTypeOf(migrate(drizzle({ client: custom }), { migrationsFolder: './drizzle' })).toEqualTypeOf<Promise<void>>();
  // @ts-expect-error a pg client is not a postgres.js sql: its `client` has no tagged template
  withMigrationLock(pool, 1n, ({ client }) => client`SELECT 1`);
}

export function typedV3(sql: postgresV3.Sql, custom: postgresV3.Sql<Types>, reserved: postgresV3.ReservedSql) {
  withMigrationLock(sql, 1n, ({ client }) => expectTypeOf(client).toEqualTypeOf<postgresV3.ReservedSql>());
  withMigrationLock(custom, 1n, ({ client }) => expectTypeOf(client).toEqualTypeOf<postgresV3.ReservedSql<Types>>());
  withMigrationLock(reserved, 1n, ({ client }) => expectTypeOf(client).toEqualTypeOf<postgresV3.ReservedSql>());
  expectTypeOf(withMigrationLock(sql, 1n, async ({ client }) => (await client`SELECT 1 AS one`).length)).toEqualTypeOf<
    Promise<number>
  >();
  expectTypeOf(getLockStatus(sql, 1n)).toEqualTypeOf<Promise<LockStatus>>();
  expectTypeOf(releaseLock(reserved, 1n)).toEqualTypeOf<Promise<ReleaseResult>>();
}
