// Compile-time checks only (`npm run typecheck`): pg-migration-lock/kysely writes kysely's migrator types out
// itself (0.28 exports them from 'kysely', 0.29 from 'kysely/migration' only), so they are never `any`, and
// they fit kysely 0.29 here (0.28: test/kysely-v028.types.ts): a Kysely, a provider and the props of kysely's
// own Migrator are accepted, and what the methods return is kysely's own result type.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Kysely, PostgresDialect } from 'kysely';
import {
  FileMigrationProvider,
  type MigrationResultSet as MigrationResultSet029,
  Migrator as Migrator029,
  type MigratorProps as MigratorProps029,
} from 'kysely/migration';
import type pg from 'pg';
import { expectTypeOf } from 'vitest';
import {
  type KyselyMigratorProps,
  type Migration,
  type MigrationInfo,
  type MigrationProvider,
  type MigrationResultSet,
  Migrator,
  type MigratorProps,
} from '../adapters/kysely.js';

// None of the adapter's types is `any`, nor has an `any` where kysely has a type.
expectTypeOf<Migrator>().not.toBeAny();
expectTypeOf<MigratorProps>().not.toBeAny();
expectTypeOf<KyselyMigratorProps>().not.toBeAny();
expectTypeOf<MigrationProvider>().not.toBeAny();
expectTypeOf<Migration>().not.toBeAny();
expectTypeOf<MigrationInfo>().not.toBeAny();
expectTypeOf<MigrationResultSet>().not.toBeAny();
expectTypeOf<MigratorProps['db']>().not.toBeAny();
expectTypeOf<MigratorProps['provider']>().not.toBeAny();
expectTypeOf<NonNullable<MigrationResultSet['results']>[number]['status']>().toEqualTypeOf<
  'Success' | 'Error' | 'NotExecuted'
>();
expectTypeOf<Migrator['migrateToLatest']>().returns.toEqualTypeOf<Promise<MigrationResultSet>>();
expectTypeOf<Migrator['pending']>().returns.toEqualTypeOf<Promise<string[]>>();
// A migration gets a Kysely of the kysely that 'kysely' resolves to.
expectTypeOf<Parameters<Migration['up']>[0]>().not.toBeAny();
expectTypeOf<Parameters<Migration['up']>[0]>().toMatchTypeOf<Kysely<unknown>>();

interface Database {
  person: { id: number; name: string };
}

export function kysely029(pool: pg.Pool) {
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  const provider = new FileMigrationProvider({ fs, path, migrationFolder: 'migrations' });
  // Drop-in: the props kysely 0.29's own Migrator takes, plus `lock`.
  const props: MigratorProps029 = { db, provider, migrationTableName: 'kysely_migration' };
  const migrator = new Migrator({ ...props, lock: { timeoutMs: 60_000 } });
  new Migrator029(props);
  expectTypeOf(migrator.migrateToLatest()).toEqualTypeOf<Promise<MigrationResultSet>>();
  expectTypeOf(migrator.migrateToLatest({ disableTransactions: true })).toEqualTypeOf<Promise<MigrationResultSet>>();
  // What the methods return is what kysely 0.29's return, both ways: code written for one takes the other.
  expectTypeOf<MigrationResultSet>().toMatchTypeOf<MigrationResultSet029>();
  expectTypeOf<MigrationResultSet029>().toMatchTypeOf<MigrationResultSet>();
  expectTypeOf<MigratorProps029>().toMatchTypeOf<MigratorProps>();
  // @ts-expect-error `provider` is required, as by kysely's own Migrator
  new Migrator({ db });
}
