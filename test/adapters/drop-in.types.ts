// Compile-time checks only (`npm run typecheck`): a call written for the migrator type-checks unchanged
// against the adapter, and resolves to what the migrator's own call resolves to.
import type { MigrationConfig } from 'drizzle-orm/migrator';
import type { drizzle } from 'drizzle-orm/node-postgres';
import type { migrate as drizzleMigrate } from 'drizzle-orm/node-postgres/migrator';
import { integer, pgTable, text } from 'drizzle-orm/pg-core';
import type { Knex } from 'knex';
import type { Kysely } from 'kysely';
import type { Migrator as KyselyMigrator, MigrationInfo, MigratorProps } from 'kysely/migration';
import type { runner as nodePgMigrateRunner, RunnerOption } from 'node-pg-migrate';
import type pg from 'pg';
import type { DataSource } from 'typeorm';
import { expectTypeOf } from 'vitest';
import { migrate } from '../../adapters/drizzle.js';
import { latest } from '../../adapters/knex.js';
import { Migrator } from '../../adapters/kysely.js';
import { runner } from '../../adapters/node-pg-migrate.js';
import { runMigrations } from '../../adapters/typeorm.js';

const widgets = pgTable('widgets', { id: integer('id').primaryKey(), name: text('name') });

export function dropIn(
  knex: Knex,
  knexConfig: Knex.MigratorConfig,
  runnerOptions: RunnerOption,
  db: ReturnType<typeof drizzle<{ widgets: typeof widgets }, pg.Pool>>,
  migrationConfig: MigrationConfig,
) {
  expectTypeOf(latest(knex)).toEqualTypeOf<Promise<[batchNo: number, log: string[]]>>();
  expectTypeOf(latest(knex, knexConfig)).toEqualTypeOf<Promise<[batchNo: number, log: string[]]>>();
  expectTypeOf(runner(runnerOptions)).toEqualTypeOf<ReturnType<typeof nodePgMigrateRunner>>();
  expectTypeOf(migrate(db, migrationConfig)).toEqualTypeOf<ReturnType<typeof drizzleMigrate>>();
  // The lock options are typed too.
  latest(knex, { ...knexConfig, lock: { key: 1n, timeoutMs: 60_000 } });
  // @ts-expect-error timeoutMs is a number of milliseconds
  runner({ ...runnerOptions, lock: { timeoutMs: '5m' } });
  // @ts-expect-error drizzle's config needs migrationsFolder
  migrate(db, { lock: {} });
}

export function dropInOrm(dataSource: DataSource, props: MigratorProps, db: Kysely<unknown>) {
  expectTypeOf(runMigrations(dataSource)).toEqualTypeOf<ReturnType<DataSource['runMigrations']>>();
  expectTypeOf(runMigrations(dataSource, { transaction: 'each', fake: false })).toEqualTypeOf<
    ReturnType<DataSource['runMigrations']>
  >();
  const migrator = new Migrator(props);
  expectTypeOf(migrator.migrateToLatest()).toEqualTypeOf<ReturnType<KyselyMigrator['migrateToLatest']>>();
  expectTypeOf(migrator.migrateTo('001')).toEqualTypeOf<ReturnType<KyselyMigrator['migrateTo']>>();
  expectTypeOf(migrator.migrateUp()).toEqualTypeOf<ReturnType<KyselyMigrator['migrateUp']>>();
  expectTypeOf(migrator.migrateDown()).toEqualTypeOf<ReturnType<KyselyMigrator['migrateDown']>>();
  expectTypeOf(migrator.getMigrations()).toEqualTypeOf<Promise<readonly MigrationInfo[]>>();
  expectTypeOf(migrator.pending()).toEqualTypeOf<Promise<string[]>>();
  new Migrator({ ...props, db, lock: { key: 1n, timeoutMs: 60_000 } });
  // @ts-expect-error TypeORM's transaction modes are all, each and none
  runMigrations(dataSource, { transaction: 'some' });
  // @ts-expect-error timeoutMs is a number of milliseconds
  new Migrator({ ...props, lock: { timeoutMs: '5m' } });
}
