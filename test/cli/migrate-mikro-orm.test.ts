import { describe, expect, test } from 'vitest';
import { createTestDatabase, scratchDir, withClient } from '../helpers.js';
import { cli, fixture } from './cli.js';

// `pg-migration-lock migrate mikro-orm` and `pending mikro-orm`: the config `mikro-orm migration:up` reads
// (./mikro-orm.config.js, --config, contexts), replicas applying each migration once.

const REPLICAS = 4;
const cwd = fixture('mikro-orm');
const names = ['Migration20240101000001_create_gizmos', 'Migration20240101000002_slow_add_size'];

const query = <T>(url: string, sql: string) => withClient(url, async (client) => (await client.query(sql)).rows as T[]);

describe('migrate mikro-orm', () => {
  test(`${REPLICAS} concurrent processes (./mikro-orm.config.js, its clientUrl) apply each migration once; then up to date`, async () => {
    const url = await createTestDatabase();
    const env = { APP_DATABASE_URL: url };
    const results = await Promise.all(
      Array.from({ length: REPLICAS }, () => cli(['migrate', 'mikro-orm'], { cwd, env })),
    );
    for (const { code, stderr } of results) expect(code, stderr).toBe(0);
    const stdouts = results.map((r) => r.stdout);
    expect(stdouts.filter((s) => s.startsWith('✔ mikro-orm: applied'))).toEqual([
      `✔ mikro-orm: applied 2 migrations\n${names.map((n) => `  ${n}\n`).join('')}`,
    ]);
    expect(stdouts.filter((s) => s === '✔ mikro-orm: already up to date, no pending migrations\n')).toHaveLength(
      REPLICAS - 1,
    );
    expect(await query(url, 'SELECT name FROM mikro_orm_migrations ORDER BY name')).toEqual(
      names.map((name) => ({ name })),
    );
    expect(await query(url, 'SELECT name, size FROM gizmos')).toEqual([{ name: 'once', size: 1 }]);
    expect(results[0]!.stderr).toMatch(/Database: postgres:\/\/.* \(from mikro-orm\.config\.js\)/);

    const again = await cli(['migrate', 'mikro-orm'], { cwd, env });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe('✔ mikro-orm: already up to date, no pending migrations\n');
  });

  test('a failing migration is named (--context picks the config): exit 1, all-or-nothing rolled back', async () => {
    const url = await createTestDatabase();
    const { code, stdout, stderr } = await cli(['migrate', 'mikro-orm', '--context', 'failing'], {
      cwd,
      env: { APP_DATABASE_URL: url },
    });
    expect(code, stderr).toBe(1);
    expect(stdout).toBe('');
    expect(stderr).toMatch(
      /mikro-orm: migration migrations-failing\/Migration20240101000002_broken\.js.* failed: .*no_such_table/,
    );
    expect(await query(url, `SELECT to_regclass('gizmos') AS t`)).toEqual([{ t: null }]);
  });

  test('--database-url replaces the connection; --config PATH; config errors exit 2', async () => {
    const url = await createTestDatabase();
    const ok = await cli(
      ['migrate', 'mikro-orm', '--config', fixture('mikro-orm/mikro-orm.config.js'), '--database-url', url],
      {
        cwd,
        env: { APP_DATABASE_URL: 'postgres://nobody@127.0.0.1:1/nowhere' },
      },
    );
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stderr).toMatch(/from --database-url/);
    expect(await query(url, 'SELECT count(*)::int AS n FROM mikro_orm_migrations')).toEqual([{ n: 2 }]);

    const none = await cli(['migrate', 'mikro-orm'], { cwd: scratchDir(), env: { DATABASE_URL: url } });
    expect(none.code, none.stderr).toBe(2);
    expect(none.stderr).toMatch(/MikroORM config file not found/);
    const missing = await cli(['migrate', 'mikro-orm', '--config', 'none.config.js'], { cwd });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/MikroORM config file not found: .*none\.config\.js/);
    // A TypeScript config loads through the project's loader (jiti, here the repository's): the same migrations.
    const ts = await cli(['migrate', 'mikro-orm'], { cwd: fixture('mikro-orm-ts'), env: { APP_DATABASE_URL: url } });
    expect(ts.code, ts.stderr).toBe(0);
    expect(ts.stdout).toMatch(/mikro-orm: already up to date/);
    const context = await cli(['migrate', 'mikro-orm', '--context', 'nope'], { cwd, env: { DATABASE_URL: url } });
    expect(context.code).toBe(2);
    expect(context.stderr).toMatch(/MikroORM config 'nope' was not found/);
  });
});

test('a fleet: --each-schema migrates each schema (mikro_orm_migrations and the tables in it)', async () => {
  const url = await createTestDatabase();
  const { code, stdout, stderr } = await cli(['migrate', 'mikro-orm', '--each-schema', 'tenant_1,tenant_2'], {
    cwd,
    env: { DATABASE_URL: url },
  });
  expect(code, stderr).toBe(0);
  expect(stdout).toMatch(/2 applied/);
  for (const schema of ['tenant_1', 'tenant_2']) {
    expect(await query(url, `SELECT name FROM ${schema}.mikro_orm_migrations ORDER BY name`)).toEqual(
      names.map((name) => ({ name })),
    );
    expect(await query(url, `SELECT name, size FROM ${schema}.gizmos`)).toEqual([{ name: 'once', size: 1 }]);
  }
});

test('MikroORM not installed: exit 2, saying what to install', async () => {
  const hide = fixture('hide-orms.mjs');
  const { code, stderr } = await cli(['migrate', 'mikro-orm', '--database-url', 'postgres://x@127.0.0.1:1/x'], {
    cwd,
    env: {
      NODE_OPTIONS: `--import=${hide}`,
      HIDE_PACKAGES: '@mikro-orm/core,@mikro-orm/postgresql,@mikro-orm/migrations',
    },
  });
  expect(stderr).toContain('npm install @mikro-orm/core');
  expect(code).toBe(2);
});

describe('pending mikro-orm', () => {
  test('names on stdout and exit 3 while pending; exit 0 once migrated', async () => {
    const url = await createTestDatabase();
    const env = { APP_DATABASE_URL: url };
    const before = await cli(['pending', 'mikro-orm'], { cwd, env });
    expect(before.code, before.stderr).toBe(3);
    expect(before.stdout).toBe(names.map((n) => `${n}\n`).join(''));
    expect((await cli(['migrate', 'mikro-orm'], { cwd, env })).code).toBe(0);
    const after = await cli(['pending', 'mikro-orm'], { cwd, env });
    expect(after.code, after.stderr).toBe(0);
    expect(after.stdout).toBe('');
  });
});
