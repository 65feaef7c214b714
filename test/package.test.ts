import { execFileSync } from 'node:child_process';
import { expect, test } from 'vitest';

// The built package, loaded by Node the way users load it (through the exports map).
const node = (...args: string[]) => execFileSync(process.execPath, args, { encoding: 'utf8' }).trim();

test('require() works and loads no migrator', () => {
  const out = node(
    '-e',
    `const m = require('pg-migration-lock');
     const loaded = Object.keys(require.cache).filter((f) => /node_modules\\/(knex|node-pg-migrate|drizzle-orm|typeorm|kysely)\\//.test(f));
     console.log(JSON.stringify({ exports: Object.keys(m).sort(), key: String(m.DEFAULT_LOCK_KEY), loaded }));`,
  );
  const { exports, key, loaded } = JSON.parse(out);
  expect(exports).toEqual([
    'DEFAULT_LOCK_KEY',
    'MigrationLockBusyError',
    'MigrationLockError',
    'MigrationLockLostError',
    'MigrationLockTimeoutError',
    'getLockStatus',
    'lockKey',
    'releaseLock',
    'withMigrationLock',
  ]);
  expect(key).toBe('-4853655304891776800'); // ('x' || left(md5('pg-migration-lock'), 16))::bit(64)::bigint
  expect(loaded).toEqual([]);
});

test('import works, and the ESM and CJS builds agree', () => {
  const esm = node(
    '--input-type=module',
    '-e',
    `import { lockKey, MigrationLockBusyError, MigrationLockError } from 'pg-migration-lock';
     console.log(String(lockKey('x')), new MigrationLockBusyError('m', 1n) instanceof MigrationLockError);`,
  );
  const cjs = node('-e', `console.log(String(require('pg-migration-lock').lockKey('x')), true)`);
  expect(esm).toBe(cjs);
  expect(esm).toMatch(/^-?\d+ true$/);
});
