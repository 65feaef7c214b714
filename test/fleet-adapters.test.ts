import { describe, expect, test } from 'vitest';
import { fleet as drizzleFleet } from '../adapters/drizzle.js';
import { fleet as knexFleet } from '../adapters/knex.js';
import { fleet as kyselyFleet } from '../adapters/kysely.js';
import { fleet as nodePgMigrateFleet } from '../adapters/node-pg-migrate.js';
import { fleet as typeormFleet } from '../adapters/typeorm.js';
import { type FleetTargetInput, fleetKey, fleetTarget, migrateEach, withMigrationLock } from '../src/index.js';
import { FLEETS } from './fixtures/fleet/fleets.js';
import {
  eventCounts,
  MIGRATORS,
  type MigratorName,
  NAMES,
  prepareTenants,
  schemaTargets,
  TABLES,
} from './fixtures/fleet/tenants.js';
import { createTestDatabase, withClient } from './helpers.js';

/** Where the migrator keeps its table on a database target (drizzle: its own schema). */
const DATABASE_SCHEMA: Record<MigratorName, string> = {
  knex: 'public',
  'node-pg-migrate': 'public',
  drizzle: 'drizzle',
  kysely: 'public',
  typeorm: 'public',
};

const urls = (await Promise.all(MIGRATORS.map(() => createTestDatabase()))) as string[];

async function tablesOf(url: string, schema: string): Promise<string[]> {
  return withClient(url, async (client) => {
    const { rows } = await client.query(
      'SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1',
      [schema],
    );
    return rows.map((row) => row.table_name);
  });
}

describe.each(MIGRATORS.map((name, i) => [name, urls[i]!] as const))('%s', (name, url) => {
  const migrator = FLEETS[name]();
  const names = NAMES[name];
  const targets: FleetTargetInput[] = [...schemaTargets(url, ['s_1', 's_2', 's_3']), url];

  test('per schema and per database: its table and the migrations land in the target, once; a failing tenant is reported', async () => {
    await prepareTenants(url, ['s_3']);
    expect(migrator.name).toBe(name);
    const report = await migrateEach(targets, migrator, { concurrency: 4, logger: null });
    expect(report.results.map((r) => [r.target.schema ?? 'database', r.status])).toEqual([
      ['s_1', 'applied'],
      ['s_2', 'applied'],
      ['s_3', 'failed'],
      ['database', 'applied'],
    ]);
    for (const i of [0, 1, 3]) expect(report.results[i]).toMatchObject({ applied: names });
    expect(String((report.results[2] as { error: Error }).error.message)).toContain('this tenant is poisoned');
    expect(report.results.map((r) => r.key)).toEqual([
      fleetKey(name, 's_1'),
      fleetKey(name, 's_2'),
      fleetKey(name, 's_3'),
      fleetKey(migrator),
    ]);

    for (const schema of ['s_1', 's_2']) {
      expect(await tablesOf(url, schema)).toEqual(expect.arrayContaining(['widgets', TABLES[name]]));
    }
    expect(await tablesOf(url, 'public')).toContain('widgets');
    expect(await tablesOf(url, DATABASE_SCHEMA[name])).toContain(TABLES[name]);
    // The tenants' schemas hold the migrator's table; public does not hold theirs.
    const counts = await eventCounts(url);
    for (const at of ['s_1/001', 's_1/002', 's_2/001', 's_2/002', 'public/001', 'public/002']) {
      expect(counts[at], at).toBe(1);
    }
    expect(counts['s_3/002']).toBeUndefined();
  });

  test('pending per target, then a run again: up to date, and the failing tenant fails again', async () => {
    const [s1, s2, s3, database] = await Promise.all(targets.map((target) => migrator.pending(fleetTarget(target))));
    expect([s1, s2, database]).toEqual([[], [], []]);
    expect(s3).toContain(names[1]);
    const again = await migrateEach(targets, migrator, { logger: null });
    expect(again.results.map((r) => r.status)).toEqual(['up-to-date', 'up-to-date', 'failed', 'up-to-date']);
  });

  test('schemas migrate beside a single run that holds the database’s key (the migrator’s own lock stays out)', async () => {
    await prepareTenants(url);
    const report = await withMigrationLock(url, fleetKey(migrator), () =>
      migrateEach(schemaTargets(url, ['h_1', 'h_2']), migrator, { concurrency: 2, logger: null }),
    );
    expect(report.results.map((r) => r.status)).toEqual(['applied', 'applied']);
    expect(await migrator.pending(fleetTarget({ url, schema: 'h_1' }))).toEqual([]);
  });
});

test('a fresh database: every migrator’s pending lists both migrations, and creates nothing', async () => {
  const url = await createTestDatabase();
  for (const name of MIGRATORS) {
    const migrator = FLEETS[name]();
    expect(await migrator.pending(fleetTarget({ url, schema: 'fresh' })), name).toEqual(NAMES[name]);
    expect(await migrator.pending(fleetTarget(url)), name).toEqual(NAMES[name]);
  }
  expect(await tablesOf(url, 'public')).toEqual([]);
  expect(await tablesOf(url, 'fresh')).toEqual([]);
});

test('the factories check their config up front', () => {
  expect(() => knexFleet({ client: 'mysql2' })).toThrow(TypeError);
  expect(() => nodePgMigrateFleet(null as never)).toThrow(TypeError);
  expect(() => drizzleFleet({} as never)).toThrow(/migrationsFolder/);
  expect(() => kyselyFleet({} as never)).toThrow(/provider/);
  expect(() => typeormFleet({ type: 'mysql' } as never)).toThrow(/postgres/);
});
