// pg-migration-lock/umzug: races of replica processes (the lock on a Sequelize instance, and on a URL),
// check-first, pending, a failing migration, a lost lock session, a fleet of schemas, and bad input.

import { execFileSync } from 'node:child_process';
import pg from 'pg';
import postgres from 'postgres';
import { Sequelize } from 'sequelize';
import { SequelizeStorage, Umzug } from 'umzug';
import { expect, test } from 'vitest';
import { fleet, pending, up } from '../../adapters/umzug.js';
import {
  DEFAULT_LOCK_KEY,
  fleetKey,
  fleetTarget,
  getLockStatus,
  lockKey,
  MigrationLockLostError,
  migrateEach,
  withMigrationLock,
} from '../../src/index.js';
import { appliedMigrations, race } from '../fixtures/adapters/race.mjs';
import { sequelizeFor, umzugFor } from '../fixtures/umzug/umzug.mjs';
import { createTestDatabase, lockRows, waitFor, watchRuns, withClient } from '../helpers.js';
import { expectAllSucceeded, expectCicRace, expectExclusiveHoldings, report } from './race-report.js';

const REPLICAS = 8;
const MIGRATIONS = ['001_create_accounts.cjs', '002_slow_step.cjs', '003_double_balance.cjs'];
const [sequelizeUrl, urlUrl, pendingUrl, failUrl, lostUrl, fleetUrl, inputUrl, reopenUrl, cicUrl, sourcesUrl] =
  (await Promise.all(Array.from({ length: 10 }, () => createTestDatabase()))) as [
    string,
    string,
    string,
    string,
    string,
    string,
    string,
    string,
    string,
    string,
  ];

const makeSequelize = sequelizeFor;
const makeUmzug = umzugFor;

/** The one account's balance: 100 once created, doubled once by the data migration. */
const balance = (url: string, schema = 'public') =>
  withClient(url, async (client) => (await client.query(`SELECT balance FROM "${schema}".accounts`)).rows);

/** Runs `fn` with a Sequelize on `url` and an Umzug of the fixture's `folder`, closed after. */
async function withUmzug<T>(
  url: string,
  folder: string,
  fn: (umzug: Umzug<object>, sequelize: Sequelize) => Promise<T>,
) {
  const sequelize = makeSequelize(url);
  try {
    return await fn(makeUmzug(sequelize, folder), sequelize);
  } finally {
    await sequelize.close();
  }
}

/** Holds `key` on a session of its own until the returned function is called. */
async function holdLock(url: string, key: bigint) {
  const client = new pg.Client(url);
  await client.connect();
  await client.query('SELECT pg_advisory_lock($1::bigint)', [key.toString()]);
  return async () => {
    await client.query('SELECT pg_advisory_unlock($1::bigint)', [key.toString()]);
    await client.end();
  };
}

// The full race on the Sequelize instance; a smaller one on the URL (the same adapter code past the source).
test.each([
  [REPLICAS, 'the Sequelize instance', 'sequelize', sequelizeUrl],
  [4, 'the database URL', 'url', urlUrl],
] as const)(
  '%i replicas, the lock on %s: each migration once, the balance doubled once, 0 failures',
  async (replicas, _what, source, url) => {
    const outcome = await race({
      migrator: 'umzug',
      mode: 'locked',
      replicas,
      databaseUrl: url,
      // All replicas start migrating together, however long each took to load.
      args: () => [source, `barrier=${replicas}`],
    });
    report('umzug', 'locked', outcome, ` (lock on ${source})`);
    expectExclusiveHoldings(outcome);
    expectAllSucceeded(outcome);
    expect(outcome.failed).toBe(0);
    // A real race: replicas queued behind the one migrating (and left at its release, or took the lock and found
    // nothing left to do).
    const waited = outcome.results.filter((r) => r.result?.waited).length;
    console.info(`[race] ${waited} of ${replicas} replicas waited for the lock`);
    expect(waited).toBeGreaterThan(0);
    expect(outcome.results.flatMap((r) => r.result?.ran ?? []).sort()).toEqual(MIGRATIONS);
    expect(await appliedMigrations(url, 'umzug')).toEqual({ total: 3, distinct: 3 });
    expect(await balance(url)).toEqual([{ balance: 200 }]);
    // As documented: umzug's migrations ran on the app's own connection, not on the session holding the lock.
    await withClient(url, async (client) => {
      expect((await client.query('SELECT advisory_keys FROM migration_session')).rows).toEqual([{ advisory_keys: [] }]);
    });
  },
);

test(`${REPLICAS} replicas on the up-to-date database: none takes or waits for the lock (held meanwhile by a test session)`, async () => {
  // A replica that queued would wait behind this session (onWaiting) instead of exiting.
  const release = await holdLock(sequelizeUrl, DEFAULT_LOCK_KEY);
  let outcome: Awaited<ReturnType<typeof race>>;
  try {
    outcome = await race({
      migrator: 'umzug',
      mode: 'locked',
      replicas: REPLICAS,
      databaseUrl: sequelizeUrl,
      args: () => [`barrier=${REPLICAS}`],
    });
  } finally {
    await release();
  }
  report('umzug', 'locked', outcome, ' (up to date, lock held by a test session)');
  expectAllSucceeded(outcome);
  expect(outcome.results.map((r) => [r.result?.ran, r.result?.waited, r.result?.locked])).toEqual(
    Array(REPLICAS).fill([[], false, false]),
  );
  expect(await appliedMigrations(sequelizeUrl, 'umzug')).toEqual({ total: 3, distinct: 3 });
  expect(await balance(sequelizeUrl)).toEqual([{ balance: 200 }]);
});

test('CREATE INDEX CONCURRENTLY with the waiters polling, never blocking it', async () => {
  await expectCicRace('umzug', cicUrl, { replicas: 6, barrier: true });
});

test('pending() lists exactly what up() then applies; up to date, up() returns [] without touching the held lock', async () => {
  await withUmzug(pendingUrl, 'migrations', async (umzug, sequelize) => {
    expect(await pending(umzug)).toEqual(MIGRATIONS);
    const acquired: number[] = [];
    const lock = { logger: null, key: lockKey('umzug-test'), hooks: { onAcquired: () => acquired.push(1) } };
    const applied = await up(umzug, sequelize, { lock });
    expect(applied.map((m) => m.name)).toEqual(MIGRATIONS);
    expect(applied[0]?.path).toMatch(/001_create_accounts\.cjs$/);
    expect(acquired).toHaveLength(1);
    expect(await pending(umzug)).toEqual([]);
    // Held elsewhere, and not allowed to wait: touching the lock would throw MigrationLockBusyError.
    await withMigrationLock(
      pendingUrl,
      lockKey('umzug-test'),
      async () => {
        expect(await up(umzug, sequelize, { lock: { ...lock, wait: false } })).toEqual([]);
        expect(await up(umzug, pendingUrl, { lock: { ...lock, wait: false } })).toEqual([]);
      },
      { logger: null },
    );
    expect(acquired).toHaveLength(1);
    // Named explicitly, an applied migration fails as in bare umzug (so it queues); with rerun: 'SKIP' it is a no-op.
    await expect(up(umzug, pendingUrl, { to: MIGRATIONS[1], lock })).rejects.toThrow(
      /Couldn't find migration to apply/,
    );
    expect(await up(umzug, pendingUrl, { migrations: [MIGRATIONS[1]!], rerun: 'SKIP', lock })).toEqual([]);
    expect(acquired).toHaveLength(2);
    // umzug's own options pass through: `step`, `to`.
    await withClient(pendingUrl, (client) =>
      client.query(`DELETE FROM "SequelizeMeta" WHERE name <> '001_create_accounts.cjs'; DROP TABLE migration_session`),
    );
    expect(await pending(umzug)).toEqual(MIGRATIONS.slice(1));
    expect((await up(umzug, pendingUrl, { step: 1, lock })).map((m) => m.name)).toEqual([MIGRATIONS[1]]);
    expect(await pending(umzug)).toEqual([MIGRATIONS[2]]);
  });
  // The lock's connection went back to Sequelize's pool without the lock.
  expect(await lockRows(pendingUrl, lockKey('umzug-test'))).toEqual([]);
  expect(await balance(pendingUrl)).toEqual([{ balance: 200 }]);
});

test('the other lock sources: a pg.Pool, a connected pg.Client, a postgres.js sql (one migration each)', async () => {
  const pool = new pg.Pool({ connectionString: sourcesUrl, max: 2 });
  const client = new pg.Client(sourcesUrl);
  await client.connect();
  const sql = postgres(sourcesUrl, { max: 2, onnotice: () => {} });
  const held: string[] = [];
  const lock = (name: string) => ({ logger: null, hooks: { onAcquired: () => void held.push(name) } });
  try {
    await withUmzug(sourcesUrl, 'migrations', async (umzug) => {
      const one = (source: Parameters<typeof up>[1], name: string) =>
        up(umzug, source, { step: 1, lock: lock(name) }).then((applied) => applied.map((m) => m.name));
      expect(await one(pool, 'pool')).toEqual([MIGRATIONS[0]]);
      expect(await one(client, 'client')).toEqual([MIGRATIONS[1]]);
      expect(await one(sql, 'postgres.js')).toEqual([MIGRATIONS[2]]);
      expect(await pending(umzug)).toEqual([]);
    });
    expect(held).toEqual(['pool', 'client', 'postgres.js']);
    // The caller's client is left as it was: connected, holding nothing.
    expect(
      (
        await client.query('SELECT count(*)::int AS n FROM pg_locks WHERE locktype = $1 AND pid = pg_backend_pid()', [
          'advisory',
        ])
      ).rows,
    ).toEqual([{ n: 0 }]);
  } finally {
    await client.end();
    await pool.end();
    await sql.end();
  }
  expect(await balance(sourcesUrl)).toEqual([{ balance: 200 }]);
});

test('a failing migration is named in the error, after the one before it was applied; the lock is released', async () => {
  await withUmzug(failUrl, 'migrations-failing', async (umzug, sequelize) => {
    expect(await pending(umzug)).toEqual(['001_create_accounts.cjs', '002_broken.cjs']);
    const error = await up(umzug, sequelize, { lock: { logger: null } }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toMatch(/Migration 002_broken\.cjs \(up\) failed/);
    expect((error as Error).message).toMatch(/no_such_table/);
    expect(await pending(umzug)).toEqual(['002_broken.cjs']);
  });
  expect(await lockRows(failUrl, DEFAULT_LOCK_KEY)).toEqual([]);
});

test('the lock session terminated mid-migration: MigrationLockLostError, and no further migration starts', async () => {
  const sequelize = makeSequelize(lostUrl);
  const ran: string[] = [];
  const migration = (name: string, sql: string) => ({
    name,
    up: async () => {
      ran.push(name);
      await sequelize.query(sql);
    },
  });
  const umzug = new Umzug({
    migrations: [
      migration('001_slow', 'SELECT pg_sleep(1.5)'),
      migration('002_next', 'CREATE TABLE next_one (id int)'),
    ],
    storage: new SequelizeStorage({ sequelize }),
    logger: undefined,
  });
  try {
    const outcome = up(umzug, sequelize, { lock: { logger: null } }).then(
      () => 'resolved',
      (error: unknown) => error,
    );
    const holderPid = await waitFor(
      async () => (ran.length > 0 ? (await lockRows(lostUrl, DEFAULT_LOCK_KEY))[0]?.pid : undefined),
      10_000,
      'the lock and the first migration',
    );
    await withClient(lostUrl, (client) => client.query('SELECT pg_terminate_backend($1)', [holderPid]));
    expect(await outcome).toBeInstanceOf(MigrationLockLostError);
    // The running migration (on the app's connection) finished; the next one never started.
    expect(ran).toEqual(['001_slow']);
    expect(await pending(umzug)).toEqual(['002_next']);
    expect(await lockRows(lostUrl, DEFAULT_LOCK_KEY)).toEqual([]);
  } finally {
    await sequelize.close();
  }
});

test('a Sequelize source is reopened like a pool: a waiter whose connection is terminated takes another and migrates', async () => {
  const warnings: string[] = [];
  await withUmzug(reopenUrl, 'migrations', async (umzug, sequelize) => {
    const release = await holdLock(reopenUrl, DEFAULT_LOCK_KEY);
    let applied: Promise<unknown>;
    try {
      const logger = { info() {}, warn: (m: string) => warnings.push(m), error() {} };
      applied = up(umzug, sequelize, { lock: { logger, pollIntervalMs: 50 } });
      const first = await waitFor(async () => (await getLockStatus(reopenUrl, DEFAULT_LOCK_KEY)).waiters[0], 10_000);
      await withClient(reopenUrl, (client) => client.query('SELECT pg_terminate_backend($1)', [first!.pid]));
      await waitFor(async () =>
        (await getLockStatus(reopenUrl, DEFAULT_LOCK_KEY)).waiters.some((w) => w.pid !== first!.pid),
      );
    } finally {
      await release();
    }
    expect(((await applied) as { name: string }[]).map((m) => m.name)).toEqual(MIGRATIONS);
    // Sequelize's pool still works (the dead connection left it), and holds no lock.
    expect(await pending(umzug)).toEqual([]);
  });
  expect(warnings.join('\n')).toMatch(/Lost the connection while waiting for migration lock .*reconnecting/);
  expect(await lockRows(reopenUrl, DEFAULT_LOCK_KEY)).toEqual([]);
  expect(await balance(reopenUrl)).toEqual([{ balance: 200 }]);
});

test('a fleet of 3 schemas with migrateEach: SequelizeMeta and the tables in each schema, once; then up to date', async () => {
  const sequelize = makeSequelize(fleetUrl, 4);
  const closed: string[] = [];
  const migrator = fleet(
    (target) => {
      const schema = target.schema ?? 'public';
      const sql = (text: string) => async () => void (await sequelize.query(text));
      return new Umzug({
        migrations: [
          {
            name: '001_accounts',
            up: sql(`CREATE TABLE "${schema}".accounts (id serial PRIMARY KEY, balance integer NOT NULL);
              INSERT INTO "${schema}".accounts (balance) VALUES (100)`),
          },
          { name: '002_double', up: sql(`UPDATE "${schema}".accounts SET balance = balance * 2`) },
        ],
        // A model per schema: SequelizeStorage reuses a model already defined under its modelName (and its schema).
        storage: new SequelizeStorage({
          sequelize,
          schema,
          modelName: `SequelizeMeta_${schema}`,
          tableName: 'SequelizeMeta',
        }),
        logger: undefined,
      });
    },
    { close: (_umzug, target) => void closed.push(target.schema ?? 'database') },
  );
  try {
    const targets = ['t_1', 't_2', 't_3'].map((schema) => ({ url: fleetUrl, schema }));
    const report = await migrateEach(targets, migrator, { concurrency: 3, logger: null });
    expect(report.results.map((r) => [r.target.schema, r.status, 'applied' in r ? r.applied : r.error])).toEqual(
      ['t_1', 't_2', 't_3'].map((schema) => [schema, 'applied', ['001_accounts', '002_double']]),
    );
    expect(report.results.map((r) => r.key)).toEqual(['t_1', 't_2', 't_3'].map((s) => fleetKey('umzug', s)));
    for (const schema of ['t_1', 't_2', 't_3']) {
      expect(await balance(fleetUrl, schema)).toEqual([{ balance: 200 }]);
      const meta = await withClient(fleetUrl, (client) => client.query(`SELECT name FROM "${schema}"."SequelizeMeta"`));
      expect(meta.rows.map((r) => r.name).sort()).toEqual(['001_accounts', '002_double']);
    }
    expect(await migrator.pending(fleetTarget(targets[0]!))).toEqual([]);
    const again = await migrateEach(targets, migrator, { logger: null });
    expect(again.results.map((r) => r.status)).toEqual(['up-to-date', 'up-to-date', 'up-to-date']);
    expect(closed.filter((s) => s === 't_1').length).toBeGreaterThanOrEqual(3);
    // Batched checks: up-to-date schemas never reach umzug's run; a row of no migration is let be (as umzug's own
    // pending does), a renamed one sends the schema to umzug, which applies 002 again.
    await withClient(fleetUrl, async (client) => {
      await client.query(`INSERT INTO t_2."SequelizeMeta" (name) VALUES ('000_gone')`);
      await client.query(`UPDATE t_3."SequelizeMeta" SET name = '002_renamed' WHERE name = '002_double'`);
    });
    const { watched, ran } = watchRuns(migrator);
    const third = await migrateEach(targets, watched, { logger: null });
    expect(third.results.map((r) => r.status)).toEqual(['up-to-date', 'up-to-date', 'applied']);
    expect(ran).toEqual(['t_3']);
    expect(await balance(fleetUrl, 't_3')).toEqual([{ balance: 400 }]);
  } finally {
    await sequelize.close();
  }
});

test('bad input is a TypeError (or RangeError) before any connection', async () => {
  const unreachable = 'postgres://nobody@127.0.0.1:1/none';
  const sequelize = makeSequelize(inputUrl);
  const umzug = makeUmzug(sequelize);
  try {
    await expect(up(null as never, inputUrl)).rejects.toThrow(/expected an Umzug instance/);
    await expect(up({} as never, inputUrl)).rejects.toThrow(TypeError);
    await expect(pending({ up() {} } as never)).rejects.toThrow(/expected an Umzug instance/);
    // Not a lock source: refused before umzug is asked anything.
    await expect(up(umzug, {} as never)).rejects.toThrow(TypeError);
    await expect(up(umzug, 42 as never)).rejects.toThrow(TypeError);
    await expect(up(umzug, inputUrl, null as never)).rejects.toThrow(TypeError);
    await expect(up(umzug, unreachable, { lock: { key: 2n ** 63n } })).rejects.toBeInstanceOf(RangeError);
    // A Sequelize instance that cannot hold the lock: another dialect, or a pool of one connection (a deadlock).
    const mysqlShaped = { getDialect: () => 'mysql', connectionManager: {} };
    await expect(up(umzug, mysqlShaped as never)).rejects.toThrow(/'postgres' dialect/);
    const single = new Sequelize(unreachable, { logging: false, pool: { max: 1 } });
    await expect(up(umzug, single)).rejects.toThrow(/pool has max 1/);
    await single.close();
    // A bad key is refused before the Sequelize pool is asked for a connection.
    const unreachableSequelize = new Sequelize(unreachable, { logging: false });
    await expect(up(umzug, unreachableSequelize, { lock: { key: 'x' } })).rejects.toBeInstanceOf(TypeError);
    await unreachableSequelize.close();
    expect(() => fleet(null as never)).toThrow(TypeError);
    expect(() => fleet(() => umzug, null as never)).toThrow(TypeError);
    // Nothing was migrated, nothing created.
    const tables = await withClient(inputUrl, (client) =>
      client.query(`SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`),
    );
    expect(tables.rows).toEqual([]);
  } finally {
    await sequelize.close();
  }
});

test('importing pg-migration-lock/umzug (ESM and CommonJS builds) loads neither umzug nor sequelize', () => {
  // An ESM import of the adapter first, then the CommonJS build: whatever either loaded through require shows here.
  const out = execFileSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { createRequire } from 'node:module';
       const esm = await import('pg-migration-lock/umzug');
       const require = createRequire(import.meta.url);
       const cjs = require('pg-migration-lock/umzug');
       const loaded = Object.keys(require.cache).filter((f) => /node_modules\\/(umzug|sequelize)\\//.test(f));
       console.log(JSON.stringify({ esm: Object.keys(esm).sort(), cjs: Object.keys(cjs).sort(), loaded }));`,
    ],
    { encoding: 'utf8' },
  );
  expect(JSON.parse(out)).toEqual({ esm: ['fleet', 'pending', 'up'], cjs: ['fleet', 'pending', 'up'], loaded: [] });
});
