import { drizzle } from 'drizzle-orm/node-postgres';
import pg from 'pg';
import { expect, test } from 'vitest';
import { migrate } from '../../adapters/drizzle.js';
import { DEFAULT_LOCK_KEY, lockKey } from '../../src/index.js';
import { appliedMigrations, race } from '../fixtures/adapters/race.mjs';
import { createTestDatabase, fixture } from '../helpers.js';
import { expectAllSucceeded, expectExclusiveHoldings, expectMigratedOnLockSession, report } from './race-report.js';

const REPLICAS = 6;
const [lockedUrl, poolUrl, clientUrl] = await Promise.all([
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
]);
const migrationsFolder = fixture('drizzle/migrations');

test(`${REPLICAS} replicas through pg-migration-lock/drizzle (half over a Pool, half over a Client) apply each migration once`, async () => {
  const outcome = await race({
    migrator: 'drizzle',
    mode: 'locked',
    replicas: REPLICAS,
    databaseUrl: lockedUrl,
    args: (i) => [i % 2 ? 'client' : 'pool'],
  });
  report('drizzle', 'locked', outcome);
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  expect(await appliedMigrations(lockedUrl, 'drizzle')).toEqual({ total: 3, distinct: 3 });
  await expectMigratedOnLockSession(lockedUrl, DEFAULT_LOCK_KEY);
});

test('over a Pool of max 1: the migration runs on the one connection that holds the lock', async () => {
  const pool = new pg.Pool({ connectionString: poolUrl, max: 1 });
  try {
    await migrate(drizzle({ client: pool }), {
      migrationsFolder,
      lock: { logger: null, key: lockKey('drizzle-test') },
    });
    expect(await appliedMigrations(poolUrl, 'drizzle')).toEqual({ total: 3, distinct: 3 });
    const { rows } = await pool.query('SELECT advisory_keys FROM migration_session');
    expect(rows[0].advisory_keys).toEqual([lockKey('drizzle-test').toString()]);
    expect(pool.totalCount).toBe(1);
  } finally {
    await pool.end();
  }
});

test('over a Client: that client holds the lock and runs the migration, and stays open', async () => {
  const client = new pg.Client(clientUrl);
  await client.connect();
  try {
    let lockPid: number | undefined;
    await migrate(
      drizzle(client),
      { migrationsFolder },
      { logger: null, hooks: { onAcquired: (info) => (lockPid = info.pid) } },
    );
    const own = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    expect(lockPid).toBe(own);
    expect((await client.query('SELECT pid FROM migration_session')).rows).toEqual([{ pid: own }]);
    // Nothing pending: a second run is a no-op.
    await migrate(drizzle(client), { migrationsFolder, lock: { logger: null } });
    expect(await appliedMigrations(clientUrl, 'drizzle')).toEqual({ total: 3, distinct: 3 });
  } finally {
    await client.end();
  }
});

test('rejects what is not a drizzle node-postgres database, before connecting', async () => {
  await expect(migrate({} as never, { migrationsFolder })).rejects.toThrow(/drizzle node-postgres database/);
  await expect(migrate(drizzle.mock(), { migrationsFolder })).rejects.toThrow(/drizzle node-postgres database/);
});
