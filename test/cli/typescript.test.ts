// TypeScript configs and migrations in the CLI on Node 20+: a knexfile.ts with .ts migrations, kysely init's
// .config/kysely.config.ts with .ts migrations, a TypeORM data-source.ts with .ts migrations, loaded through the
// loader the project has (here jiti, in the repository's node_modules); a migration that does not compile is
// named; with no loader installed, one line says what to install.
import { cpSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { createTestDatabase, scratchDir, withClient } from '../helpers.js';
import { cli, fixture } from './cli.js';

const url = await createTestDatabase();
const env = { APP_DATABASE_URL: url, DATABASE_URL: url };
const project = (name: string) => fixture(`typescript/${name}`);
const count = (table: string) =>
  withClient(
    url,
    async (client) => (await client.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n as number,
  );

describe('through the project loader (jiti)', () => {
  test('knex: knexfile.ts found by itself, .ts migrations applied, then nothing pending', async () => {
    const cwd = project('knex');
    const { code, stdout, stderr } = await cli(['migrate', 'knex'], { env, cwd });
    expect(code, stderr).toBe(0);
    expect(stdout).toMatch(
      /✔ knex: applied 2 migrations \(batch 1\)\n {2}001_create_ts_widgets\.ts\n {2}002_seed_ts_widgets\.ts/,
    );
    expect(stderr).toContain('knexfile.ts');
    expect(await count('ts_widgets')).toBe(1);
    const pending = await cli(['pending', 'knex', '--knexfile', 'knexfile.ts', '--json'], { env, cwd });
    expect([pending.code, JSON.parse(pending.stdout)], pending.stderr).toEqual([0, []]);
  });

  test('kysely: .config/kysely.config.ts (what kysely init writes) and a .ts migration', async () => {
    const cwd = project('kysely');
    const before = await cli(['pending', 'kysely', '--json'], { env, cwd });
    expect([before.code, JSON.parse(before.stdout)], before.stderr).toEqual([3, ['001_create_ts_gadgets']]);
    const { code, stdout, stderr } = await cli(['migrate', 'kysely'], { env, cwd });
    expect(code, stderr).toBe(0);
    expect(stdout).toMatch(/✔ kysely: applied 1 migration\n {2}001_create_ts_gadgets/);
    expect(await count('ts_gadgets')).toBe(1);
  });

  test('a fleet with the TypeScript config: kysely --each-schema, then its dry run finds nothing pending', async () => {
    const cwd = project('kysely');
    const { code, stdout, stderr } = await cli(['migrate', 'kysely', '--each-schema', 'ts_tenant', '--json'], {
      env,
      cwd,
    });
    expect(code, stderr).toBe(0);
    expect(JSON.parse(stdout).results).toMatchObject([{ schema: 'ts_tenant', applied: ['001_create_ts_gadgets'] }]);
    expect(await count('ts_tenant.ts_gadgets')).toBe(1);
    const dry = await cli(['pending', 'kysely', '--each-schema', 'ts_tenant'], { env, cwd });
    expect([dry.code, dry.stdout], dry.stderr).toEqual([0, 'ts_tenant: up to date\n']);
  });

  test('typeorm: -d data-source.ts with migrations: [migrations/*.ts]', async () => {
    const cwd = project('typeorm');
    const { code, stdout, stderr } = await cli(['migrate', 'typeorm', '-d', 'data-source.ts'], { env, cwd });
    expect(code, stderr).toBe(0);
    expect(stdout).toMatch(
      /✔ typeorm: applied 2 migrations\n {2}CreateTsThings1700000000001\n {2}SeedTsThings1700000000002/,
    );
    expect(await count('ts_things')).toBe(2);
  });

  test('a .ts migration that does not compile: the failure names its file, exit 1, nothing applied', async () => {
    const { code, stderr } = await cli(['migrate', 'kysely'], { env, cwd: project('kysely-broken') });
    expect(code, stderr).toBe(1);
    expect(stderr).toMatch(/^error: kysely: migration migrations\/002_broken\.ts:5 failed: .*Unexpected token/m);
    expect(await withClient(url, (c) => c.query("SELECT to_regclass('ts_fine') AS t"))).toMatchObject({
      rows: [{ t: null }],
    });
  });
});

describe('with no loader installed', () => {
  // Outside the repository, and without NODE_PATH: neither jiti, tsx nor ts-node resolves from there.
  const outside = scratchDir('pgml-no-loader-');
  cpSync(fixture('typescript'), outside, { recursive: true });
  const cases: [string, string[]][] = [
    ['knex', ['migrate', 'knex']],
    ['kysely', ['migrate', 'kysely']],
    ['typeorm', ['pending', 'typeorm', '-d', 'data-source.ts']],
  ];
  test('a JavaScript knexfile with .ts migrations: the migration named, exit 2', async () => {
    const dir = join(outside, 'knex-js');
    cpSync(join(outside, 'knex', 'migrations'), join(dir, 'migrations'), { recursive: true });
    writeFileSync(
      join(dir, 'knexfile.cjs'),
      "module.exports = { client: 'pg', connection: process.env.APP_DATABASE_URL };\n",
    );
    const { code, stderr } = await cli(['pending', 'knex'], { env: { ...env, NODE_PATH: undefined }, cwd: dir });
    expect(code, stderr).toBe(2);
    expect(stderr).toMatch(/error: migrations\/001_create_ts_widgets\.ts is TypeScript: .*no TypeScript loader/);
  });

  test.each(cases)('%s: one line says what to install, exit 2', async (name, args) => {
    const { code, stderr } = await cli(args, { env: { ...env, NODE_PATH: undefined }, cwd: join(outside, name) });
    expect(code, stderr).toBe(2);
    expect(stderr).toMatch(
      /is TypeScript: Node \S+ cannot load it, and no TypeScript loader \(jiti, tsx or ts-node\) is installed/,
    );
    expect(stderr).toMatch(/npm install -D jiti \(or tsx\)/);
  });
});
