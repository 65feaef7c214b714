// What knex's own tables say (knex_migrations and its _lock table), read the way knex reads them, without its side
// effects: what `migrate.latest` would run, and the repair of a lock row a crashed run left behind.
import type { Knex } from 'knex';
import type { Logger } from '../kit.js';

/** What a database looks like to `migrate.latest`: what it would run, its batch number, and the stale-row case. */
export interface KnexState {
  pending: string[];
  /** The batch number `latest` returns when it runs nothing (the highest recorded, else 0). */
  batchNo: number;
  /** `<table>_lock` is at `is_locked = 1` or has several rows: bare knex would fail, `latest` repairs it under the lock. */
  lockRowStuck: boolean;
}

interface KnexMigrationSource {
  getMigrations(loadExtensions?: readonly string[]): Promise<unknown[]>;
  getMigrationName(migration: unknown): string;
}
type MergedConfig = Knex.MigratorConfig & { migrationSource: KnexMigrationSource; tableName: string };
type GetMergedConfig = (config: Knex.MigratorConfig, current: unknown, logger: unknown) => MergedConfig;

/**
 * `migrate.list` without its side effect: knex's list first creates its tables (`ensureTable`), which a
 * check must not do, so the read is ours: knex's own config merging and migration source, the completed
 * rows read like knex reads them (same table, same order), and knex's validation and difference.
 */
export async function inspect(knex: Knex, config: Knex.MigratorConfig): Promise<KnexState> {
  const { getMergedConfig } = (await import(
    // @ts-expect-error: knex ships no types for its internals; this module has stayed put since knex 0.95.
    'knex/lib/migrations/migrate/migrator-configuration-merger.js'
  )) as { getMergedConfig: GetMergedConfig };
  const migrator = knex.migrate as unknown as { config: unknown };
  const merged = getMergedConfig(config, migrator.config, knex.client.logger);
  const { migrationSource: source, tableName, schemaName } = merged;
  const schema = () => (schemaName ? knex.schema.withSchema(schemaName) : knex.schema);
  const table = (name: string) => (schemaName ? knex(name).withSchema(schemaName) : knex(name));
  const [all, hasTable, lockTable] = await Promise.all([
    source.getMigrations(merged.loadExtensions),
    schema().hasTable(tableName),
    lockTableState(knex, `${tableName}_lock`, schemaName),
  ]);
  const completed: { name: string; batch: number | null }[] = hasTable
    ? await table(tableName).orderBy('id').select('name', 'batch')
    : [];
  const lockRowStuck = lockTable !== undefined && (lockTable.rows !== 1 || lockTable.locked > 0);
  const names = all.map((migration) => source.getMigrationName(migration));
  if (!merged.disableMigrationsListValidation) {
    const missing = completed.filter((row) => !names.includes(row.name)).map((row) => row.name);
    if (missing.length > 0) {
      // knex's own message (validateMigrationList), so a check fails exactly like the run would.
      throw new Error(`The migration directory is corrupt, the following files are missing: ${missing.join(', ')}`);
    }
  }
  const done = new Set(completed.map((row) => row.name));
  return {
    pending: names.filter((name) => !done.has(name)),
    batchNo: Math.max(0, ...completed.map((row) => row.batch ?? 0)),
    lockRowStuck,
  };
}

/** Under our lock nobody else is migrating: a row still at `is_locked = 1` is a crashed run's leftover. */
export async function freeStaleLockRow(knex: Knex, config: Knex.MigratorConfig, logger: Logger): Promise<void> {
  const table = `${config.tableName ?? 'knex_migrations'}_lock`;
  const schema = config.schemaName;
  const state = await lockTableState(knex, table, schema);
  if (!state || (state.rows === 1 && state.locked === 0)) return;
  // knex's own repair: one row, unlocked.
  await knex.migrate.forceFreeMigrationsLock(config);
  const name = `${schema ? `${schema}.` : ''}${table}`;
  logger.warn(
    state.rows === 1
      ? `Freed ${name}: it was left at is_locked = 1 (by a crashed or killed knex run), and no other run holds the migration lock`
      : `Repaired ${name}: it had ${state.rows} rows (knex runs racing without a lock each added one), where knex needs exactly one; no other run holds the migration lock`,
  );
}

/** How many rows knex's lock table has, and how many are locked; undefined when it has none yet. */
async function lockTableState(knex: Knex, table: string, schema: string | undefined) {
  const exists = await (schema ? knex.schema.withSchema(schema) : knex.schema).hasTable(table);
  if (!exists) return undefined;
  const [row] = await (schema ? knex(table).withSchema(schema) : knex(table)).select(
    knex.raw('count(*)::int AS rows, count(*) FILTER (WHERE is_locked = 1)::int AS locked'),
  );
  const { rows, locked } = row as { rows: number; locked: number };
  return rows === 0 ? undefined : { rows, locked };
}
