// pg-migration-lock/drizzle with drizzle's postgres-js driver (npm `postgres`): real server, real processes.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { drizzle } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { afterAll, expect, test } from 'vitest';
import { migrate } from '../../adapters/drizzle.js';
import { DEFAULT_LOCK_KEY, lockKey, MigrationLockLostError } from '../../src/index.js';
import { appliedMigrations, race } from '../fixtures/adapters/race.mjs';
import { createTestDatabase, fixture, lockRows, waitFor } from '../helpers.js';
import { expectAllSucceeded, expectExclusiveHoldings, expectMigratedOnLockSession, report } from './race-report.js';

const REPLICAS = 6;
const [lockedUrl, oneUrl, failUrl, lostUrl] = await Promise.all([
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
]);
const migrationsFolder = fixture('drizzle/migrations');
const opened: postgres.Sql[] = [];
const connect = (databaseUrl: string, max = 10) => {
  const sql = postgres(databaseUrl, { max, onnotice: () => {} });
  opened.push(sql);
  return sql;
};
afterAll(async () => {
  await Promise.all(opened.map((sql) => sql.end({ timeout: 5 })));
});

test(`${REPLICAS} replicas through pg-migration-lock/drizzle over drizzle-orm/postgres-js apply each migration once`, async () => {
  const outcome = await race({
    migrator: 'drizzle-postgres-js',
    mode: 'locked',
    replicas: REPLICAS,
    databaseUrl: lockedUrl,
  });
  report('drizzle-postgres-js', 'locked', outcome);
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  expect(await appliedMigrations(lockedUrl, 'drizzle-postgres-js')).toEqual({ total: 3, distinct: 3 });
  await expectMigratedOnLockSession(lockedUrl, DEFAULT_LOCK_KEY);
});

test('over postgres({ max: 1 }): the migration runs on the one connection that holds the lock, which goes back after', async () => {
  const sql = connect(oneUrl, 1);
  let lockPid: number | undefined;
  await migrate(drizzle(sql), {
    migrationsFolder,
    lock: { logger: null, key: lockKey('drizzle-pgjs'), hooks: { onAcquired: (info) => (lockPid = info.pid) } },
  });
  expect(await appliedMigrations(oneUrl, 'drizzle-postgres-js')).toEqual({ total: 3, distinct: 3 });
  expect(await sql`SELECT pid, advisory_keys FROM migration_session`).toEqual([
    { pid: lockPid, advisory_keys: [lockKey('drizzle-pgjs').toString()] },
  ]);
  expect((await sql`SELECT pg_backend_pid() AS pid`)[0]!.pid).toBe(lockPid);
  // Nothing pending: a second run is a no-op.
  await migrate(drizzle(sql), { migrationsFolder, lock: { logger: null } });
  expect(await appliedMigrations(oneUrl, 'drizzle-postgres-js')).toEqual({ total: 3, distinct: 3 });
});

test("a failing migration: drizzle's transaction on the reserved connection rolls back, the lock is released, the error is drizzle's", async () => {
  const folder = mkdtempSync(join(tmpdir(), 'pgml-drizzle-'));
  try {
    mkdirSync(join(folder, 'meta'));
    const entries = ['0000_ok', '0001_broken'].map((tag, idx) => ({
      idx,
      version: '7',
      when: 1700000000001 + idx,
      tag,
      breakpoints: true,
    }));
    writeFileSync(join(folder, 'meta/_journal.json'), JSON.stringify({ version: '7', dialect: 'postgresql', entries }));
    writeFileSync(join(folder, '0000_ok.sql'), 'CREATE TABLE "gizmos" ("id" integer);');
    writeFileSync(join(folder, '0001_broken.sql'), 'ALTER TABLE "no_such_table" ADD COLUMN "x" integer;');
    const sql = connect(failUrl, 2);
    await expect(migrate(drizzle(sql), { migrationsFolder: folder, lock: { logger: null } })).rejects.toThrow(
      /no_such_table/,
    );
    // Both migrations ran in one transaction: nothing of the first one is left, nothing is recorded.
    expect(await sql`SELECT to_regclass('gizmos') AS t`).toEqual([{ t: null }]);
    expect(await sql`SELECT count(*)::int AS n FROM drizzle.__drizzle_migrations`).toEqual([{ n: 0 }]);
    expect(await lockRows(failUrl, DEFAULT_LOCK_KEY)).toEqual([]);
  } finally {
    rmSync(folder, { recursive: true, force: true });
  }
});

test('the lock session terminated mid-migration: migrate rejects with MigrationLockLostError, nothing is applied, the process survives', async () => {
  const folder = mkdtempSync(join(tmpdir(), 'pgml-drizzle-'));
  try {
    mkdirSync(join(folder, 'meta'));
    const entries = [{ idx: 0, version: '7', when: 1700000000001, tag: '0000_slow', breakpoints: true }];
    writeFileSync(join(folder, 'meta/_journal.json'), JSON.stringify({ version: '7', dialect: 'postgresql', entries }));
    writeFileSync(
      join(folder, '0000_slow.sql'),
      'CREATE TABLE "slow" ("id" integer);\n--> statement-breakpoint\nSELECT pg_sleep(10);',
    );
    const sql = connect(lostUrl, 2);
    const running = migrate(drizzle(sql), { migrationsFolder: folder, lock: { logger: null } }).catch(
      (err: Error) => err,
    );
    const pid = await waitFor(
      async () =>
        (
          await sql`SELECT pid FROM pg_stat_activity WHERE query LIKE '%SELECT pg_sleep(10)%' AND pid <> pg_backend_pid()`
        )[0]?.pid as number | undefined,
    );
    await sql`SELECT pg_terminate_backend(${pid!})`;
    const error = await running;
    expect(error).toBeInstanceOf(MigrationLockLostError);
    expect(await sql`SELECT to_regclass('slow') AS t`).toEqual([{ t: null }]);
    expect(await lockRows(lostUrl, DEFAULT_LOCK_KEY)).toEqual([]);
  } finally {
    rmSync(folder, { recursive: true, force: true });
  }
});

test('rejects a drizzle.mock() postgres-js database before connecting', async () => {
  await expect(migrate(drizzle.mock() as never, { migrationsFolder })).rejects.toThrow(
    /drizzle node-postgres database.*or a drizzle postgres-js database/,
  );
});
