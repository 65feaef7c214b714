// Compile-time checks only (`npm run typecheck`, through test/tsconfig.kysely-v028.json, where `kysely` is
// kysely 0.28, installed as kysely-v028): what a user on kysely 0.28 (npm's pick on Node 20) writes, with
// everything from 'kysely'. There 'kysely/migration' does not exist: an adapter that imported its types from
// it would fail here (for users it silently turned them into `any`).
import { promises as fs } from 'node:fs';
import path from 'node:path';
import {
  FileMigrationProvider,
  Kysely,
  type MigrationResultSet as KyselyMigrationResultSet,
  Migrator as KyselyMigrator,
  type MigratorProps as KyselyMigratorProps,
  NO_MIGRATIONS,
  PostgresDialect,
} from 'kysely';
import type pg from 'pg';
import { expectTypeOf } from 'vitest';
import {
  type KyselyMigratorProps as LockedMigratorProps,
  type Migration,
  type MigrationInfo,
  type MigrationProvider,
  type MigrationResultSet,
  Migrator,
  type MigratorProps,
} from '../adapters/kysely.js';

expectTypeOf<Migrator>().not.toBeAny();
expectTypeOf<MigratorProps>().not.toBeAny();
expectTypeOf<LockedMigratorProps>().not.toBeAny();
expectTypeOf<MigrationProvider>().not.toBeAny();
expectTypeOf<Migration>().not.toBeAny();
expectTypeOf<MigrationInfo>().not.toBeAny();
expectTypeOf<MigrationResultSet>().not.toBeAny();
expectTypeOf<MigratorProps['db']>().not.toBeAny();
// A migration gets a Kysely of the kysely that 'kysely' resolves to.
expectTypeOf<Parameters<Migration['up']>[0]>().not.toBeAny();
expectTypeOf<Parameters<Migration['up']>[0]>().toMatchTypeOf<Kysely<unknown>>();

interface Database {
  person: { id: number; name: string };
}

export function kysely028(pool: pg.Pool) {
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  const provider = new FileMigrationProvider({ fs, path, migrationFolder: 'migrations' });
  // Drop-in: the props kysely 0.28's own Migrator takes, plus `lock`.
  const props: KyselyMigratorProps = { db, provider, migrationTableName: 'kysely_migration' };
  new KyselyMigrator(props);
  const migrator = new Migrator({ ...props, lock: { timeoutMs: 60_000 } });
  expectTypeOf(migrator.migrateToLatest()).toEqualTypeOf<Promise<MigrationResultSet>>();
  expectTypeOf(migrator.migrateTo(NO_MIGRATIONS)).toEqualTypeOf<Promise<MigrationResultSet>>();
  expectTypeOf(migrator.getMigrations()).toEqualTypeOf<Promise<readonly MigrationInfo[]>>();
  // What the methods return is what kysely 0.28's return, both ways: code written for one takes the other.
  expectTypeOf<MigrationResultSet>().toMatchTypeOf<KyselyMigrationResultSet>();
  expectTypeOf<KyselyMigrationResultSet>().toMatchTypeOf<MigrationResultSet>();
  expectTypeOf<KyselyMigratorProps>().toMatchTypeOf<MigratorProps>();
  // @ts-expect-error `provider` is required, as by kysely's own Migrator
  new Migrator({ db });
}
