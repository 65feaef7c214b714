// What "up to date" means to drizzle in a tenant's schema, for a fleet's batched checks: what `toApply`
// (drizzle.ts, pg-core's dialect.migrate) compares, the journal read once.
import type { FleetAppliedRule } from '../kit.js';
import type { ReadMigrationFiles } from './drivers.js';

/**
 * drizzle's rule: only the latest `created_at` of `__drizzle_migrations` counts (drizzle reads `order by
 * created_at desc limit 1`, a NULL first); a migration is pending when there is no row or that value is older
 * than its `folderMillis`. Hashes are not compared (nor by drizzle): a row of another journal that is newer
 * counts as up to date, as for drizzle.
 */
export function drizzleAppliedRule(
  config: { migrationsFolder: string; migrationsTable?: string },
  readMigrationFiles: ReadMigrationFiles,
): FleetAppliedRule {
  const millis = readMigrationFiles(config).map((migration) => migration.folderMillis);
  return {
    reads: [{ table: config.migrationsTable ?? '__drizzle_migrations', column: 'created_at', orderBy: [] }],
    upToDate: ([createdAt]) => {
      const values = createdAt!;
      // desc puts NULLs first: any NULL is the row drizzle reads.
      const last = values.includes(null)
        ? null
        : values.reduce<string | undefined>(
            (max, v) => (max === undefined || Number(v) > Number(max) ? v! : max),
            undefined,
          );
      return millis.every((folderMillis) => last !== undefined && !(Number(last) < folderMillis));
    },
  };
}
