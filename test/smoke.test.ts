import { expect, test } from 'vitest';
import { withMigrationLock } from '../src/index.js';
import { createTestDatabase } from './helpers.js';

const url = await createTestDatabase();

test('smoke', async () => {
  const r = await withMigrationLock(url, 1n, async ({ client }) => (await client.query('select 1 as x')).rows[0].x, {
    logger: null,
  });
  expect(r).toBe(1);
});
