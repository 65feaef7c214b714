import { readFileSync } from 'node:fs';
import { describe, expect, inject, test } from 'vitest';
import { cli, fixture } from './cli.js';

// Exit codes of everything that fails before (or while) connecting: 2 for what the user can fix in the
// command line or configuration, 1 for a database that cannot be reached. Passwords never appear.

const SECRET = 'Sup3r-S3cret-pw';
const NOWHERE = `postgres://migrator:${SECRET}@127.0.0.1:1/app`;

describe('help and version', () => {
  test('--help lists every command with examples and the exit codes', async () => {
    const { code, stdout } = await cli(['--help']);
    expect(code).toBe(0);
    for (const command of ['run', 'migrate', 'pending', 'status', 'release'])
      expect(stdout).toMatch(new RegExp(`^  ${command} `, 'm'));
    expect(stdout).toContain('Examples:');
    expect(stdout).toMatch(/75 +lock not acquired/);
  });

  test.each([
    ['run'],
    ['migrate'],
    ['migrate', 'knex'],
    ['migrate', 'node-pg-migrate'],
    ['migrate', 'drizzle'],
    ['pending'],
    ['pending', 'knex'],
    ['pending', 'node-pg-migrate'],
    ['pending', 'drizzle'],
    ['status'],
    ['release'],
  ])('%s %s --help has examples and the global options', async (...command) => {
    const { code, stdout } = await cli([...command.filter(Boolean), '--help']);
    expect(code).toBe(0);
    expect(stdout).toContain('Examples:');
    expect(stdout).toContain('--database-url <url>');
  });

  test('--version prints the package version', async () => {
    const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8'));
    const { code, stdout } = await cli(['--version']);
    expect(code).toBe(0);
    expect(stdout.trim()).toBe(version);
  });
});

describe('usage errors exit 2', () => {
  const url = { env: { DATABASE_URL: NOWHERE } };
  test.each([
    ['an unknown flag', ['status', '--bogus'], /unknown option '--bogus'/],
    ['an unknown command', ['stauts'], /unknown command 'stauts'/],
    ['no command', [], /Usage: pg-migration-lock/],
    ['a key that is not a number', ['status', '--key', 'abc'], /--key <n>' argument 'abc' is invalid/],
    ['a key out of the 64-bit range', ['status', '--key', '9223372036854775808'], /is invalid/],
    ['a fractional key', ['--key', '1.5', 'status'], /is invalid/],
    ['--key with --name', ['status', '--key', '1', '--name', 'x'], /--key and --name/],
    ['an empty --name', ['status', '--name', ''], /--name must not be empty/],
    ['a duration without a unit', ['run', '--timeout', '30', '--', 'true'], /Expected a duration like/],
    ['a bad duration', ['run', '--timeout', '5x', '--', 'true'], /--timeout <duration>' argument '5x' is invalid/],
    ['run without a command', ['run'], /missing required argument 'cmd'/],
    ['run with an unknown flag before --', ['run', '--nowait', '--', 'true'], /unknown option '--nowait'/],
    ['migrate without a migrator', ['migrate'], /Usage: pg-migration-lock migrate/],
    ['an unknown migrator', ['migrate', 'prisma'], /unknown command 'prisma'/],
    ['release without --force', ['release'], /pass --force/],
  ])('%s', async (_what, args, message) => {
    const { code, stderr, stdout } = await cli(args, url);
    expect(code).toBe(2);
    expect(stderr + stdout).toMatch(message);
  });

  test('no database URL: the example URL is one to copy, with no password placeholder that gets masked', async () => {
    const { code, stderr } = await cli(['migrate', 'knex', '--knexfile', fixture('knex/knexfile.cjs')]);
    expect(code).toBe(2);
    expect(stderr).toContain('No database URL: pass --database-url or set DATABASE_URL');
    expect(stderr).toContain('Example: DATABASE_URL=postgres://user@host:5432/db pg-migration-lock status');
    expect(stderr).toContain('PGPASSWORD');
    expect(stderr).not.toContain('***');
  });

  test('an invalid database URL, shown without its password', async () => {
    const { code, stderr } = await cli(['status', '--database-url', `postgres://migrator:${SECRET}@db:port/app`]);
    expect(code).toBe(2);
    expect(stderr).toContain('Invalid database URL postgres://migrator:***@db:port/app');
    expect(stderr).not.toContain(SECRET);
  });

  test('a URL given to the wrong flag: the argument parser echoes it, without its password', async () => {
    const { code, stderr } = await cli(['status', '--key', NOWHERE]);
    expect(code).toBe(2);
    expect(stderr).toContain("argument 'postgres://migrator:***@127.0.0.1:1/app' is invalid");
    expect(stderr).not.toContain(SECRET);
  });

  test.each([
    ['node-pg-migrate', ['-m', fixture('node-pg-migrate')], 'node-pg-migrate'],
    ['drizzle', ['--migrations-folder', fixture('drizzle')], 'drizzle-orm'],
    ['typeorm', ['-d', fixture('typeorm/data-source.mjs')], 'typeorm'],
    ['kysely', [], 'kysely'],
  ])('migrate %s with the migrator not installed', async (migrator, flags, pkg) => {
    const hide = new URL('../fixtures/adapters/hide-migrators.mjs', import.meta.url).pathname;
    const { code, stderr } = await cli(['migrate', migrator, ...flags, '--database-url', NOWHERE], {
      env: { NODE_OPTIONS: `--import=${hide}` },
      // kysely-ctl's config is found from the working directory.
      cwd: migrator === 'kysely' ? fixture('kysely') : undefined,
    });
    expect(stderr).toContain(`npm install ${pkg}`);
    expect(code).toBe(2);
  });

  test('migrate drizzle with drizzle-orm not installed and no migrations folder: says what to install', async () => {
    const hide = new URL('../fixtures/adapters/hide-migrators.mjs', import.meta.url).pathname;
    // The working directory has no ./drizzle (drizzle-kit's default folder) either: installing comes first.
    const { code, stderr } = await cli(['migrate', 'drizzle', '--database-url', NOWHERE], {
      env: { NODE_OPTIONS: `--import=${hide}` },
      cwd: fixture('knex'),
    });
    expect(stderr).toContain('npm install drizzle-orm');
    expect(stderr).not.toContain('migrations folder not found');
    expect(code).toBe(2);
  });

  test('a URL that is not PostgreSQL', async () => {
    const { code, stderr } = await cli(['status', '--database-url', `mysql://root:${SECRET}@db/app`]);
    expect(code).toBe(2);
    expect(stderr).toMatch(/expected a postgres:\/\//);
    expect(stderr).not.toContain(SECRET);
  });

  test.each([
    [
      ['migrate', 'node-pg-migrate', '-m', 'no/such/dir'],
      /node-pg-migrate migrations directory not found: .*no\/such\/dir/,
    ],
    [['migrate', 'drizzle', '--migrations-folder', 'no/such/dir'], /drizzle migrations folder not found/],
    [['migrate', 'drizzle', '--migrations-folder', fixture('knex')], /No meta\/_journal.json/],
    [['migrate', 'knex', '--knexfile', 'no/such/knexfile.js'], /knexfile not found/],
    [
      ['migrate', 'knex', '--knexfile', fixture('knex/knexfile.cjs'), '--env', 'staging'],
      /has no "staging" environment \(it has: development, production\)/,
    ],
  ])('migrate: %s', async (args, message) => {
    const { code, stderr } = await cli(args, url);
    expect(code).toBe(2);
    expect(stderr).toMatch(message);
    expect(stderr.match(/error:/g)).toHaveLength(1);
  });

  test('migrate knex without any knexfile around', async () => {
    const { code, stderr } = await cli(['migrate', 'knex'], { ...url, cwd: '/' });
    expect(code).toBe(2);
    expect(stderr).toContain('No knexfile found');
  });
});

describe('database unreachable: exit 1, one message, no password', () => {
  test('nothing listens on the port (flag)', async () => {
    const { code, stderr, stdout } = await cli(['status', '--database-url', NOWHERE]);
    expect(code).toBe(1);
    expect(stderr).toMatch(
      /^error: Cannot connect to postgres:\/\/migrator:\*\*\*@127\.0\.0\.1:1\/app: .*ECONNREFUSED/m,
    );
    expect(stderr.match(/error:/g)).toHaveLength(1);
    expect(stderr + stdout).not.toContain(SECRET);
  });

  test.each([
    ['run', '--', 'true'],
    ['migrate', 'node-pg-migrate', '-m', fixture('node-pg-migrate')],
    ['release', '--force', '--yes'],
  ])('%s (DATABASE_URL)', async (...args) => {
    const { code, stderr, stdout } = await cli(args, { env: { DATABASE_URL: NOWHERE } });
    expect(code).toBe(1);
    expect(stderr).toContain('Cannot connect to postgres://migrator:***@127.0.0.1:1/app');
    expect(stderr + stdout).not.toContain(SECRET);
  });

  test('a wrong password', async () => {
    const url = new URL(inject('adminUrl'));
    url.password = SECRET;
    const { code, stderr, stdout } = await cli(['status', '--database-url', url.toString()]);
    expect(stderr + stdout).not.toContain(SECRET);
    // A server that trusts local connections accepts any password (.ci/run's second server may).
    if (code !== 0) {
      expect(code).toBe(1);
      expect(stderr).toMatch(/Cannot connect to .*:\*\*\*@.*password authentication failed/);
    }
  });

  test('a role that does not exist, its password in the URL and in a query parameter', async () => {
    const url = new URL(inject('adminUrl'));
    url.username = 'no_such_role';
    url.password = SECRET;
    url.searchParams.set('password', SECRET);
    const { code, stderr, stdout } = await cli(['status', '--database-url', url.toString()]);
    expect(code).toBe(1);
    expect(stderr).toMatch(/Cannot connect to postgres:\/\/no_such_role:\*\*\*@.*\?password=\*\*\*: .*no_such_role/);
    expect(stderr + stdout).not.toContain(SECRET);
  });
});
