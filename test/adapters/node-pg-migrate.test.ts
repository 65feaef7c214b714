import { runner as plainRunner } from 'node-pg-migrate';
import pg from 'pg';
import { expect, test } from 'vitest';
import { runner } from '../../adapters/node-pg-migrate.js';
import { appliedMigrations, race } from '../fixtures/adapters/race.mjs';
import { createTestDatabase, fixture, lockRows, waitFor, withClient } from '../helpers.js';
import {
  expectAllSucceeded,
  expectCicRace,
  expectExclusiveHoldings,
  expectMigratedOnLockSession,
  report,
} from './race-report.js';

const REPLICAS = 6;
const PG_MIGRATE_LOCK_ID = 7241865325823964n;
const [lockedUrl, cicUrl, v8Url, interopUrl, exclusionUrl, clientUrl, v7Url] = await Promise.all([
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
]);
const MIGRATIONS = ['1700000000001_create-widgets', '1700000000002_slow-add-size', '1700000000003_index-name'];
const silent = { info() {}, warn() {}, error() {} };
const options = (url: string) => ({
  databaseUrl: url,
  dir: fixture('node-pg-migrate/migrations'),
  direction: 'up' as const,
  migrationsTable: 'pgmigrations',
  log: () => {},
});

test(`${REPLICAS} replicas through pg-migration-lock/node-pg-migrate all succeed and apply each migration once`, async () => {
  const outcome = await race({
    migrator: 'node-pg-migrate',
    mode: 'locked',
    replicas: REPLICAS,
    databaseUrl: lockedUrl,
  });
  report('node-pg-migrate', 'locked', outcome);
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  expect(outcome.results.flatMap((r) => r.result?.ran ?? []).sort()).toEqual(MIGRATIONS);
  expect(await appliedMigrations(lockedUrl, 'node-pg-migrate')).toEqual({ total: 3, distinct: 3 });
  await expectMigratedOnLockSession(lockedUrl, PG_MIGRATE_LOCK_ID);
});

test('CREATE INDEX CONCURRENTLY in a noTransaction() migration, while the other replicas wait', async () => {
  await expectCicRace('node-pg-migrate', cicUrl, { barrier: true });
});

test('node-pg-migrate 8.x: the same adapter, with `node-pg-migrate` resolving to 8.x', async () => {
  const outcome = await race({
    migrator: 'node-pg-migrate',
    mode: 'locked',
    replicas: 6,
    databaseUrl: v8Url,
    nodeArgs: ['--import', fixture('adapters/use-node-pg-migrate-v8.mjs')],
  });
  report('node-pg-migrate', 'locked', outcome, ' (8.x)');
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  for (const replica of outcome.results) expect(replica.result?.nodePgMigrate).toMatch(/node-pg-migrate-v8/);
  expect(outcome.results.flatMap((r) => r.result?.ran ?? []).sort()).toEqual(MIGRATIONS);
  expect(await appliedMigrations(v8Url, 'node-pg-migrate')).toEqual({ total: 3, distinct: 3 });
});

test('node-pg-migrate 7.x: the same adapter, with `node-pg-migrate` resolving to 7.x', async () => {
  const outcome = await race({
    migrator: 'node-pg-migrate',
    mode: 'locked',
    replicas: 6,
    databaseUrl: v7Url,
    nodeArgs: ['--import', fixture('adapters/use-node-pg-migrate-v7.mjs')],
  });
  report('node-pg-migrate', 'locked', outcome, ' (7.x)');
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  for (const replica of outcome.results) expect(replica.result?.nodePgMigrate).toMatch(/node-pg-migrate-v7/);
  expect(outcome.results.flatMap((r) => r.result?.ran ?? []).sort()).toEqual(MIGRATIONS);
  expect(await appliedMigrations(v7Url, 'node-pg-migrate')).toEqual({ total: 3, distinct: 3 });
});

test('while a plain node-pg-migrate run holds its lock, a wrapped run waits, then succeeds', async () => {
  const plain = plainRunner(options(interopUrl));
  await waitFor(async () => (await lockRows(interopUrl, PG_MIGRATE_LOCK_ID)).length > 0, 10_000, 'the plain run');
  const waiting: string[] = [];
  let waitedMs = 0;
  const wrapped = runner({
    ...options(interopUrl),
    lock: {
      logger: { ...silent, info: (m) => waiting.push(m) },
      hooks: { onAcquired: (info) => (waitedMs = info.waitedMs) },
    },
  });
  expect((await plain).map((m) => m.name)).toEqual(MIGRATIONS);
  expect(await wrapped).toEqual([]);
  expect(waiting[0]).toMatch(
    /^Waiting for migration lock 7241865325823964 \(node-pg-migrate's own key\), held by backend pid \d+/,
  );
  expect(waitedMs).toBeGreaterThan(0);
  expect(await appliedMigrations(interopUrl, 'node-pg-migrate')).toEqual({ total: 3, distinct: 3 });
});

test('while a wrapped run migrates, a plain node-pg-migrate run fails as it always does: they exclude each other', async () => {
  let acquired = false;
  const wrapped = runner({
    ...options(exclusionUrl),
    lock: { logger: null, hooks: { onAcquired: () => (acquired = true) } },
  });
  await waitFor(() => acquired, 10_000, 'the wrapped run');
  await expect(plainRunner(options(exclusionUrl))).rejects.toThrow('Another migration is already running');
  expect((await wrapped).map((m) => m.name)).toEqual(MIGRATIONS);
});

test('with `dbClient`, the lock is taken on that client, which stays open; `lockValue` is the default key', async () => {
  const client = new pg.Client(clientUrl);
  await client.connect();
  try {
    const { databaseUrl, ...rest } = options(clientUrl);
    const ran = await runner({ ...rest, dbClient: client, lockValue: 4242, lock: { logger: null } });
    expect(ran.map((m) => m.name)).toEqual(MIGRATIONS);
    const { rows } = await client.query('SELECT pid, advisory_keys FROM migration_session');
    expect(rows[0].advisory_keys).toEqual(['4242']);
    expect(rows[0].pid).toBe((await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid);
    expect(await lockRows(clientUrl, 4242n)).toEqual([]);
  } finally {
    await client.end();
  }
});

test('rejects missing connection options before connecting', async () => {
  const { databaseUrl, ...rest } = options(clientUrl);
  await expect(runner(rest as never)).rejects.toThrow('you must provide either a databaseUrl or a dbClient');
});

test.each([
  ['the default key', undefined],
  ['a key of its own (node-pg-migrate then takes its own lock too)', 999n],
])(
  'a failing migration rejects with its own error; the session is rolled back, unlocked and given back: %s',
  async (_, key) => {
    const url = await createTestDatabase();
    const pool = new pg.Pool({ connectionString: url, max: 1 });
    const warnings: string[] = [];
    try {
      const error = await runner({
        dbClient: pool as never,
        dir: fixture('node-pg-migrate/migrations-failing'),
        direction: 'up',
        migrationsTable: 'pgmigrations',
        log: () => {},
        lock: { key, logger: { ...silent, warn: (m: string) => warnings.push(m) } },
      }).catch((err: unknown) => err);
      expect(String(error)).toMatch(/division by zero/);
      expect(warnings).toEqual([]);
      // Not destroyed: the unlock went through on a clean session.
      expect([pool.totalCount, pool.idleCount]).toEqual([1, 1]);
      expect(await lockRows(url, PG_MIGRATE_LOCK_ID)).toEqual([]);
      expect(await lockRows(url, 999n)).toEqual([]);
      await withClient(url, async (client) => {
        expect((await client.query(`SELECT to_regclass('half_done') AS t`)).rows[0].t).toBeNull();
      });
    } finally {
      await pool.end();
    }
  },
);
