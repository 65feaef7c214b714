import { describe, expect, test } from 'vitest';
import { createTestDatabase } from '../helpers.js';
import { cli, fixture } from './cli.js';

// Every command that works on a database names it once on stderr, password masked, and where it came from:
// `[pg-migration-lock] Database: postgres://app:***@db:5432/app (from DATABASE_URL)`; --quiet prints none.

const DATABASE_LINE = /^\[pg-migration-lock\] Database: (.*)$/gm;

/** The Database lines of a run's stderr. */
const databaseLines = (stderr: string) => [...stderr.matchAll(DATABASE_LINE)].map((match) => match[1]);

/** The URL as the CLI shows it: the password masked. */
function shown(url: string): string {
  const masked = new URL(url);
  if (masked.password) masked.password = '***';
  return masked.toString().replace('%2A%2A%2A', '***');
}

const migrators: [migrator: string, args: string[], exitPending: number, source: string, cwd?: string][] = [
  [
    'knex',
    ['--knexfile', fixture('knex/knexfile.cjs')],
    3,
    'knexfile.cjs, environment "development", which reads DATABASE_URL',
  ],
  ['node-pg-migrate', ['-m', fixture('node-pg-migrate')], 3, 'DATABASE_URL'],
  ['drizzle', ['--migrations-folder', fixture('drizzle')], 3, 'DATABASE_URL'],
  ['typeorm', ['-d', fixture('typeorm/data-source.mjs')], 3, 'DATABASE_URL'],
  ['kysely', [], 3, 'DATABASE_URL', fixture('kysely-no-dialect-config')],
];

describe.each(migrators)('%s', (migrator, args, exitPending, source, cwd) => {
  test('pending and migrate each print one Database line; --quiet none', async () => {
    const url = await createTestDatabase();
    const env = { DATABASE_URL: url };
    const expected = `${shown(url)} (from ${source})`;

    const pending = await cli(['pending', migrator, ...args], { env, cwd });
    expect(pending.code, pending.stderr).toBe(exitPending);
    expect(databaseLines(pending.stderr)).toEqual([expected]);

    const quiet = await cli(['pending', migrator, ...args, '--quiet'], { env, cwd });
    expect(quiet.code, quiet.stderr).toBe(exitPending);
    expect(quiet.stderr).toBe('');

    const migrated = await cli(['migrate', migrator, ...args], { env, cwd });
    expect(migrated.code, migrated.stderr).toBe(0);
    expect(databaseLines(migrated.stderr)).toEqual([expected]);
    // Printed before anything else is said about the run.
    expect(migrated.stderr.indexOf('Database: ')).toBeLessThan(migrated.stderr.indexOf('Acquired'));

    const upToDate = await cli(['pending', migrator, ...args], { env, cwd });
    expect(upToDate.code, upToDate.stderr).toBe(0);
    expect(databaseLines(upToDate.stderr)).toEqual([expected]);
  });
});

test.each([
  ['run', ['run', '--', 'true']],
  ['status', ['status']],
  ['release', ['release', '--force', '--yes']],
])('%s: one Database line; --quiet none', async (_command, args) => {
  const url = await createTestDatabase();
  const ran = await cli(args, { env: { DATABASE_URL: url } });
  expect(ran.code, ran.stderr).toBe(0);
  expect(databaseLines(ran.stderr)).toEqual([`${shown(url)} (from DATABASE_URL)`]);
  const quiet = await cli([args[0]!, '--quiet', ...args.slice(1)], { env: { DATABASE_URL: url } });
  expect(quiet.code, quiet.stderr).toBe(0);
  expect(quiet.stderr).toBe('');
});

describe('kysely: a config that does not name the database (its own Kysely instance, a pool set up by PG* variables)', () => {
  const cwd = fixture('kysely-instance');

  test.each([
    ['its Kysely instance', []],
    ['a pg pool from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE', ['-e', 'pgenv']],
  ])('%s: the Database line names it as the server does', async (_what, flags) => {
    const url = new URL(await createTestDatabase());
    const env = {
      APP_DATABASE_URL: url.toString(),
      PGHOST: url.hostname,
      PGPORT: url.port,
      PGUSER: decodeURIComponent(url.username),
      PGPASSWORD: decodeURIComponent(url.password) || undefined,
      PGDATABASE: url.pathname.slice(1),
    };
    const expected = `postgres://${url.username}@${url.hostname}:${url.port}${url.pathname} (from kysely.config.mjs, as the server names it)`;
    for (const command of ['pending', 'migrate']) {
      const { code, stderr } = await cli([command, 'kysely', ...flags], { cwd, env });
      expect(code, stderr).toBe(command === 'pending' ? 3 : 0);
      expect(databaseLines(stderr)).toEqual([expected]);
    }
  });
});
