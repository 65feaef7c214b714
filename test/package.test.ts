import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, test } from 'vitest';

// The built package, loaded by Node the way users load it (through the exports map).
const dist = fileURLToPath(new URL('../dist', import.meta.url));
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
    'KNOWN_KEYS',
    'MigrationLockBusyError',
    'MigrationLockError',
    'MigrationLockLostError',
    'MigrationLockTimeoutError',
    'fleetKey',
    'fleetTarget',
    'getLockStatus',
    'lockKey',
    'migrateEach',
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

test('postgres.js: importing the core loads no `postgres`, and no declaration file needs it installed', () => {
  const out = node(
    '--input-type=module',
    '-e',
    `import { createRequire } from 'node:module';
     await import('pg-migration-lock');
     await import('pg-migration-lock/drizzle');
     const require = createRequire(import.meta.url);
     require('pg-migration-lock');
     const loaded = Object.keys(require.cache).filter((f) => /node_modules\\/postgres\\//.test(f));
     console.log(JSON.stringify(loaded));`,
  );
  expect(JSON.parse(out)).toEqual([]);
  // ESM imports are not in require.cache: with 'postgres' made unresolvable, any import of it would throw.
  const esm = node(
    '--input-type=module',
    '-e',
    `import { register } from 'node:module';
     register(${JSON.stringify(new URL('./fixtures/adapters/resolve-hooks.mjs', import.meta.url).href)}, { data: { hide: ['postgres'] } });
     const core = await import('pg-migration-lock');
     await import('pg-migration-lock/drizzle');
     console.log(typeof core.withMigrationLock);`,
  );
  expect(esm).toBe('function');
  // The types users get are our own structural ones: no declaration file imports 'postgres'.
  const declarations = readdirSync(dist).filter((f) => /\.d\.c?ts$/.test(f));
  expect(declarations.length).toBeGreaterThan(0);
  for (const file of declarations) {
    expect(readFileSync(join(dist, file), 'utf8')).not.toMatch(/from ['"]postgres['"]|import\(['"]postgres['"]\)/);
  }
});
