// `pending <migrator> --each-schema | --each-database`: a fleet's dry run on a real server, for every migrator of
// the CLI: what each target would get, exit 3 when any has something pending, 0 when none, and nothing created.
import { describe, expect, test } from 'vitest';
import { MIGRATORS, type MigratorName, NAMES, prepareTenants } from '../fixtures/fleet/tenants.js';
import { createTestDatabase, fixture, withClient } from '../helpers.js';
import { cli } from './cli.js';

const url = await createTestDatabase();
await prepareTenants(url);
const CWD = fixture('fleet/cli');
const env = { DATABASE_URL: url, FLEET_SLEEP: '0' };
const tag = (migrator: MigratorName) => migrator.replace(/-/g, '_');

/** The fixture configuration of each migrator (relative to CWD), as test/cli/fleet.test.ts uses it. */
const FLAGS: Record<MigratorName, string[]> = {
  knex: ['knex', '--knexfile', 'knexfile.cjs'],
  'node-pg-migrate': ['node-pg-migrate', '-m', '../node-pg-migrate'],
  drizzle: ['drizzle', '--migrations-folder', '../drizzle'],
  kysely: ['kysely', '--config', 'kysely.config.mjs'],
  typeorm: ['typeorm', '-d', 'data-source.mjs'],
};

/** Every relation and schema in the database, to prove a dry run created none. */
async function catalog(database: string): Promise<string[]> {
  return withClient(database, async (client) => {
    const { rows } = await client.query(
      `SELECT n.nspname || '.' || c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
       UNION ALL SELECT nspname FROM pg_namespace ORDER BY 1`,
    );
    return rows.map((row) => row.name as string);
  });
}

interface PendingReport {
  migrator: string;
  counts: { targets: number; pending: number; upToDate: number; failed: number };
  results: { target: string; database: string | null; schema: string | null; pending: string[] | null }[];
}

describe.each(MIGRATORS)('pending %s --each-schema / --each-database', (migrator) => {
  const done = `dry_done_${tag(migrator)}`;
  const fresh = `dry_fresh_${tag(migrator)}`;

  test('per schema what is pending, as JSON; exit 3; no schema, no table created', async () => {
    const migrated = await cli(['migrate', ...FLAGS[migrator], '--each-schema', done], { env, cwd: CWD });
    expect(migrated.code, migrated.stderr).toBe(0);

    const before = await catalog(url);
    const { code, stdout, stderr } = await cli(
      ['pending', ...FLAGS[migrator], '--each-schema', `${done},${fresh}`, '--json'],
      { env, cwd: CWD },
    );
    expect(code, stderr).toBe(3);
    const report = JSON.parse(stdout) as PendingReport;
    expect(report.migrator).toBe(migrator);
    expect(report.counts).toEqual({ targets: 2, pending: 1, upToDate: 1, failed: 0 });
    expect(report.results.map((r) => [r.schema, r.pending])).toEqual([
      [done, []],
      [fresh, NAMES[migrator]],
    ]);
    expect(await catalog(url)).toEqual(before); // no schema `fresh`, no migrations table, no lock table

    // A line per target; exit 0 once nothing is pending anywhere.
    const lines = await cli(['pending', ...FLAGS[migrator], '--each-schema', `${done},${fresh}`], { env, cwd: CWD });
    expect(lines.code).toBe(3);
    expect(lines.stdout).toContain(`${done}: up to date\n`);
    expect(lines.stdout).toContain(`${fresh}: 2 pending migrations: ${NAMES[migrator].join(', ')}\n`);
    const none = await cli(['pending', ...FLAGS[migrator], '--each-schema', done], { env, cwd: CWD });
    expect([none.code, none.stdout], none.stderr).toEqual([0, `${done}: up to date\n`]);
    expect(none.stderr).toMatch(new RegExp(`${migrator}: 1 target: 0 with pending migrations, 1 up to date`));
    expect(await catalog(url)).toEqual(before);
  }, 60_000);

  test('--each-database from stdin: a fresh database lists everything, and stays empty', async () => {
    const database = await createTestDatabase();
    const before = await catalog(database);
    const { code, stdout, stderr } = await cli(['pending', ...FLAGS[migrator], '--each-database', '-', '--json'], {
      env,
      cwd: CWD,
      input: `${database}\n`,
    });
    expect(code, stderr).toBe(3);
    const report = JSON.parse(stdout) as PendingReport;
    expect(report.results.map((r) => [r.database, r.schema, r.pending])).toEqual([
      [new URL(database).pathname.slice(1), null, NAMES[migrator]],
    ]);
    expect(await catalog(database)).toEqual(before);
  }, 60_000);
});

test('bad input: --wait or --concurrency without a fleet, both fleets: a usage error (exit 2)', async () => {
  const cases: [string[], RegExp][] = [
    [['--each-schema', 'a', '--wait'], /--wait is for one database/],
    [['--concurrency', '2'], /--concurrency is for a fleet/],
    [['--each-schema', 'a', '--each-database', '-'], /give one of them/],
  ];
  for (const [args, message] of cases) {
    const { code, stderr } = await cli(['pending', ...FLAGS.knex, ...args], { env, cwd: CWD, input: '' });
    expect([code, stderr]).toEqual([2, expect.stringMatching(message)]);
  }
});
