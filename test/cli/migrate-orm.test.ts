import { describe, expect, test } from 'vitest';
import { createTestDatabase, scratchDir, withClient } from '../helpers.js';
import { cli, fixture } from './cli.js';

// `pg-migration-lock migrate typeorm|kysely`: replicas starting at once apply each migration once, and
// exactly one of them reports applying it.

const REPLICAS = 6;

const race = (args: string[], env: Record<string, string>, cwd?: string) =>
  Promise.all(Array.from({ length: REPLICAS }, () => cli(['migrate', ...args], { env, cwd })));

const query = <T>(url: string, sql: string) => withClient(url, async (client) => (await client.query(sql)).rows as T[]);

function expectOneApplied(stdouts: string[], migrator: string, names: string[]): void {
  const applied = stdouts.filter((stdout) => stdout.startsWith(`✔ ${migrator}: applied ${names.length} migrations\n`));
  expect(applied).toEqual([
    `✔ ${migrator}: applied ${names.length} migrations\n${names.map((n) => `  ${n}\n`).join('')}`,
  ]);
  expect(
    stdouts.filter((stdout) => stdout === `✔ ${migrator}: already up to date, no pending migrations\n`),
  ).toHaveLength(REPLICAS - 1);
}

describe('typeorm', () => {
  const dataSource = fixture('typeorm/data-source.mjs');
  const names = ['CreateGizmos1700000000001', 'SlowAddSize1700000000002'];

  test(`${REPLICAS} concurrent processes (-d FILE, the connection from DATABASE_URL) apply each migration once`, async () => {
    const url = await createTestDatabase();
    const results = await race(['typeorm', '-d', dataSource], { DATABASE_URL: url });
    for (const { code, stderr } of results) expect(code, stderr).toBe(0);
    expect(await query(url, 'SELECT name FROM migrations ORDER BY id')).toEqual(names.map((name) => ({ name })));
    expectOneApplied(
      results.map((r) => r.stdout),
      'typeorm',
      names,
    );
  });

  test("the data source's own connection, --transaction each; bad flags and files exit 2", async () => {
    const url = await createTestDatabase();
    const ok = await cli(['migrate', 'typeorm', '--data-source', dataSource, '--transaction', 'each'], {
      env: { APP_DATABASE_URL: url },
    });
    expect(ok.code, ok.stderr).toBe(0);
    expect(await query(url, 'SELECT count(*)::int AS n FROM migrations')).toEqual([{ n: 2 }]);

    const fakeUrl = await createTestDatabase();
    const fake = await cli(['migrate', 'typeorm', '-d', dataSource, '--fake'], { env: { DATABASE_URL: fakeUrl } });
    expect(fake.code, fake.stderr).toBe(0);
    expect(fake.stdout).toBe(`✔ typeorm: applied 2 migrations (fake)\n${names.map((n) => `  ${n}\n`).join('')}`);
    expect(await query(fakeUrl, `SELECT to_regclass('gizmos') AS t`)).toEqual([{ t: null }]);

    const badMode = await cli(['migrate', 'typeorm', '-d', dataSource, '-t', 'sometimes'], {
      env: { DATABASE_URL: url },
    });
    expect(badMode.code).toBe(2);
    expect(badMode.stderr).toMatch(/Invalid --transaction "sometimes"/);
    const missing = await cli(['migrate', 'typeorm', '-d', 'nowhere.mjs'], { env: { DATABASE_URL: url } });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/data source file not found/);
    const notOne = await cli(['migrate', 'typeorm', '-d', fixture('kysely/kysely.config.mjs')], {
      env: { DATABASE_URL: url },
    });
    expect(notOne.code).toBe(2);
    expect(notOne.stderr).toMatch(/exports no TypeORM DataSource/);
  });
});

describe('pending typeorm|kysely', () => {
  test('names on stdout and exit 3 while pending; exit 0 once migrated; nothing created by the check', async () => {
    const url = await createTestDatabase();
    const dataSource = fixture('typeorm/data-source.mjs');
    const before = await cli(['pending', 'typeorm', '-d', dataSource], { env: { DATABASE_URL: url } });
    expect(before.code, before.stderr).toBe(3);
    expect(before.stdout).toBe('CreateGizmos1700000000001\nSlowAddSize1700000000002\n');
    expect(await query(url, `SELECT to_regclass('migrations') AS t`)).toEqual([{ t: null }]);

    const cwd = fixture('kysely');
    const kyselyBefore = await cli(['pending', 'kysely', '--json'], { cwd, env: { APP_DATABASE_URL: url } });
    expect(kyselyBefore.code, kyselyBefore.stderr).toBe(3);
    expect(JSON.parse(kyselyBefore.stdout)).toEqual(['001_create_gizmos', '002_slow_add_size']);
    expect(await query(url, `SELECT to_regclass('kysely_migration') AS t`)).toEqual([{ t: null }]);

    expect((await cli(['migrate', 'typeorm', '-d', dataSource], { env: { DATABASE_URL: url } })).code).toBe(0);
    const after = await cli(['pending', 'typeorm', '-d', dataSource], { env: { DATABASE_URL: url } });
    expect(after.code, after.stderr).toBe(0);
    expect(after.stdout).toBe('');
  });

  test('pending kysely --wait returns once a migration elsewhere has run', async () => {
    const url = await createTestDatabase();
    const cwd = fixture('kysely');
    const env = { APP_DATABASE_URL: url };
    const waiting = cli(['pending', 'kysely', '--wait', '--timeout', '60s'], { cwd, env });
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect((await cli(['migrate', 'kysely'], { cwd, env })).code).toBe(0);
    const { code, stderr } = await waiting;
    expect(code, stderr).toBe(0);
  });
});

describe('kysely', () => {
  const cwd = fixture('kysely');
  const names = ['001_create_gizmos', '002_slow_add_size'];

  test(`${REPLICAS} concurrent processes (the nearest kysely.config.mjs, dialect 'pg') apply each migration once`, async () => {
    const url = await createTestDatabase();
    const results = await race(['kysely'], { APP_DATABASE_URL: url }, cwd);
    for (const { code, stderr } of results) expect(code, stderr).toBe(0);
    expect(await query(url, 'SELECT name FROM kysely_migration ORDER BY name')).toEqual(
      names.map((name) => ({ name })),
    );
    expectOneApplied(
      results.map((r) => r.stdout),
      'kysely',
      names,
    );
  });

  test('-e picks a $environment of the config; --database-url replaces its dialect', async () => {
    const url = await createTestDatabase();
    const { code, stderr, stdout } = await cli(['migrate', 'kysely', '-e', 'other', '--database-url', url], { cwd });
    expect(code, stderr).toBe(0);
    expect(stdout).toContain('✔ kysely: applied 2 migrations');
    expect(await query(url, 'SELECT count(*)::int AS n FROM other_migration')).toEqual([{ n: 2 }]);
  });

  test('no config file: exit 2, naming what was looked for', async () => {
    const { code, stderr } = await cli(['migrate', 'kysely'], {
      cwd: scratchDir(),
      env: { DATABASE_URL: 'postgres://x@127.0.0.1:1/x' },
    });
    expect(code).toBe(2);
    expect(stderr).toMatch(/No kysely config file/);
  });
});
