import { describe, expect, test } from 'vitest';
import { fleetTarget, migrateEach } from '../src/index.js';
import { appliedIn } from '../src/sql/fleet-check.js';
import { FLEETS } from './fixtures/fleet/fleets.js';
import {
  MIGRATORS,
  type MigratorName,
  NAMES,
  prepareTenants,
  schemaTargets,
  TABLES,
} from './fixtures/fleet/tenants.js';
import { createTestDatabase, watchRuns, withClient } from './helpers.js';

/** A row of a migration the list does not have, as each migrator records one. */
const EXTRA_ROW: Record<MigratorName, string> = {
  knex: `INSERT INTO %s (name, batch, migration_time) VALUES ('000_gone.cjs', 1, now())`,
  'node-pg-migrate': `INSERT INTO %s (name, run_on) VALUES ('1800000000000_gone', now())`,
  drizzle: `INSERT INTO %s (hash, created_at) VALUES ('gone', 1800000000000)`,
  kysely: `INSERT INTO %s (name, timestamp) VALUES ('003_gone', '2100-01-01T00:00:00.000Z')`,
  typeorm: `INSERT INTO %s (timestamp, name) VALUES (1800000000000, 'Gone1800000000000')`,
};

/** The second migration recorded under another name (drizzle compares when a migration was made, not its name). */
const RENAMED: Record<MigratorName, string> = {
  knex: `UPDATE %s SET name = '002_renamed.cjs' WHERE name = '002_first_widget.cjs'`,
  'node-pg-migrate': `UPDATE %s SET name = '1700000000002_renamed' WHERE name = '1700000000002_first-widget'`,
  drizzle: 'UPDATE %s SET created_at = 1700000000001 WHERE created_at = 1700000000002',
  kysely: `UPDATE %s SET name = '002_renamed' WHERE name = '002_first_widget'`,
  typeorm: `UPDATE %s SET name = 'Renamed1700000000002' WHERE name = 'FirstWidget1700000000002'`,
};

/**
 * What each migrator does with such a schema, which the batch mirrors: `up-to-date` (the batch lets it be, no
 * migrator opened) or `migrator` (the batch cannot say up to date: the migrator decides).
 */
const EXPECTED: Record<MigratorName, { extra: string; renamed: string }> = {
  // knex: "the migration directory is corrupt" for a row it has no file of.
  knex: { extra: 'migrator', renamed: 'migrator' },
  // node-pg-migrate: rows after the last migration are let be; a renamed one breaks its order check.
  'node-pg-migrate': { extra: 'up-to-date', renamed: 'migrator' },
  // drizzle: only the latest created_at counts.
  drizzle: { extra: 'up-to-date', renamed: 'migrator' },
  // kysely: "corrupted migrations: previously executed migration … is missing".
  kysely: { extra: 'migrator', renamed: 'migrator' },
  // TypeORM: rows of no migration are let be; a renamed one is pending again.
  typeorm: { extra: 'up-to-date', renamed: 'migrator' },
};

const urls = (await Promise.all(MIGRATORS.map(() => createTestDatabase()))) as string[];

describe.each(MIGRATORS.map((name, i) => [name, urls[i]!] as const))('%s', (name, url) => {
  test('what the batch finds up to date, the migrator does too; the rest go to the migrator', async () => {
    await prepareTenants(url);
    const done = Array.from({ length: 12 }, (_, i) => `done_${i + 1}`);
    const doctored = ['fresh', 'extra', 'renamed'];
    const migrator = FLEETS[name]();
    const first = await migrateEach(schemaTargets(url, [...done, 'extra', 'renamed']), migrator, { logger: null });
    expect(first.counts.applied).toBe(14);
    await withClient(url, async (client) => {
      await client.query('CREATE SCHEMA fresh');
      await client.query(EXTRA_ROW[name].replace('%s', `extra.${TABLES[name]}`));
      await client.query(RENAMED[name].replace('%s', `renamed.${TABLES[name]}`));
    });
    // What the migrator itself says of each doctored schema, before the fleet runs again.
    const own = Object.fromEntries(
      await Promise.all(
        doctored.map(async (schema) => {
          const said = await migrator.pending(fleetTarget({ url, schema })).catch((err: Error) => err);
          return [schema, said] as const;
        }),
      ),
    );
    expect(own.fresh).toEqual(NAMES[name]);

    const { watched, ran } = watchRuns(migrator);
    const report = await migrateEach(schemaTargets(url, [...done, ...doctored]), watched, {
      concurrency: 3,
      logger: null,
    });
    const status = Object.fromEntries(report.results.map((r) => [r.target.schema, r.status]));
    // Up to date: no migrator opened (so no lock taken either).
    for (const schema of done) expect(status[schema]).toBe('up-to-date');
    expect(ran.filter((schema) => done.includes(schema))).toEqual([]);
    // A schema without the migrator's table: the migrator creates it and applies everything.
    expect(ran).toContain('fresh');
    expect(status.fresh).toBe('applied');
    for (const schema of ['extra', 'renamed'] as const) {
      const expected = EXPECTED[name][schema];
      expect({ schema, went: ran.includes(schema) ? 'migrator' : 'up-to-date' }).toEqual({ schema, went: expected });
      // Never "up to date" where the migrator would apply something or fail.
      if (expected === 'up-to-date') expect({ schema, own: own[schema] }).toEqual({ schema, own: [] });
      else expect({ schema, own: own[schema] }).not.toEqual({ schema, own: [] });
    }
  });
});

test('a fleet check opens at most concurrency + 1 connections (pg_stat_activity), whatever the fleet size; a batch read in several statements decides each schema', async () => {
  const url = await createTestDatabase();
  await prepareTenants(url);
  const schemas = Array.from({ length: 60 }, (_, i) => `t_${i + 1}`);
  const migrator = FLEETS.knex();
  await migrateEach(schemaTargets(url, schemas.slice(0, 40)), migrator, { concurrency: 4, logger: null });
  // 40 knex schemas are 80 tables to read: two statements (50 a statement); t_30's rows come in the second.
  await withClient(url, (client) => client.query(EXTRA_ROW.knex.replace('%s', `t_30.${TABLES.knex}`)));
  const { watched, ran } = watchRuns(migrator);
  let most = 0;
  let watching = true;
  const watch = withClient(url, async (client) => {
    while (watching) {
      const { rows } = await client.query(
        'SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()',
      );
      most = Math.max(most, rows[0].n);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  });
  const report = await migrateEach(schemaTargets(url, schemas), watched, { concurrency: 3, logger: null });
  watching = false;
  await watch;
  // t_30 goes to knex, which refuses a row it has no file of; the other 39 were found up to date by the batch.
  expect(report.counts).toMatchObject({ upToDate: 39, applied: 20, failed: 1 });
  expect(ran.filter((schema) => schemas.slice(0, 40).includes(schema))).toEqual(['t_30']);
  expect(most).toBeGreaterThan(0);
  expect(most).toBeLessThanOrEqual(3 + 1);
});

test("the batch reads with JIT off (compiling them cost more than running them) and gives the session's setting back", async () => {
  const url = await createTestDatabase();
  await withClient(url, async (client) => {
    await client.query('CREATE SCHEMA t_1; CREATE TABLE t_1.applied (name text)');
    await client.query("INSERT INTO t_1.applied VALUES ('001_a'), ('002_b')");
    await client.query("SET jit = 'on'");
    const seen: string[] = [];
    const query = async <R>(sql: string, params?: unknown[]) => {
      const { rows } = await client.query(sql, params);
      if (/UNION ALL|FROM "t_1"/.test(sql)) seen.push((await client.query('SHOW jit')).rows[0].jit);
      return rows as R[];
    };
    const values = await appliedIn(query, [
      { schema: 't_1', read: { table: 'applied', column: 'name', orderBy: ['name'] } },
    ]);
    expect(values).toEqual([['001_a', '002_b']]);
    expect(seen).toEqual(['off']);
    expect((await client.query('SHOW jit')).rows[0].jit).toBe('on');
  });
});
