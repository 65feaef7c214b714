import { writeFileSync } from 'node:fs';
import pg from 'pg';
import { afterAll, describe, expect, test } from 'vitest';
import { createTestDatabase, withClient } from '../helpers.js';
import { startPostgres } from '../postgres.mjs';
import { cli, fixture } from './cli.js';

// A URL without a password, against a server that asks for one: one line that says so and what to do, not
// pg's "SASL: SCRAM-SERVER-FIRST-MESSAGE: client password must be a string" (SCRAM) or the server's
// "empty password returned by client" (method `password`, as the suite's embedded server has it).

const HINT = 'the server asks for a password and the URL has none: add it (user:password@) or set PGPASSWORD';

/** The URL without its password. */
const withoutPassword = (url: string) => {
  const bare = new URL(url);
  bare.password = '';
  return bare.toString();
};

/** No password from anywhere but the URL: no PGPASSWORD, no ~/.pgpass. */
const noPasswordEnv = (url: string) => ({
  DATABASE_URL: withoutPassword(url),
  PGPASSWORD: undefined,
  PGPASSFILE: '/nonexistent/pgpass',
});

/** Whether the server lets this URL's user in with a wrong password (trust authentication). */
async function trusts(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: withoutPassword(url), password: 'not-the-password' });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.end();
    return true;
  } catch {
    return false;
  }
}

const commands: [name: string, args: string[], cwd?: string][] = [
  ['run', ['run', '--', 'true']],
  ['status', ['status']],
  ['migrate node-pg-migrate', ['migrate', 'node-pg-migrate', '-m', fixture('node-pg-migrate')]],
  ['pending drizzle', ['pending', 'drizzle', '--migrations-folder', fixture('drizzle')]],
  ['migrate typeorm', ['migrate', 'typeorm', '-d', fixture('typeorm/data-source.mjs')]],
  ['pending knex', ['pending', 'knex', '--knexfile', fixture('knex/knexfile.cjs')]],
  ['migrate kysely', ['migrate', 'kysely'], fixture('kysely-no-dialect-config')],
];

/** Exit 1 (as for any connection failure) and, besides the Database line, that one error line. */
async function expectOneClearLine(url: string, args: string[], cwd?: string): Promise<void> {
  const { code, stdout, stderr } = await cli(args, { env: noPasswordEnv(url), cwd });
  expect(code, stderr).toBe(1);
  expect(stdout).toBe('');
  const lines = stderr.split('\n').filter((line) => line && !line.startsWith('[pg-migration-lock] Database: '));
  expect(lines).toEqual([`error: Cannot connect to ${withoutPassword(url)}: ${HINT}`]);
  expect(stderr).not.toMatch(/SASL|empty password/);
}

const url = await createTestDatabase();
const trustAuth = await trusts(url);

describe('against the suite’s server (password authentication)', () => {
  test.skipIf(trustAuth).each(commands)(
    // On a trust-authentication server (e.g. TEST_DATABASE_URL at a local trust server) nobody is asked for a password.
    '%s: one clear line, exit 1 (skipped when the server trusts every connection)',
    async (_name, args, cwd) => {
      await expectOneClearLine(url, args, cwd);
    },
    // A CLI that hangs after the error (a socket left open) fails here rather than at the suite's 60 s.
    20_000,
  );
});

// A server of this file's own, whatever TEST_DATABASE_URL points at: its pg_hba.conf asks every connection
// for a SCRAM password.
const server = await startPostgres({ durable: false });
afterAll(() => server.stop());
await withClient(server.url, async (client) => {
  const { rows } = await client.query<{ hba_file: string }>('SHOW hba_file');
  writeFileSync(rows[0]!.hba_file, 'local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n');
  await client.query('SELECT pg_reload_conf()');
});

describe('against a server asking for SCRAM-SHA-256', () => {
  test.each(commands)(
    '%s: one clear line instead of pg’s SASL message, exit 1',
    async (_name, args, cwd) => {
      await expectOneClearLine(server.url, args, cwd);
    },
    20_000,
  );

  test('the hint works: with PGPASSWORD set, the URL without a password connects', async () => {
    const { code, stderr } = await cli(['status'], { env: { ...noPasswordEnv(server.url), PGPASSWORD: 'postgres' } });
    expect(code, stderr).toBe(0);
  });
});
