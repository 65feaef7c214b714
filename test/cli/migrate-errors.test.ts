import { describe, expect, test } from 'vitest';
import { DEFAULT_LOCK_KEY, lockKey } from '../../src/index.js';
import { createTestDatabase, lockRows, withClient } from '../helpers.js';
import { cli, fixture } from './cli.js';

// Every migrate failure ends with one line naming the migrator, the migration file and the cause, without
// noise from the clean-up (node-pg-migrate's own unlock in the aborted transaction), also with -q.
// And nothing is left half-applied or locked.

const failing = (name: string) => fixture(`failing/${name}`);

const CASES: [string, string[], RegExp, string, bigint, string?][] = [
  [
    'knex, a syntax error in a migration',
    ['knex', '--knexfile', failing('knex-syntax/knexfile.cjs')],
    /^error: knex: migration migrations\/002_syntax_error\.cjs:3 failed: SyntaxError: missing \) after argument list$/,
    'failing_ok',
    DEFAULT_LOCK_KEY,
  ],
  [
    'knex, a failing statement',
    ['knex', '--knexfile', failing('knex-sql/knexfile.cjs')],
    /^error: knex: migration migrations\/001_divide\.cjs failed: division by zero \(SQLSTATE 22012\) in: select 1\/0$/,
    'failing_knex_half',
    DEFAULT_LOCK_KEY,
  ],
  [
    'knex, a failing statement over several lines (the server message comes after the whole statement)',
    ['knex', '--knexfile', failing('knex-multiline/knexfile.cjs')],
    /^error: knex: migration migrations\/20250228000022_version_2\.cjs failed: operator class "gin_trgm_ops" does not exist for access method "gin" \(SQLSTATE 42704\) in: CREATE INDEX failing_knex_trgm_name ON failing_knex_trgm USING gin \(name gin_trgm_ops\)$/,
    'failing_knex_trgm',
    DEFAULT_LOCK_KEY,
  ],
  [
    'node-pg-migrate, default key',
    ['node-pg-migrate', '-m', failing('node-pg-migrate'), '-t', 'pgm_default'],
    /^error: node-pg-migrate: migration .*failing\/node-pg-migrate\/1700000000002_divide\.cjs failed: division by zero \(SQLSTATE 22012\) in: SELECT 1\/0;$/,
    'failing_npm_half',
    7241865325823964n,
  ],
  [
    'node-pg-migrate, a key of its own (node-pg-migrate also locks, and fails to unlock)',
    ['node-pg-migrate', '-m', failing('node-pg-migrate'), '-t', 'pgm_named', '--name', 'npm-errors'],
    /^error: node-pg-migrate: migration .*failing\/node-pg-migrate\/1700000000002_divide\.cjs failed: division by zero \(SQLSTATE 22012\) in: SELECT 1\/0;$/,
    'failing_npm_half',
    lockKey('npm-errors'),
  ],
  [
    'drizzle, a failing statement',
    ['drizzle', '--migrations-folder', failing('drizzle'), '--migrations-table', 'dz_errors'],
    /^error: drizzle: migration .*failing\/drizzle\/0001_divide\.sql failed: division by zero \(SQLSTATE 22012\) in: SELECT 1\/0;$/,
    'failing_dz_half',
    DEFAULT_LOCK_KEY,
  ],
  [
    'typeorm, a failing statement over several lines',
    ['typeorm', '-d', failing('typeorm/data-source.mjs')],
    /^error: typeorm: migration Divide1700000000002 failed: division by zero \(SQLSTATE 22012\) in: SELECT 1\/0$/,
    'failing_typeorm_half',
    DEFAULT_LOCK_KEY,
  ],
  [
    'kysely, a failing statement',
    ['kysely'],
    /^error: kysely: migration .*migrations\/002_divide\.mjs:4 failed: division by zero \(SQLSTATE 22012\) in: SELECT 1\/0$/,
    'failing_kysely_half',
    DEFAULT_LOCK_KEY,
    failing('kysely'),
  ],
];

describe.each([[[]], [['-q']]])('migrate %j', (extra: string[]) => {
  test.each(CASES)('%s', async (_what, args, lastLine, halfTable, key, cwd) => {
    const url = await createTestDatabase();
    const { code, stdout, stderr } = await cli(['migrate', ...args, ...extra], { env: { DATABASE_URL: url }, cwd });
    expect(code).toBe(1);
    const lines = stderr.trimEnd().split('\n');
    expect(lines.at(-1)).toMatch(lastLine);
    expect(lines.filter((line) => line.startsWith('error:'))).toHaveLength(1);
    expect(stderr).not.toMatch(/pg_advisory_unlock|current transaction is aborted|warning:/);
    if (extra.includes('-q')) {
      expect(stdout).toBe('');
      expect(stderr).not.toContain('[pg-migration-lock]');
    }
    // The failing migration left nothing behind, and the lock is free.
    const { rows } = await withClient(url, (client) => client.query('SELECT to_regclass($1) AS t', [halfTable]));
    expect(rows[0].t).toBeNull();
    expect(await lockRows(url, key)).toEqual([]);
  });
});
