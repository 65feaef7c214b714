// `migrate <migrator> --each-schema | --each-database`: real CLI processes migrating a fleet of tenant schemas and
// databases on a real server, each migrator once, two fleet commands at once, an interrupted one resumed, bad input.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import {
  eventCounts,
  expectMigratedOnce,
  MIGRATORS,
  type MigratorName,
  NAMES,
  prepareTenants,
} from '../fixtures/fleet/tenants.js';
import { createTestDatabase, fixture, scratchDir, waitFor, withClient } from '../helpers.js';
import { cli, hasScript, start, startOnTerminal } from './cli.js';

const url = await createTestDatabase();
/** The migrator's name as part of a schema name. */
const tag = (migrator: MigratorName) => migrator.replace(/-/g, '_');
await prepareTenants(
  url,
  MIGRATORS.map((migrator) => `poisoned_${tag(migrator)}`),
);
const CWD = fixture('fleet/cli');
const env = { DATABASE_URL: url, FLEET_SLEEP: '0.05' };

/** `migrate <migrator>` with the fixture configuration of each migrator (relative to CWD). */
const FLAGS: Record<MigratorName, string[]> = {
  knex: ['knex', '--knexfile', 'knexfile.cjs'],
  'node-pg-migrate': ['node-pg-migrate', '-m', '../node-pg-migrate'],
  drizzle: ['drizzle', '--migrations-folder', '../drizzle'],
  kysely: ['kysely', '--config', 'kysely.config.mjs'],
  typeorm: ['typeorm', '-d', 'data-source.mjs'],
};
const fleet = (migrator: MigratorName, args: string[], extraEnv: Record<string, string> = {}) =>
  cli(['migrate', ...FLAGS[migrator], ...args], { env: { ...env, ...extraEnv }, cwd: CWD });

interface JsonReport {
  ok: boolean;
  counts: Record<string, number>;
  results: {
    target: string;
    schema: string | null;
    status: string;
    applied: string[];
    error?: { message: string; code: string | null; migration: string | null; statement: string | null };
  }[];
}

describe.each(MIGRATORS)('migrate %s --each-schema', (migrator) => {
  const schemas = ['a', 'b', 'poisoned'].map((name) => `${name}_${tag(migrator)}`);
  const [a, b, poisoned] = schemas;

  test('migrates each schema under its own lock; a failing tenant is reported, the rest finish; exit 1', async () => {
    const { code, stdout, stderr } = await fleet(migrator, ['--each-schema', schemas.join(','), '--concurrency', '2']);
    expect(code, stderr).toBe(1);
    expect(stdout).toMatch(
      new RegExp(`^✖ ${migrator}: 3 targets in .*: 2 applied, 0 up to date, 0 migrated by another run, 1 failed$`, 'm'),
    );
    // The failure names the migration, PostgreSQL's message and code, and the statement.
    const named = `migration ${NAMES[migrator][1]}: `;
    const said = `${named}this tenant is poisoned \\(SQLSTATE P0001\\) in: .*RAISE EXCEPTION 'this tenant is poisoned'`;
    expect(stdout).toMatch(new RegExp(`^  ${poisoned}: ${said}`, 'm'));
    expect(stderr).toMatch(new RegExp(`${poisoned}: failed after .*: ${said}`));
    // A line per target (stderr is not a terminal), and one error line at the end.
    expect(stderr).toMatch(new RegExp(`${a}: applied 2 migrations`));
    expect(stderr).toMatch(/error: 1 of 3 targets failed\n$/);
    const counts = await eventCounts(url);
    for (const schema of schemas.slice(0, 2)) {
      expect([counts[`${schema}/001`], counts[`${schema}/002`]]).toEqual([1, 1]);
    }
    expect(counts[`${poisoned}/002`]).toBeUndefined();
  });

  test('again, as --json from a query: the migrated schemas are up to date, the failing one fails again', async () => {
    const query = `SELECT nspname FROM pg_namespace WHERE nspname IN ('${schemas.join("', '")}') ORDER BY 1`;
    const { code, stdout } = await fleet(migrator, ['--each-schema', query, '--json']);
    expect(code).toBe(1);
    const report = JSON.parse(stdout) as JsonReport;
    expect(report.ok).toBe(false);
    expect(report.results.map((r) => [r.schema, r.status])).toEqual([
      [a, 'up-to-date'],
      [b, 'up-to-date'],
      [poisoned, 'failed'],
    ]);
    expect(report.results[2]!.error).toMatchObject({
      message: 'this tenant is poisoned',
      code: 'P0001',
      migration: NAMES[migrator][1],
      statement: expect.stringMatching(/RAISE EXCEPTION 'this tenant is poisoned'/),
    });
  });

  test('names what it would apply the same way a single run does', async () => {
    const { stdout } = await fleet(migrator, ['--each-schema', `c_${tag(migrator)}`, '--json']);
    expect((JSON.parse(stdout) as JsonReport).results[0]!.applied).toEqual(NAMES[migrator]);
  });
});

describe('fleets of databases, two commands at once, interruptions, bad input', () => {
  test('--each-database from stdin: connection strings (a URL, a libpq keyword/value one) and names on the server of DATABASE_URL', async () => {
    const [one, two, three] = await Promise.all([createTestDatabase(), createTestDatabase(), createTestDatabase()]);
    await Promise.all([prepareTenants(one), prepareTenants(two), prepareTenants(three)]);
    // The third as libpq's keyword/value string, as psql takes it.
    const u = new URL(three);
    const conninfo = `host=${u.hostname} port=${u.port} dbname=${u.pathname.slice(1)} user=${u.username} password='${decodeURIComponent(u.password)}'`;
    const input = `# tenants\n${one}\n\n${new URL(two).pathname.slice(1)}\n${conninfo}\n`;
    const { code, stdout, stderr } = await cli(['migrate', ...FLAGS.knex, '--each-database', '-'], {
      env: { ...env, DATABASE_URL: one },
      cwd: CWD,
      input,
    });
    expect(code, stderr).toBe(0);
    expect(stderr).toContain('Fleet: 3 databases (from stdin)');
    expect(stdout).toMatch(/^✔ knex: 3 targets in .*: 3 applied, 0 up to date/m);
    for (const url of [one, two, three]) await expectMigratedOnce(url, ['public']);
  });

  test('two fleet commands started together on 16 schemas: each schema migrated once, both succeed', async () => {
    const schemas = Array.from({ length: 16 }, (_, i) => `pair_${i}`).join(',');
    const args = ['migrate', ...FLAGS.knex, '--each-schema', schemas, '--concurrency', '4', '--json'];
    const runs = [
      start(args, { env: { ...env, FLEET_SLEEP: '0.3' }, cwd: CWD }),
      start(args, { env: { ...env, FLEET_SLEEP: '0.3' }, cwd: CWD }),
    ];
    const exits = await Promise.all(runs.map((run) => run.exited));
    expect(exits.map((e) => e.code)).toEqual([0, 0]);
    const reports = exits.map((e) => JSON.parse(e.stdout) as JsonReport);
    const applied = reports.flatMap((r) => r.results.filter((x) => x.status === 'applied').map((x) => x.schema)).sort();
    expect(applied).toEqual(Array.from({ length: 16 }, (_, i) => `pair_${i}`).sort());
    const counts = await eventCounts(url);
    for (let i = 0; i < 16; i++) expect([counts[`pair_${i}/001`], counts[`pair_${i}/002`]]).toEqual([1, 1]);
  }, 60_000);

  test('SIGTERM starts no further target and lets the running one finish (exit 143); a second run resumes', async () => {
    const schemas = Array.from({ length: 6 }, (_, i) => `stop_${i}`);
    const args = ['migrate', ...FLAGS.knex, '--each-schema', schemas.join(','), '--concurrency', '1'];
    const run = start(args, { env: { ...env, FLEET_SLEEP: '1' }, cwd: CWD });
    await run.waitForOutput(/stop_0: applied/, 30_000);
    run.child.kill('SIGTERM');
    const first = await run.exited;
    expect(first.code, first.stderr).toBe(143);
    expect(first.stderr).toMatch(/Interrupted by SIGTERM: starting no further target/);
    expect(first.stdout).toMatch(/not run/);
    const stopped = Object.keys(await eventCounts(url)).filter((at) => at.startsWith('stop_')).length;
    expect(stopped).toBeLessThan(12);

    const again = await cli(args, { env, cwd: CWD });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/6 targets in .*: \d applied, [1-5] up to date/);
    const counts = await eventCounts(url);
    for (const schema of schemas) expect([counts[`${schema}/001`], counts[`${schema}/002`]]).toEqual([1, 1]);
  }, 60_000);

  test('a second SIGINT stops at once and still prints the summary: what finished, what was stopped, what never started', async () => {
    const schemas = Array.from({ length: 5 }, (_, i) => `twice_${i}`);
    const args = ['migrate', ...FLAGS.knex, '--each-schema', schemas.join(','), '--concurrency', '1'];
    const run = start(args, { env: { ...env, FLEET_SLEEP: '3' }, cwd: CWD });
    await run.waitForOutput(/twice_0: applied/, 30_000);
    // The next target is mid-migration (its pg_sleep runs on the server) when the signals come.
    await waitFor(
      async () =>
        (
          await withClient(url, (client) =>
            client.query(
              "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%, 3))' AND pid <> pg_backend_pid()",
            ),
          )
        ).rowCount! > 0,
      30_000,
      'a target to be migrating',
    );
    run.child.kill('SIGINT');
    await run.waitForOutput(/Interrupted by SIGINT: starting no further target/, 10_000);
    run.child.kill('SIGINT');
    const { code, stdout, stderr } = await run.exited;
    expect(code, stderr).toBe(130);
    expect(stderr).toMatch(/Interrupted again by SIGINT: stopping now/);
    expect(stdout).toMatch(/^✖ knex: \d+ targets? in .*: [1-9]\d* applied, /m);
    expect(stdout).toMatch(/^ {2}stopped while migrating \(their open transactions roll back\): twice_\d$/m);
    expect(stdout).toMatch(/^ {2}not started: [1-3] targets?$/m);
  }, 60_000);

  test.skipIf(!hasScript)(
    'on a terminal: one live line (done, running, ETA), then the summary',
    async () => {
      const schemas = Array.from({ length: 4 }, (_, i) => `live_${i}`).join(',');
      const run = startOnTerminal(['migrate', ...FLAGS.knex, '--each-schema', schemas, '--concurrency', '1'], {
        env: { ...env, FLEET_SLEEP: '0.7' },
        cwd: CWD,
      });
      const { code, stdout } = await run.exited;
      expect(code, stdout).toBe(0);
      expect(stdout).toMatch(/⏳ [1-3]\/4 done, 1 running, ETA \d/);
      expect(stdout).toMatch(/✔ knex: 4 targets in .*: 4 applied/);
      // No line per target on a terminal: the live line says it.
      expect(stdout).not.toMatch(/live_0: applied/);
    },
    30_000,
  );

  test('bad input: a clear message, exit 2, nothing migrated', async () => {
    const list = join(scratchDir('pgml-fleet-cli-'), 'tenants.txt');
    writeFileSync(list, 'postgres://ok@127.0.0.1/a\nmysql://root:hunter2%zz@db/x\n');
    const cases: [string[], RegExp][] = [
      [['--each-database', '/nonexistent/tenants.txt'], /--each-database: cannot read \/nonexistent\/tenants.txt/],
      [['--each-database', list], /line 2: expected a postgres:\/\/ or postgresql:\/\/ URL, got mysql:\/\/…/],
      [['--each-schema', 'a', '--each-database', list], /give one of them/],
      [['--each-schema', 'a,,b'], /--each-schema: schema 2 is empty/],
      [['--each-schema', 'a', '--key', '42'], /--key chooses one lock, and a fleet takes one per target/],
      [['--each-schema', 'a', '--no-wait'], /--no-wait is for one lock/],
      [['--each-schema', 'a', '--concurrency', '0'], /Expected an integer from 1 to 1000/],
      [['--json'], /--json is for a fleet/],
    ];
    for (const [args, message] of cases) {
      const { code, stderr } = await fleet('knex', args);
      expect([code, stderr]).toEqual([2, expect.stringMatching(message)]);
      expect(stderr).not.toContain('hunter2');
    }
    expect(Object.keys(await eventCounts(url)).filter((at) => at.startsWith('a/'))).toEqual([]);
  });
});
