import { describe, expect, test } from 'vitest';
import { DEFAULT_LOCK_KEY } from '../../src/index.js';
import { createTestDatabase, lockRows, waitFor, withClient } from '../helpers.js';
import { cli, fixture, holdLock, start } from './cli.js';

// Replicas starting at once, each running `pg-migration-lock migrate …` on the same pending migrations:
// every process succeeds, each migration is applied once, and exactly one process reports applying it.

const REPLICAS = 6;

const race = (args: string[], env: Record<string, string>, cwd?: string) =>
  Promise.all(Array.from({ length: REPLICAS }, () => cli(['migrate', ...args], { env, cwd })));

const query = <T>(url: string, sql: string) => withClient(url, async (client) => (await client.query(sql)).rows as T[]);

/** The migration names listed under "applied N migrations", across all outputs. */
function appliedNames(stdouts: string[]): string[] {
  return stdouts.flatMap((stdout) => [...stdout.matchAll(/^ {2}(\S+)$/gm)].map((match) => match[1]!));
}

describe('node-pg-migrate', () => {
  const dir = fixture('node-pg-migrate');
  const names = ['1700000000001_create-widgets', '1700000000002_slow-backfill', '1700000000003_index-name'];

  test(`${REPLICAS} concurrent processes apply each migration once`, async () => {
    const url = await createTestDatabase();
    // Started while a session holds the lock (node-pg-migrate's own key, the CLI's default for it), so on any
    // machine all of them queue and say so, and race for the lock when it is released.
    const holder = await holdLock(url, 7241865325823964n);
    let runs: ReturnType<typeof start>[] = [];
    try {
      runs = Array.from({ length: REPLICAS }, () =>
        start(['migrate', 'node-pg-migrate', '-m', dir], { env: { DATABASE_URL: url } }),
      );
      await Promise.all(runs.map((run) => run.waitForOutput(/Waiting for migration lock/, 30_000)));
    } finally {
      await holder.release();
    }
    const results = await Promise.all(runs.map((run) => run.exited));
    for (const { code, stderr } of results) expect(code, stderr).toBe(0);
    expect(await query(url, 'SELECT name, count(*)::int AS n FROM applied_log GROUP BY name ORDER BY name')).toEqual(
      names.map((_, i) => ({ name: ['create-widgets', 'slow-backfill', 'index-name'].sort()[i], n: 1 })),
    );
    expect(await query(url, 'SELECT name FROM pgmigrations ORDER BY id')).toEqual(names.map((name) => ({ name })));
    const stdouts = results.map((result) => result.stdout);
    expect(appliedNames(stdouts)).toEqual(names);
    expect(stdouts.filter((stdout) => stdout.startsWith('✔ node-pg-migrate: applied 3 migrations\n'))).toHaveLength(1);
    expect(
      stdouts.filter((stdout) => stdout === '✔ node-pg-migrate: already up to date, no pending migrations\n'),
    ).toHaveLength(REPLICAS - 1);
  });

  test('-t and --no-wait, in node-pg-migrate style; 75 while another run holds the lock', async () => {
    const url = await createTestDatabase();
    const env = { DATABASE_URL: url };
    // node-pg-migrate's own key: the CLI's default for it.
    const holder = await holdLock(url, 7241865325823964n);
    try {
      const busy = await cli(['migrate', 'node-pg-migrate', '--migrations-dir', dir, '--no-wait'], { env });
      expect(busy.code).toBe(75);
    } finally {
      await holder.release();
    }
    const { code, stdout } = await cli(['migrate', 'node-pg-migrate', '-m', dir, '-t', 'schema_migrations', '-q'], {
      env,
    });
    expect(code).toBe(0);
    expect(stdout).toBe('');
    expect(await query(url, 'SELECT count(*)::int AS n FROM schema_migrations')).toEqual([{ n: 3 }]);
  });

  test('SIGTERM while migrating: stops at once (exit 143); the server rolls back and frees the lock', async () => {
    const url = await createTestDatabase();
    const migrate = start(['migrate', 'node-pg-migrate', '-m', fixture('node-pg-migrate-slow')], {
      env: { DATABASE_URL: url },
    });
    await migrate.waitForOutput(/migrating 1700000000001_slow/);
    migrate.child.kill('SIGTERM');
    const { code, stderr } = await migrate.exited;
    expect(code).toBe(143);
    expect(stderr).toContain(
      'error: Interrupted by SIGTERM while migrating: stopping; the open transaction is rolled back',
    );
    await waitFor(async () => (await lockRows(url, DEFAULT_LOCK_KEY)).length === 0, 10_000, 'the lock to be freed');
    expect(await query(url, "SELECT to_regclass('slow_done') AS t")).toEqual([{ t: null }]);
  });

  test('a failing migration: exit 1, the failing SQL shown, the error last', async () => {
    const url = await createTestDatabase();
    await withClient(url, (client) => client.query('CREATE TABLE widgets (id int)'));
    const { code, stderr, stdout } = await cli(['migrate', 'node-pg-migrate', '-m', dir], {
      env: { DATABASE_URL: url },
    });
    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(stderr).toContain('Error executing:\nCREATE TABLE "widgets"');
    expect(stderr.trimEnd().split('\n').at(-1)).toMatch(
      /^error: node-pg-migrate: migration .*1700000000001_create-widgets\.cjs failed: relation "widgets" already exists \(SQLSTATE 42P07\) in: CREATE TABLE "widgets" \( "id" serial PRIMARY KEY, .*\);$/,
    );
    expect(await query(url, 'SELECT count(*)::int AS n FROM pgmigrations')).toEqual([{ n: 0 }]);
  });
});

describe('knex', () => {
  test(`${REPLICAS} concurrent processes with a CommonJS knexfile (environments, DATABASE_URL) apply each migration once`, async () => {
    const url = await createTestDatabase();
    const results = await race(['knex', '--knexfile', fixture('knex/knexfile.cjs')], { DATABASE_URL: url });
    for (const { code, stderr } of results) expect(code, stderr).toBe(0);
    expect(await query(url, 'SELECT name, batch FROM knex_migrations ORDER BY id')).toEqual([
      { name: '001_create_gadgets.cjs', batch: 1 },
      { name: '002_slow_add_size.cjs', batch: 1 },
    ]);
    const stdouts = results.map((result) => result.stdout);
    expect(stdouts.filter((stdout) => stdout.startsWith('✔ knex: applied 2 migrations (batch 1)\n'))).toHaveLength(1);
    expect(appliedNames(stdouts)).toEqual(['001_create_gadgets.cjs', '002_slow_add_size.cjs']);
  });

  test('--env picks the environment; found from the working directory like knex', async () => {
    const url = await createTestDatabase();
    const { code, stdout } = await cli(['migrate', 'knex', '--env', 'production'], {
      env: { DATABASE_URL: url },
      cwd: fixture('knex'),
    });
    expect(code).toBe(0);
    expect(stdout).toContain('✔ knex: applied 2 migrations (batch 1)');
    expect(await query(url, 'SELECT count(*)::int AS n FROM knex_migrations_prod')).toEqual([{ n: 2 }]);
  });

  test('an ES module knexfile exporting a function, with --database-url', async () => {
    const url = await createTestDatabase();
    const args = ['migrate', 'knex', '--knexfile', fixture('knex/knexfile.mjs'), '--database-url', url];
    expect((await cli(args)).stdout).toContain('✔ knex: applied 2 migrations (batch 1)');
    expect((await cli(args)).stdout).toBe('✔ knex: already up to date, no pending migrations\n');
    expect(await query(url, 'SELECT count(*)::int AS n FROM knex_migrations_mjs')).toEqual([{ n: 2 }]);
  });

  test('a failing migration: exit 1, the file named, stdout left clean', async () => {
    const url = await createTestDatabase();
    await withClient(url, (client) => client.query('CREATE TABLE gadgets (id int)'));
    const { code, stdout, stderr } = await cli(['migrate', 'knex', '--knexfile', fixture('knex/knexfile.cjs')], {
      env: { DATABASE_URL: url },
    });
    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(stderr.trimEnd().split('\n').at(-1)).toMatch(
      /^error: knex: migration migrations\/001_create_gadgets\.cjs failed: relation "gadgets" already exists \(SQLSTATE 42P07\) in: create table "gadgets" \(.*\)$/,
    );
  });

  test('a knexfile without a connection and no database URL: exit 2', async () => {
    const { code, stderr } = await cli(['migrate', 'knex', '--knexfile', fixture('knex/knexfile.mjs')]);
    expect(code).toBe(2);
    expect(stderr).toContain('No database URL');
  });
});

describe('drizzle', () => {
  test(`${REPLICAS} concurrent processes apply each migration once`, async () => {
    const url = await createTestDatabase();
    const results = await race(['drizzle', '--migrations-folder', fixture('drizzle')], { DATABASE_URL: url });
    for (const { code, stderr } of results) expect(code, stderr).toBe(0);
    expect(await query(url, 'SELECT created_at::text FROM drizzle.__drizzle_migrations ORDER BY id')).toEqual([
      { created_at: '1700000000001' },
      { created_at: '1700000000002' },
    ]);
    const stdouts = results.map((result) => result.stdout);
    expect(stdouts.filter((stdout) => stdout.startsWith('✔ drizzle: applied 2 migrations\n'))).toHaveLength(1);
    expect(appliedNames(stdouts)).toEqual(['0000_create_gizmos', '0001_slow_add_size']);
  });

  test('a failing migration: exit 1 with the reason, nothing recorded', async () => {
    const url = await createTestDatabase();
    await withClient(url, (client) => client.query('CREATE TABLE gizmos (id int)'));
    const { code, stdout, stderr } = await cli(['migrate', 'drizzle', '--migrations-folder', fixture('drizzle')], {
      env: { DATABASE_URL: url },
    });
    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(stderr).toMatch(
      /\nerror: drizzle: migration .*0000_create_gizmos\.sql failed: relation "gizmos" already exists \(SQLSTATE 42P07\) in: CREATE TABLE .*gizmos.*\n$/,
    );
    expect(await query(url, 'SELECT count(*)::int AS n FROM drizzle.__drizzle_migrations')).toEqual([{ n: 0 }]);
  });

  test('--migrations-table and --migrations-schema', async () => {
    const url = await createTestDatabase();
    const args = ['migrate', 'drizzle', '--migrations-folder', fixture('drizzle')];
    const flags = ['--migrations-table', 'applied', '--migrations-schema', 'meta'];
    const { code, stdout } = await cli([...args, ...flags], { env: { DATABASE_URL: url } });
    expect(code).toBe(0);
    expect(stdout).toContain('✔ drizzle: applied 2 migrations');
    expect(await query(url, 'SELECT count(*)::int AS n FROM meta.applied')).toEqual([{ n: 2 }]);
  });
});
