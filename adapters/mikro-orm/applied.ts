// What "up to date" means to MikroORM in a tenant's schema, for a fleet's batched checks: its migrator's own
// pending check (umzug's, over MikroORM's MigrationStorage), the migration list read once.
import { parse } from 'node:path';
import type { FleetAppliedRule } from '../kit.js';
import type { AnyOrm } from './session.js';

interface UmzugLike {
  migrations(context: unknown): Promise<{ name: string }[]>;
  getContext(): unknown;
}

/** A recorded name as MigrationStorage#getMigrationName reads it: without a `.js` or `.ts` extension. */
function migrationName(name: string): string {
  const parsed = parse(name);
  return ['.js', '.ts'].includes(parsed.ext) ? parsed.name : name;
}

/**
 * MikroORM's rule: every migration's name among the names in its table (read without their extension, as MikroORM
 * does); rows of no migration are let be, as it does. Undefined (no batched check) when the table is named with a
 * schema of its own (`tableName: 'audit.migrations'`: one table for every target) or the migrator is not the one
 * read here.
 */
export async function mikroOrmAppliedRule(orm: AnyOrm): Promise<FleetAppliedRule | undefined> {
  const table: string = orm.config.get('migrations')?.tableName ?? 'mikro_orm_migrations';
  if (table.includes('.')) return undefined;
  // MikroORM keeps its umzug (and so its migration list, names already without extension) to itself.
  const { umzug } = orm.migrator as unknown as { umzug?: Partial<UmzugLike> };
  if (typeof umzug?.migrations !== 'function' || typeof umzug.getContext !== 'function') return undefined;
  const names = (await umzug.migrations(await umzug.getContext())).map((migration) => migration.name);
  return {
    // In MikroORM's order (`select * … order by id`): a table without that column fails the batch, not the rule.
    reads: [{ table, column: 'name', orderBy: ['id'] }],
    upToDate: ([recorded]) => {
      // A NULL name makes MikroORM itself fail: not certain, so the migrator decides.
      if (recorded!.includes(null)) return false;
      const executed = new Set((recorded as string[]).map(migrationName));
      return names.every((name) => executed.has(name));
    },
  };
}
