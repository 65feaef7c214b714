import { expect, test } from 'vitest';
import { appliedMigrations } from '../fixtures/adapters/race.mjs';
import { createTestDatabase, fixture, spawnNode } from '../helpers.js';

const [knexUrl, nodePgMigrateUrl, drizzleUrl, typeormUrl, kyselyUrl] = await Promise.all([
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
]);

const resultOf = (stdout: string) => {
  const line = stdout.split('\n').find((l) => l.startsWith('RESULT '));
  return line ? JSON.parse(line.slice(7)) : null;
};

test('with no migrator installed, everything loads, and an adapter names the package to install', async () => {
  const { exited } = spawnNode(fixture('adapters/missing.mjs'), [], {
    NODE_OPTIONS: `--import=${fixture('adapters/hide-migrators.mjs')}`,
  });
  const { code, stdout, stderr } = await exited;
  expect(stderr).toBe('');
  expect(code).toBe(0);
  expect(resultOf(stdout)).toEqual({
    loaded: ['function', 'function', 'function', 'function', 'function', 'function'],
    'node-pg-migrate': 'pg-migration-lock/node-pg-migrate needs node-pg-migrate: npm install node-pg-migrate',
    drizzle: 'pg-migration-lock/drizzle needs drizzle-orm: npm install drizzle-orm',
    typeorm: 'pg-migration-lock/typeorm needs typeorm: npm install typeorm',
    kysely: 'pg-migration-lock/kysely needs kysely: npm install kysely',
  });
});

test('the adapters work through require() (the CJS build)', async () => {
  const { exited } = spawnNode(fixture('adapters/require.cjs'), [], {
    KNEX_URL: knexUrl,
    NODE_PG_MIGRATE_URL: nodePgMigrateUrl,
    DRIZZLE_URL: drizzleUrl,
    TYPEORM_URL: typeormUrl,
    KYSELY_URL: kyselyUrl,
  });
  const { code, stdout, stderr } = await exited;
  expect(stderr).toBe('');
  expect(code).toBe(0);
  expect(resultOf(stdout)).toEqual({ knex: 3, 'node-pg-migrate': 3, drizzle: 'ok', typeorm: 3, kysely: 3 });
  expect(await appliedMigrations(drizzleUrl, 'drizzle')).toEqual({ total: 3, distinct: 3 });
  expect(await appliedMigrations(typeormUrl, 'typeorm')).toEqual({ total: 3, distinct: 3 });
  expect(await appliedMigrations(kyselyUrl, 'kysely')).toEqual({ total: 3, distinct: 3 });
});
