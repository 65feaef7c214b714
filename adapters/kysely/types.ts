// kysely's migrator types, written out: 0.28 exports them from 'kysely', 0.29 from 'kysely/migration' only,
// so importing either would leave the other version's users with `any`. The shapes are the same in both.
import type { CompiledQuery, Kysely, PostgresDialect } from 'kysely';

/** A migration, as kysely's `MigrationProvider` gives it. */
// biome-ignore-start lint/suspicious/noExplicitAny: kysely's own signatures, so any Kysely<DB> fits
export interface Migration {
  up(db: Kysely<any>): Promise<void>;
  down?(db: Kysely<any>): Promise<void>;
}

/** Where kysely's migrator gets its migrations (e.g. kysely's `FileMigrationProvider`). */
export interface MigrationProvider {
  getMigrations(): Promise<Record<string, Migration>>;
}

/** kysely's `MigratorProps` (0.28 and 0.29). */
export interface MigratorProps {
  readonly db: Kysely<any>;
  // biome-ignore-end lint/suspicious/noExplicitAny: (see above)
  readonly provider: MigrationProvider;
  readonly migrationTableName?: string;
  readonly migrationLockTableName?: string;
  readonly migrationTableSchema?: string;
  readonly allowUnorderedMigrations?: boolean;
  readonly nameComparator?: (name0: string, name1: string) => number;
  readonly disableTransactions?: boolean;
}

/** A migration and when it was executed (kysely's `MigrationInfo`). */
export interface MigrationInfo {
  name: string;
  migration: Migration;
  executedAt?: Date;
}

/** One migration's outcome (kysely's `MigrationResult`). */
export interface MigrationResult {
  readonly migrationName: string;
  readonly direction: 'Up' | 'Down';
  readonly status: 'Success' | 'Error' | 'NotExecuted';
}

/** What kysely's migrate methods return: `error` instead of throwing. */
export interface MigrationResultSet {
  readonly error?: unknown;
  readonly results?: MigrationResult[];
}

/** kysely 0.29's per-call options (`disableTransactions`); 0.28 has none. */
export interface KyselyMigrateOptions {
  /** Overrides the `disableTransactions` prop for this call (kysely 0.29). */
  readonly disableTransactions?: boolean;
}

/** A row of kysely's migration table. */
export type MigrationRow = { name: string; timestamp: string };

export type KyselyMigrator = {
  getMigrations(): Promise<readonly MigrationInfo[]>;
  migrateToLatest(options?: KyselyMigrateOptions): Promise<MigrationResultSet>;
  migrateTo(target: string | { __noMigrations__: true }, options?: KyselyMigrateOptions): Promise<MigrationResultSet>;
  migrateUp(options?: KyselyMigrateOptions): Promise<MigrationResultSet>;
  migrateDown(options?: KyselyMigrateOptions): Promise<MigrationResultSet>;
};
export type KyselyModules = {
  Migrator: new (props: MigratorProps) => KyselyMigrator;
  CompiledQuery: typeof CompiledQuery;
  Kysely: typeof Kysely;
  PostgresDialect: typeof PostgresDialect;
};
