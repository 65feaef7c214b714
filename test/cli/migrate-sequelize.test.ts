import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { promisify } from 'node:util';
import pg from 'pg';
import { describe, expect, test } from 'vitest';
import { DEFAULT_LOCK_KEY } from '../../src/index.js';
import { createTestDatabase, withClient } from '../helpers.js';
import { cli, fixture } from './cli.js';

// `pg-migration-lock migrate sequelize` and `pending sequelize`: what `sequelize-cli db:migrate` reads
// (.sequelizerc, config/config.json|js, --env, SequelizeMeta), replicas applying each migration once.

const REPLICAS = 4;
const cwd = fixture('sequelize');
const names = ['20240101000001-create-gizmos.js', '20240101000002-slow-add-size.js'];

const query = <T>(url: string, sql: string) => withClient(url, async (client) => (await client.query(sql)).rows as T[]);

describe('migrate sequelize', () => {
  test(`${REPLICAS} concurrent processes (.sequelizerc, use_env_variable) apply each migration once; then up to date`, async () => {
    const url = await createTestDatabase();
    const env = { APP_DATABASE_URL: url };
    const results = await Promise.all(
      Array.from({ length: REPLICAS }, () => cli(['migrate', 'sequelize'], { cwd, env })),
    );
    for (const { code, stderr } of results) expect(code, stderr).toBe(0);
    const stdouts = results.map((r) => r.stdout);
    expect(stdouts.filter((s) => s.startsWith('✔ sequelize: applied'))).toEqual([
      `✔ sequelize: applied 2 migrations\n${names.map((n) => `  ${n}\n`).join('')}`,
    ]);
    expect(stdouts.filter((s) => s === '✔ sequelize: already up to date, no pending migrations\n')).toHaveLength(
      REPLICAS - 1,
    );
    expect(await query(url, 'SELECT name FROM "SequelizeMeta" ORDER BY name')).toEqual(names.map((name) => ({ name })));
    expect(await query(url, 'SELECT name, size FROM gizmos')).toEqual([{ name: 'once', size: 1 }]);
    expect(results[0]!.stderr).toMatch(/Database: postgres:\/\/.* \(from db\/config\.js, environment "development"/);

    const again = await cli(['migrate', 'sequelize'], { cwd, env });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe('✔ sequelize: already up to date, no pending migrations\n');
  });

  test('--env picks the environment: its url and migrationStorageTableName/Schema', async () => {
    const url = await createTestDatabase();
    const { code, stdout, stderr } = await cli(['migrate', 'sequelize', '--env', 'other'], {
      cwd,
      env: { APP_DATABASE_URL: url },
    });
    expect(code, stderr).toBe(0);
    expect(stdout).toContain('✔ sequelize: applied 2 migrations');
    expect(await query(url, 'SELECT name FROM meta.other_meta ORDER BY name')).toEqual(names.map((name) => ({ name })));
  });

  test('config/config.json by default, NODE_ENV; --database-url replaces the connection', async () => {
    const url = await createTestDatabase();
    const cwd = fixture('sequelize-default');
    const byEnv = await cli(['migrate', 'sequelize'], { cwd, env: { NODE_ENV: 'test', APP_DATABASE_URL: url } });
    expect(byEnv.code, byEnv.stderr).toBe(0);
    expect(byEnv.stdout).toBe('✔ sequelize: applied 1 migration\n  20240101000001-create-gizmos.js\n');

    const other = await createTestDatabase();
    const byFlag = await cli(['migrate', 'sequelize', '--database-url', other], { cwd });
    expect(byFlag.code, byFlag.stderr).toBe(0);
    expect(byFlag.stderr).toMatch(/from --database-url/);
    expect(await query(other, 'SELECT name FROM "SequelizeMeta"')).toEqual([
      { name: '20240101000001-create-gizmos.js' },
    ]);
  });

  test('a failing migration is named: exit 1, the ones before it applied', async () => {
    const url = await createTestDatabase();
    const { code, stdout, stderr } = await cli(['migrate', 'sequelize', '--migrations-path', 'db/migrations-failing'], {
      cwd,
      env: { APP_DATABASE_URL: url },
    });
    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(stderr).toMatch(
      /sequelize: migration db\/migrations-failing\/20240101000002-broken\.js:5 failed: SequelizeDatabaseError: division by zero/,
    );
    expect(await query(url, 'SELECT name FROM "SequelizeMeta"')).toEqual([{ name: '20240101000001-create-gizmos.js' }]);
  });

  test('config errors exit 2: no config, an unknown environment, an unset use_env_variable', async () => {
    const none = await cli(['migrate', 'sequelize', '--migrations-path', cwd], { cwd: fixture('knex') });
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/Cannot find "config\/config\.json"/);
    const env = await cli(['migrate', 'sequelize', '--env', 'staging'], { cwd });
    expect(env.code).toBe(2);
    expect(env.stderr).toMatch(/has no "staging" environment \(it has: development, other\)/);
    const unset = await cli(['migrate', 'sequelize'], { cwd });
    expect(unset.code).toBe(2);
    expect(unset.stderr).toMatch(/use_env_variable names APP_DATABASE_URL, which is not set/);
  });

  test('sequelize-cli db:migrate and migrate sequelize agree: what one applied, the other finds done', async () => {
    const url = await createTestDatabase();
    const env = { ...process.env, APP_DATABASE_URL: url, NODE_ENV: '' };
    const bin = createRequire(import.meta.url).resolve('sequelize-cli/lib/sequelize');
    // sequelize-cli applies the first migration (--to), ours the rest, and sequelize-cli then finds nothing to do.
    await promisify(execFile)(process.execPath, [bin, 'db:migrate', '--to', names[0]!], { cwd, env });
    const ours = await cli(['migrate', 'sequelize'], { cwd, env: { APP_DATABASE_URL: url } });
    expect(ours.code, ours.stderr).toBe(0);
    expect(ours.stdout).toBe(`✔ sequelize: applied 1 migration\n  ${names[1]}\n`);
    const { stdout } = await promisify(execFile)(process.execPath, [bin, 'db:migrate'], { cwd, env });
    expect(stdout).toMatch(/No migrations were executed, database schema was already up to date/);
  });
});

test('a fleet: --each-schema migrates each schema (SequelizeMeta and the tables in it)', async () => {
  const url = await createTestDatabase();
  const { code, stdout, stderr } = await cli(['migrate', 'sequelize', '--each-schema', 'tenant_1,tenant_2'], {
    cwd,
    env: { DATABASE_URL: url },
  });
  expect(code, stderr).toBe(0);
  expect(stdout).toMatch(/2 applied/);
  for (const schema of ['tenant_1', 'tenant_2']) {
    expect(await query(url, `SELECT name FROM ${schema}."SequelizeMeta" ORDER BY name`)).toEqual(
      names.map((name) => ({ name })),
    );
    expect(await query(url, `SELECT name, size FROM ${schema}.gizmos`)).toEqual([{ name: 'once', size: 1 }]);
  }
  expect(await query(url, `SELECT to_regclass('public.gizmos') AS t`)).toEqual([{ t: null }]);
});

test.each([
  ['sequelize', 'npm install sequelize'],
  ['umzug', 'npm install umzug@3'],
])('%s not installed: exit 2, saying what to install', async (hidden, hint) => {
  const hide = fixture('hide-orms.mjs');
  const { code, stderr } = await cli(['migrate', 'sequelize', '--database-url', 'postgres://x@127.0.0.1:1/x'], {
    cwd,
    env: { NODE_OPTIONS: `--import=${hide}`, HIDE_PACKAGES: hidden },
  });
  expect(stderr).toContain(hint);
  expect(code).toBe(2);
});

test('--to stops at that migration; --no-wait while another holds the lock: exit 75 (with something pending)', async () => {
  const url = await createTestDatabase();
  const env = { APP_DATABASE_URL: url };
  const to = await cli(['migrate', 'sequelize', '--to', names[0]!], { cwd, env });
  expect(to.code, to.stderr).toBe(0);
  expect(to.stdout).toBe(`✔ sequelize: applied 1 migration\n  ${names[0]}\n`);

  const client = new pg.Client(url);
  await client.connect();
  try {
    await client.query('SELECT pg_advisory_lock($1::bigint)', [DEFAULT_LOCK_KEY.toString()]);
    const busy = await cli(['migrate', 'sequelize', '--no-wait'], { cwd, env });
    expect(busy.code, busy.stderr).toBe(75);
  } finally {
    await client.end();
  }
  expect((await cli(['migrate', 'sequelize'], { cwd, env })).code).toBe(0);
  // Nothing pending: no lock asked for, even while another holds it.
  const held = new pg.Client(url);
  await held.connect();
  try {
    await held.query('SELECT pg_advisory_lock($1::bigint)', [DEFAULT_LOCK_KEY.toString()]);
    const idle = await cli(['migrate', 'sequelize', '--no-wait'], { cwd, env });
    expect(idle.code, idle.stderr).toBe(0);
    expect(idle.stdout).toBe('✔ sequelize: already up to date, no pending migrations\n');
  } finally {
    await held.end();
  }
});

describe('pending sequelize', () => {
  test('names on stdout and exit 3 while pending; exit 0 once migrated', async () => {
    const url = await createTestDatabase();
    const env = { APP_DATABASE_URL: url };
    const before = await cli(['pending', 'sequelize'], { cwd, env });
    expect(before.code, before.stderr).toBe(3);
    expect(before.stdout).toBe(names.map((n) => `${n}\n`).join(''));
    expect((await cli(['migrate', 'sequelize'], { cwd, env })).code).toBe(0);
    const after = await cli(['pending', 'sequelize'], { cwd, env });
    expect(after.code, after.stderr).toBe(0);
    expect(after.stdout).toBe('');
  });

  test('pending sequelize --wait returns once a migration elsewhere has run', async () => {
    const url = await createTestDatabase();
    const env = { APP_DATABASE_URL: url };
    const waiting = cli(['pending', 'sequelize', '--wait', '--timeout', '60s'], { cwd, env });
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect((await cli(['migrate', 'sequelize'], { cwd, env })).code).toBe(0);
    const { code, stderr } = await waiting;
    expect(code, stderr).toBe(0);
  });
});
