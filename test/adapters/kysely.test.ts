import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Kysely, PostgresDialect, sql } from 'kysely';
import { FileMigrationProvider, Migrator as KyselyMigrator, NO_MIGRATIONS } from 'kysely/migration';
import pg from 'pg';
import { afterAll, expect, test } from 'vitest';
import { KYSELY_LOCK_KEY, Migrator } from '../../adapters/kysely.js';
import { MigrationLockBusyError, withMigrationLock } from '../../src/index.js';
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
const [lockedUrl, cicUrl, v028Url, plainFirstUrl, wrappedFirstUrl, pendingUrl, downUrl, lostUrl] = await Promise.all([
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
]);
const MIGRATIONS = ['001_create_widgets', '002_slow_add_size', '003_index_name'];

const dbs: Kysely<unknown>[] = [];
afterAll(() => Promise.all(dbs.map((db) => db.destroy())));
function kyselyFor(url: string, max = 2): Kysely<unknown> {
  const pool = new pg.Pool({ connectionString: url, max });
  // As pg asks of every app: a connection that dies (a test terminates one) must not crash the process. pg
  // emits the death of a checked-out connection on that client, and kysely (bare or wrapped) listens to none.
  pool.on('error', () => {});
  pool.on('connect', (client) => client.on('error', () => {}));
  const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
  dbs.push(db);
  return db;
}
const provider = (folder = 'migrations') =>
  new FileMigrationProvider({ fs, path, migrationFolder: fixture(`kysely/${folder}`) });

test(`${REPLICAS} replicas through pg-migration-lock/kysely (half over pg, half over postgres.js) apply each migration once, on the lock session`, async () => {
  const outcome = await race({
    migrator: 'kysely',
    mode: 'locked',
    replicas: REPLICAS,
    databaseUrl: lockedUrl,
    args: (i) => ['migrations', i % 2 ? 'postgres' : 'pg'],
  });
  report('kysely', 'locked', outcome);
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  expect(outcome.results.flatMap((r) => r.result?.ran ?? []).sort()).toEqual(MIGRATIONS);
  expect(await appliedMigrations(lockedUrl, 'kysely')).toEqual({ total: 3, distinct: 3 });
  // kysely's own lock on the same session is re-entrant: the session holds that one key.
  await expectMigratedOnLockSession(lockedUrl, KYSELY_LOCK_KEY);
});

test(`${REPLICAS} replicas on the up-to-date database: none takes or waits for the lock`, async () => {
  await expectUpToDateRace('kysely', lockedUrl, REPLICAS);
});

test('CREATE INDEX CONCURRENTLY (disableTransactions) while 4 replicas wait: no deadlock, 0 failures', async () => {
  const outcome = await race({
    migrator: 'kysely',
    mode: 'locked',
    replicas: 5,
    databaseUrl: cicUrl,
    args: () => ['migrations-cic'],
  });
  report('kysely', 'locked', outcome, ' (CREATE INDEX CONCURRENTLY)');
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  expect(outcome.results.filter((r) => r.result?.waited).length).toBeGreaterThan(0);
  expect(await appliedMigrations(cicUrl, 'kysely')).toEqual({ total: 2, distinct: 2 });
  await withClient(cicUrl, async (client) => {
    const index = await client.query(`SELECT indisvalid FROM pg_index WHERE indexrelid = 'gadgets_name_idx'::regclass`);
    expect(index.rows).toEqual([{ indisvalid: true }]);
  });
});

test('kysely 0.28: the same adapter, with `kysely` resolving to 0.28.x', async () => {
  const outcome = await race({
    migrator: 'kysely',
    mode: 'locked',
    replicas: 6,
    databaseUrl: v028Url,
    nodeArgs: ['--import', fixture('adapters/use-kysely-v028.mjs')],
  });
  report('kysely', 'locked', outcome, ' (0.28.x)');
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  for (const replica of outcome.results) expect(replica.result?.kysely).toMatch(/kysely-v028/);
  expect(outcome.results.flatMap((r) => r.result?.ran ?? []).sort()).toEqual(MIGRATIONS);
  expect(await appliedMigrations(v028Url, 'kysely')).toEqual({ total: 3, distinct: 3 });
  await expectMigratedOnLockSession(v028Url, KYSELY_LOCK_KEY);
});

test('while a plain kysely run holds its lock, a wrapped run waits, then finds nothing to do', async () => {
  const plain = new KyselyMigrator({ db: kyselyFor(plainFirstUrl), provider: provider() }).migrateToLatest();
  await waitFor(async () => (await lockRows(plainFirstUrl, KYSELY_LOCK_KEY)).length > 0, 10_000, 'the plain run');
  let waited = false;
  const wrapped = new Migrator({
    db: kyselyFor(plainFirstUrl),
    provider: provider(),
    lock: { logger: null, pollIntervalMs: 50, hooks: { onWaiting: () => (waited = true) } },
  }).migrateToLatest();
  const [plainResult, wrappedResult] = await Promise.all([plain, wrapped]);
  expect(plainResult.error).toBeUndefined();
  expect(plainResult.results?.map((r) => r.status)).toEqual(['Success', 'Success', 'Success']);
  expect(wrappedResult).toEqual({ results: [] });
  // It found kysely's lock held by the plain run and waited (then took it, or left when nothing was pending).
  expect(waited).toBe(true);
  expect(await appliedMigrations(plainFirstUrl, 'kysely')).toEqual({ total: 3, distinct: 3 });
});

test('while a wrapped run holds the lock, a plain kysely run waits, then finds nothing to do', async () => {
  let acquired = false;
  const wrapped = new Migrator({
    db: kyselyFor(wrappedFirstUrl),
    provider: provider(),
    lock: { logger: null, hooks: { onAcquired: () => (acquired = true) } },
  }).migrateToLatest();
  await waitFor(() => acquired, 10_000, 'the wrapped run');
  const plain = await new KyselyMigrator({ db: kyselyFor(wrappedFirstUrl), provider: provider() }).migrateToLatest();
  const wrappedResult = await wrapped;
  expect(wrappedResult.error).toBeUndefined();
  expect(wrappedResult.results?.map((r) => r.migrationName)).toEqual(MIGRATIONS);
  expect(plain).toEqual({ results: [] });
  expect(await appliedMigrations(wrappedFirstUrl, 'kysely')).toEqual({ total: 3, distinct: 3 });
});

test('pending() agrees with kysely and changes nothing; up to date, migrateToLatest does not queue', async () => {
  const db = kyselyFor(pendingUrl);
  const migrator = new Migrator({ db, provider: provider(), lock: { logger: null } });
  expect(await migrator.pending()).toEqual(MIGRATIONS);
  // Nothing was created.
  await withClient(pendingUrl, async (client) => {
    const { rows } = await client.query(`SELECT count(*)::int AS n FROM pg_tables WHERE tablename LIKE 'kysely%'`);
    expect(rows).toEqual([{ n: 0 }]);
  });
  expect((await migrator.migrateUp()).results?.map((r) => r.migrationName)).toEqual(['001_create_widgets']);
  expect(await migrator.pending()).toEqual(MIGRATIONS.slice(1));
  expect((await migrator.migrateToLatest()).results?.map((r) => r.migrationName)).toEqual(MIGRATIONS.slice(1));
  expect(await migrator.pending()).toEqual([]);
  expect((await migrator.getMigrations()).map((m) => m.executedAt instanceof Date)).toEqual([true, true, true]);

  // Up to date: { results: [] } at once, even while another session holds the lock.
  await withMigrationLock(
    pendingUrl,
    KYSELY_LOCK_KEY,
    async () => {
      const busy = new Migrator({ db, provider: provider(), lock: { logger: null, wait: false } });
      expect(await busy.migrateToLatest()).toEqual({ results: [] });
      expect(await busy.migrateUp()).toEqual({ results: [] });
      // Going down needs the lock: a lock error comes back as kysely's `error`, like its own.
      const down = await busy.migrateDown();
      expect(down.error).toBeInstanceOf(MigrationLockBusyError);
    },
    { logger: null },
  );

  // A migration the database knows but the provider lacks: the same error as kysely's own.
  const fewer = {
    async getMigrations() {
      const all = await provider().getMigrations();
      return { '001_create_widgets': all['001_create_widgets']!, '003_index_name': all['003_index_name']! };
    },
  };
  const ours = new Migrator({ db, provider: fewer, lock: { logger: null } });
  await expect(ours.pending()).rejects.toThrow(
    'corrupted migrations: previously executed migration 002_slow_add_size is missing',
  );
  const theirs = await new KyselyMigrator({ db, provider: fewer }).migrateToLatest();
  expect(String(theirs.error)).toContain('previously executed migration 002_slow_add_size is missing');
  expect(String((await ours.migrateToLatest()).error)).toEqual(String(theirs.error));
});

test('migrateDown and migrateTo(NO_MIGRATIONS) run under the lock, on the lock session', async () => {
  const db = kyselyFor(downUrl);
  const pids: number[] = [];
  const migrator = new Migrator({
    db,
    provider: provider(),
    lock: { logger: null, hooks: { onAcquired: (info) => pids.push(info.pid) } },
  });
  expect((await migrator.migrateToLatest()).error).toBeUndefined();
  const sessionPid = await withClient(
    downUrl,
    async (c) => (await c.query('SELECT pid FROM migration_session')).rows[0].pid,
  );
  expect(sessionPid).toBe(pids[0]);
  const down = await migrator.migrateDown();
  expect(down).toEqual({ results: [{ migrationName: '003_index_name', direction: 'Down', status: 'Success' }] });
  const none = await migrator.migrateTo(NO_MIGRATIONS);
  expect(none.results?.map((r) => `${r.direction} ${r.migrationName} ${r.status}`)).toEqual([
    'Down 002_slow_add_size Success',
    'Down 001_create_widgets Success',
  ]);
  expect(pids).toHaveLength(3);
  expect(await appliedMigrations(downUrl, 'kysely')).toEqual({ total: 0, distinct: 0 });
  // No advisory lock is left on any connection of the pool.
  expect(await lockRows(downUrl, KYSELY_LOCK_KEY)).toEqual([]);
});

test('the lock session terminated mid-migration: kysely reports the error, its transaction rolled back', async () => {
  const db = kyselyFor(lostUrl);
  const slow = {
    async getMigrations() {
      return {
        '001_slow': {
          async up(trx: Kysely<unknown>) {
            await sql`CREATE TABLE half_done (id int)`.execute(trx);
            await sql`SELECT pg_sleep(10)`.execute(trx);
          },
        },
      };
    },
  };
  const run = new Migrator({ db, provider: slow, lock: { logger: null } }).migrateToLatest();
  const holderPid = await waitFor(async () => (await lockRows(lostUrl, KYSELY_LOCK_KEY))[0]?.pid, 10_000, 'the lock');
  await withClient(lostUrl, (client) => client.query('SELECT pg_terminate_backend($1)', [holderPid]));
  const { error, results } = await run;
  // kysely's own report, which depends on where the dead connection is noticed: the failed statement
  // (results then show 001_slow as Error), or its rollback or unlock failing after it.
  expect(error).toBeInstanceOf(Error);
  expect(results?.filter((r) => r.status === 'Success') ?? []).toEqual([]);
  expect(await lockRows(lostUrl, KYSELY_LOCK_KEY)).toEqual([]);
  // Nothing of the migration stayed, and the pool still works (the dead connection left it).
  const { rows } = await sql<{ t: string | null }>`SELECT to_regclass('half_done') AS t`.execute(db);
  expect(rows).toEqual([{ t: null }]);
});

test('rejects what is not kysely Migrator props, at construction', () => {
  expect(() => new Migrator(undefined as never)).toThrow(/expected Migrator props/);
  expect(() => new Migrator({ db: {} as never, provider: provider() })).toThrow(/Kysely instance/);
  expect(() => new Migrator({ db: kyselyFor(downUrl), provider: {} as never })).toThrow(/MigrationProvider/);
  expect(() => new Migrator({ db: kyselyFor(downUrl), provider: provider(), lock: { key: 'x' } })).toThrow(TypeError);
  const transaction = { connection() {}, getExecutor() {}, isTransaction: true };
  expect(() => new Migrator({ db: transaction as never, provider: provider() })).toThrow(/not a transaction/);
});
