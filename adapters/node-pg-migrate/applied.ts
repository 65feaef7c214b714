// What "up to date" means to node-pg-migrate in a tenant's schema, for a fleet's batched checks: what `toRun`
// (runner.ts) compares for `direction: 'up'`, the migration list read once.
import type { RunnerOption } from 'node-pg-migrate';
import type { FleetAppliedRule } from '../kit.js';
import { importNodePgMigrate, loadMigrationList } from './runner.js';

/**
 * node-pg-migrate's rule for a full `up`: the names in `pgmigrations` (ordered by `run_on, id`) must start with
 * the migrations in order when it checks the order (8.x and 9.x unless `checkOrder: false`; else it fails "Not
 * run migration … is preceding already run migration …"), and hold every migration's name. Rows after the last
 * migration are let be, as node-pg-migrate does. Undefined (no batched check) for a run that picks migrations
 * (`direction: 'down'`, `count`, `file`, `timestamp`) or renames its table (`decamelize`).
 */
export async function nodePgMigrateAppliedRule(options: RunnerOption): Promise<FleetAppliedRule | undefined> {
  const picks = options as { count?: unknown; file?: unknown; timestamp?: unknown; decamelize?: unknown };
  if (options.direction !== 'up' || picks.count !== undefined || picks.file !== undefined) return undefined;
  if (picks.timestamp || picks.decamelize) return undefined;
  const { migrations } = await loadMigrationList(options);
  const { PG_MIGRATE_LOCK_ID: since8 } = await importNodePgMigrate();
  const checkOrder = since8 === undefined ? options.checkOrder === true : options.checkOrder !== false;
  const names = migrations.map((migration) => migration.name);
  return {
    reads: [{ table: options.migrationsTable, column: 'name', orderBy: ['run_on', 'id'] }],
    upToDate: ([runNames]) => {
      const run = runNames!;
      if (checkOrder && names.some((name, i) => i < run.length && run[i] !== name)) return false;
      const done = new Set(run);
      return names.every((name) => done.has(name));
    },
  };
}
