// What "up to date" means to kysely in a tenant's schema, for a fleet's batched checks: what the adapter's
// `pending` (kysely.ts, kysely's own #getState checks) compares, the provider's migrations read once.

import type { FleetAppliedRule } from '../kit.js';
import type { MigratorProps } from './types.js';

/**
 * kysely's rule: the executed migrations (ordered by timestamp, then name) must all be known to the provider
 * (else "corrupted migrations: … is missing"), in the provider's order unless `allowUnorderedMigrations` (else
 * "corrupted migrations: expected … at index …"), and every migration executed. Name and timestamp are read as
 * two arrays in one order (name is the key: the order is total), and sorted as kysely sorts them.
 */
export async function kyselyAppliedRule(props: Omit<MigratorProps, 'db'>): Promise<FleetAppliedRule> {
  const names = Object.keys(await props.provider.getMigrations()).sort();
  const table = props.migrationTableName ?? 'kysely_migration';
  const compare = props.nameComparator ?? ((a: string, b: string) => a.localeCompare(b));
  const orderBy = ['timestamp', 'name'];
  return {
    reads: [
      { table, column: 'name', orderBy },
      { table, column: 'timestamp', orderBy },
    ],
    upToDate: ([rowNames, timestamps]) => {
      const rows = rowNames!.map((name, i) => ({ name, at: new Date(timestamps![i] ?? Number.NaN).getTime() }));
      if (rows.some(({ name, at }) => name === null || Number.isNaN(at))) return false;
      const executed = rows.sort((a, b) => a.at - b.at || compare(a.name!, b.name!)).map((row) => row.name!);
      if (executed.some((name) => !names.includes(name))) return false;
      if (!props.allowUnorderedMigrations && executed.some((name, i) => names[i] !== name)) return false;
      return names.every((name) => executed.includes(name));
    },
  };
}
