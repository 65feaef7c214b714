// What "up to date" means to umzug in a tenant's schema, for a fleet's batched checks: umzug's own `_pending`
// (every migration's name among the storage's executed names), when the storage is a table in the target's schema.
import type { FleetAppliedRule, FleetTarget } from '../kit.js';
import { namesRule } from '../kit.js';

interface TableStorage {
  columnName?: unknown;
  model?: { getTableName?: () => string | { tableName: string; schema?: string } };
}

/**
 * umzug's rule, for a SequelizeStorage (or any storage with a Sequelize `model` and a `columnName`) in the
 * target's own schema: every migration's name in that table's column; rows of no migration are let be, as umzug
 * does. Undefined (no batched check) for any other storage, which the batch cannot read. The migration list is
 * umzug's own resolver (`migrations(context)`), read once.
 */
export async function umzugAppliedRule(umzug: object, target: FleetTarget): Promise<FleetAppliedRule | undefined> {
  const { storage } = umzug as { storage?: TableStorage };
  const table = storage?.model?.getTableName?.();
  if (!table || typeof storage?.columnName !== 'string') return undefined;
  const { tableName, schema } = typeof table === 'string' ? { tableName: table, schema: undefined } : table;
  // The batch reads `<schema>.<table>` of each target: only when this storage is there for this one.
  if (schema !== target.schema) return undefined;
  const own = umzug as { migrations?: (context: unknown) => Promise<{ name: string }[]>; getContext?: () => unknown };
  if (typeof own.migrations !== 'function' || typeof own.getContext !== 'function') return undefined;
  const migrations = await own.migrations(await own.getContext());
  return namesRule(
    migrations.map((migration) => migration.name),
    tableName,
    storage.columnName,
  );
}
