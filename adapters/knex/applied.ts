// What "up to date" means to knex in a tenant's schema, for a fleet's batched checks: what `inspect` (tables.ts)
// compares, the migration list read once.
import type { Knex } from 'knex';
import { type FleetAppliedRule, namesRule } from '../kit.js';

type GetMergedConfig = (
  config: Knex.MigratorConfig,
  current: unknown,
  logger: unknown,
) => Knex.MigratorConfig & {
  migrationSource: { getMigrations(ext?: readonly string[]): Promise<unknown[]>; getMigrationName(m: unknown): string };
  tableName: string;
};

/**
 * knex's rule, as `latest` (and the adapter's check) sees a schema: every migration's name in `knex_migrations`
 * (`name`); a row naming no migration fails knex ("the migration directory is corrupt") unless
 * `disableMigrationsListValidation`; and `knex_migrations_lock`, when it has rows, exactly one, unlocked (else the
 * adapter repairs it under the lock). `db` is a knex of the fleet's config, which never connects here.
 */
export async function knexAppliedRule(db: Knex): Promise<FleetAppliedRule> {
  const { getMergedConfig } = (await import(
    // @ts-expect-error: knex ships no types for its internals; this module has stayed put since knex 0.95.
    'knex/lib/migrations/migrate/migrator-configuration-merger.js'
  )) as { getMergedConfig: GetMergedConfig };
  const merged = getMergedConfig({}, (db.migrate as unknown as { config: unknown }).config, db.client.logger);
  const source = merged.migrationSource;
  const names = (await source.getMigrations(merged.loadExtensions)).map((m) => source.getMigrationName(m));
  const rule = namesRule(names, merged.tableName, 'name', !merged.disableMigrationsListValidation);
  return {
    reads: [...rule.reads, { table: `${merged.tableName}_lock`, column: 'is_locked', orderBy: [], optional: true }],
    upToDate: ([applied, lock]) =>
      rule.upToDate([applied]) && (lock === undefined || lock.length === 0 || (lock.length === 1 && lock[0] === '0')),
  };
}
