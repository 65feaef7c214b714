import { DataSource } from 'typeorm';
import { expect, test } from 'vitest';
import { pending, runMigrations } from '../../adapters/typeorm.js';
import { DEFAULT_LOCK_KEY, lockKey, MigrationLockLostError, withMigrationLock } from '../../src/index.js';
import { appliedMigrations, race } from '../fixtures/adapters/race.mjs';
import { createTestDatabase, fixture, lockRows, waitFor, withClient } from '../helpers.js';
import {
  expectAllSucceeded,
  expectExclusiveHoldings,
  expectMigratedOnLockSession,
  expectUpToDateRace,
  report,
} from './race-report.js';

const REPLICAS = 6;
const [lockedUrl, eachUrl, noneUrl, v03Url, cicUrl, pendingUrl, waitUrl, lostUrl, fakeUrl] = await Promise.all([
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
]);
const MIGRATIONS = ['CreateWidgets1700000000001', 'SlowAddSize1700000000002', 'IndexName1700000000003'];

/** `in_transaction` of the session that ran the slow migration (recorded by the migration itself). */
const ranInTransaction = (url: string) =>
  withClient(url, async (client) => (await client.query('SELECT in_transaction FROM migration_session')).rows[0]);

function dataSourceFor(url: string, folder = 'migrations'): DataSource {
  return new DataSource({
    type: 'postgres',
    url,
    migrations: [fixture(`typeorm/${folder}/*.mjs`)],
    logging: false,
  });
}

test(`${REPLICAS} replicas through pg-migration-lock/typeorm (transaction 'all') apply each migration once`, async () => {
  const outcome = await race({ migrator: 'typeorm', mode: 'locked', replicas: REPLICAS, databaseUrl: lockedUrl });
  report('typeorm', 'locked', outcome);
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  expect(outcome.results.flatMap((r) => r.result?.ran ?? []).sort()).toEqual([...MIGRATIONS].sort());
  expect(await appliedMigrations(lockedUrl, 'typeorm')).toEqual({ total: 3, distinct: 3 });
  await expectMigratedOnLockSession(lockedUrl, DEFAULT_LOCK_KEY);
  expect(await ranInTransaction(lockedUrl)).toEqual({ in_transaction: true });
});

test(`${REPLICAS} replicas on the up-to-date database: none takes or waits for the lock`, async () => {
  await expectUpToDateRace('typeorm', lockedUrl, REPLICAS);
});

test.each([
  ['each', eachUrl, true],
  ['none', noneUrl, false],
] as const)(
  "transaction '%s': 6 replicas, each migration once, on the lock session",
  async (transaction, url, inTransaction) => {
    const outcome = await race({
      migrator: 'typeorm',
      mode: 'locked',
      replicas: 6,
      databaseUrl: url,
      args: () => ['migrations', transaction],
    });
    report('typeorm', 'locked', outcome, ` (transaction '${transaction}')`);
    expectExclusiveHoldings(outcome);
    expectAllSucceeded(outcome);
    expect(outcome.results.flatMap((r) => r.result?.ran ?? []).sort()).toEqual([...MIGRATIONS].sort());
    expect(await appliedMigrations(url, 'typeorm')).toEqual({ total: 3, distinct: 3 });
    await expectMigratedOnLockSession(url, DEFAULT_LOCK_KEY);
    expect(await ranInTransaction(url)).toEqual({ in_transaction: inTransaction });
  },
);

test('TypeORM 0.3: the same adapter, with `typeorm` resolving to 0.3.x', async () => {
  const outcome = await race({
    migrator: 'typeorm',
    mode: 'locked',
    replicas: 6,
    databaseUrl: v03Url,
    nodeArgs: ['--import', fixture('adapters/use-typeorm-v03.mjs')],
    args: () => ['migrations', 'each'],
  });
  report('typeorm', 'locked', outcome, ' (0.3.x)');
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  for (const replica of outcome.results) expect(replica.result?.typeorm).toMatch(/typeorm-v03/);
  expect(outcome.results.flatMap((r) => r.result?.ran ?? []).sort()).toEqual([...MIGRATIONS].sort());
  expect(await appliedMigrations(v03Url, 'typeorm')).toEqual({ total: 3, distinct: 3 });
  await expectMigratedOnLockSession(v03Url, DEFAULT_LOCK_KEY);
});

test("CREATE INDEX CONCURRENTLY (a migration with `transaction = false`, mode 'each') while 4 replicas wait", async () => {
  const outcome = await race({
    migrator: 'typeorm',
    mode: 'locked',
    replicas: 5,
    databaseUrl: cicUrl,
    args: () => ['migrations-cic', 'each'],
  });
  report('typeorm', 'locked', outcome, ' (CREATE INDEX CONCURRENTLY)');
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  expect(outcome.results.filter((r) => r.result?.waited).length).toBeGreaterThan(0);
  expect(await appliedMigrations(cicUrl, 'typeorm')).toEqual({ total: 2, distinct: 2 });
  await withClient(cicUrl, async (client) => {
    const index = await client.query(`SELECT indisvalid FROM pg_index WHERE indexrelid = 'gadgets_name_idx'::regclass`);
    expect(index.rows).toEqual([{ indisvalid: true }]);
  });
});

test('pending() lists what runMigrations would apply and changes nothing; up to date, runMigrations does not queue', async () => {
  const dataSource = await dataSourceFor(pendingUrl).initialize();
  try {
    expect(await pending(dataSource)).toEqual(MIGRATIONS);
    // No migrations table was created.
    expect(await appliedMigrations(pendingUrl, 'typeorm')).toEqual({ total: 0, distinct: 0 });

    const acquired: number[] = [];
    const lock = { logger: null, key: lockKey('typeorm-test'), hooks: { onAcquired: () => acquired.push(1) } };
    const applied = await runMigrations(dataSource, { lock });
    expect(applied.map((m) => m.name)).toEqual(MIGRATIONS);
    expect(acquired).toHaveLength(1);
    expect(await pending(dataSource)).toEqual([]);

    // Nothing pending: returns what bare TypeORM returns ([]) without touching the lock, even while it is held.
    await withMigrationLock(
      pendingUrl,
      lockKey('typeorm-test'),
      async () => {
        expect(await runMigrations(dataSource, { lock: { ...lock, wait: false } })).toEqual([]);
      },
      { logger: null },
    );
    expect(acquired).toHaveLength(1);
    // The query runner's connection went back to TypeORM's pool, no lock left on it.
    const held = await dataSource.query(
      `SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    );
    expect(held).toEqual([{ n: 0 }]);
  } finally {
    await dataSource.destroy();
  }
});

test('a replica queued while another migrates re-checks at the release and leaves without the lock', async () => {
  const dataSource = await dataSourceFor(waitUrl).initialize();
  try {
    const events: string[] = [];
    // "Another replica" holds the lock; this process's replica is started outside its fn (a call nested in
    // the holder's own fn, on the same key, would be refused as one that waits for itself).
    let release!: () => void;
    let held!: () => void;
    const holding = withMigrationLock(
      waitUrl,
      DEFAULT_LOCK_KEY,
      async () => {
        held();
        await new Promise<void>((resolve) => (release = resolve));
        // Meanwhile the other replica applied everything.
        const other = await dataSourceFor(waitUrl).initialize();
        await other.runMigrations();
        await other.destroy();
      },
      { logger: null },
    );
    await new Promise<void>((resolve) => (held = resolve));
    const queued = runMigrations(dataSource, {
      lock: {
        logger: null,
        hooks: { onWaiting: () => events.push('waiting'), onAcquired: () => events.push('acquired') },
      },
    });
    await waitFor(() => events.includes('waiting'), 10_000, 'the replica to queue');
    release();
    await holding;
    const result = { queued };
    expect(await result.queued).toEqual([]);
    expect(events).toEqual(['waiting']);
    expect(await appliedMigrations(waitUrl, 'typeorm')).toEqual({ total: 3, distinct: 3 });
  } finally {
    await dataSource.destroy();
  }
});

test("fake: TypeORM's own option, under the lock: recorded as run, not run", async () => {
  const dataSource = await dataSourceFor(fakeUrl).initialize();
  try {
    // TypeORM's own fake run returns no Migration (it records them and `continue`s): so does this.
    expect(await runMigrations(dataSource, { fake: true, lock: { logger: null } })).toEqual([]);
    expect(await appliedMigrations(fakeUrl, 'typeorm')).toEqual({ total: 3, distinct: 3 });
    expect(await dataSource.query(`SELECT to_regclass('widgets') AS t`)).toEqual([{ t: null }]);
  } finally {
    await dataSource.destroy();
  }
});

test('the lock session terminated mid-migration: MigrationLockLostError, the transaction rolled back', async () => {
  class Slow1700000000009 {
    async up(queryRunner: { query(sql: string): Promise<unknown> }) {
      await queryRunner.query('CREATE TABLE half_done (id int)');
      await queryRunner.query('SELECT pg_sleep(10)');
    }
    async down() {}
  }
  const dataSource = await new DataSource({
    type: 'postgres',
    url: lostUrl,
    migrations: [Slow1700000000009],
  }).initialize();
  try {
    // Settled into a value at once: it rejects while the test is still terminating the session.
    const outcome = runMigrations(dataSource, { lock: { logger: null } }).then(
      () => 'resolved',
      (error: unknown) => error,
    );
    const holderPid = await waitFor(
      async () => (await lockRows(lostUrl, DEFAULT_LOCK_KEY))[0]?.pid,
      10_000,
      'the lock',
    );
    await withClient(lostUrl, (client) => client.query('SELECT pg_terminate_backend($1)', [holderPid]));
    expect(await outcome).toBeInstanceOf(MigrationLockLostError);
    expect(await lockRows(lostUrl, DEFAULT_LOCK_KEY)).toEqual([]);
    // Nothing of the migration stayed, and TypeORM's pool still works (the dead connection left it).
    expect(await dataSource.query(`SELECT to_regclass('half_done') AS t`)).toEqual([{ t: null }]);
    expect(await pending(dataSource)).toEqual(['Slow1700000000009']);
  } finally {
    await dataSource.destroy();
  }
});

test('rejects what is not an initialized postgres DataSource, before connecting', async () => {
  await expect(runMigrations({} as never)).rejects.toThrow(/TypeORM DataSource of type 'postgres'/);
  await expect(
    runMigrations(new DataSource({ type: 'postgres', url: 'postgres://nobody@127.0.0.1:1/none' })),
  ).rejects.toThrow(/not initialized/);
  // (A real mysql DataSource needs the mysql driver installed: this has its shape.)
  const shaped = { options: { type: 'postgres' }, isInitialized: true, createQueryRunner() {} };
  await expect(runMigrations(shaped as never, { lock: { key: 2n ** 63n } })).rejects.toBeInstanceOf(RangeError);
  const mysql = { options: { type: 'mysql' }, isInitialized: true, createQueryRunner() {} };
  await expect(pending(mysql as never)).rejects.toThrow(/got a 'mysql' data source/);
});
