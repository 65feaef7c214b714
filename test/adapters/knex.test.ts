import knexFactory, { type Knex } from 'knex';
import pg from 'pg';
import { expect, test } from 'vitest';
import { latest } from '../../adapters/knex.js';
import { DEFAULT_LOCK_KEY, MigrationLockLostError } from '../../src/index.js';
import { appliedMigrations, race } from '../fixtures/adapters/race.mjs';
import { createTestDatabase, fixture, silentKnexLog, waitFor, withClient } from '../helpers.js';
import {
  expectAllSucceeded,
  expectCicRace,
  expectExclusiveHoldings,
  expectMigratedOnLockSession,
  report,
} from './race-report.js';

const REPLICAS = 6;
const [lockedUrl, cicUrl, staleUrl, settingsUrl, lostUrl, externalPoolUrl] = await Promise.all([
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
]);
const MIGRATIONS = ['001_create_widgets.cjs', '002_slow_add_size.cjs', '003_index_name.cjs'];
const silent = { info() {}, warn() {}, error() {} };

test(`${REPLICAS} replicas through pg-migration-lock/knex all succeed and apply each migration once`, async () => {
  const outcome = await race({ migrator: 'knex', mode: 'locked', replicas: REPLICAS, databaseUrl: lockedUrl });
  report('knex', 'locked', outcome);
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  // One replica ran the three migrations; the others waited, then found nothing pending.
  expect(outcome.results.flatMap((r) => r.result?.ran ?? []).sort()).toEqual(MIGRATIONS);
  expect(await appliedMigrations(lockedUrl, 'knex')).toEqual({ total: 3, distinct: 3 });
  await expectMigratedOnLockSession(lockedUrl, DEFAULT_LOCK_KEY);
});

test('CREATE INDEX CONCURRENTLY in a `transaction: false` migration, while the other replicas wait', async () => {
  await expectCicRace('knex', cicUrl, { barrier: true });
});

test('a knex_migrations_lock row left at is_locked = 1 is freed with a warning, instead of failing', async () => {
  const db = knexFactory({ client: 'pg', connection: staleUrl, log: silentKnexLog });
  const config = { directory: fixture('knex/migrations') };
  try {
    await latest(db, { ...config, lock: { logger: null } });
    // What a run killed while migrating leaves behind:
    await db('knex_migrations_lock').update({ is_locked: 1 });
    await expect(db.migrate.latest(config)).rejects.toThrow('Migration table is already locked');

    const warnings: string[] = [];
    await expect(latest(db, config, { logger: { ...silent, warn: (m) => warnings.push(m) } })).resolves.toEqual([
      1,
      [],
    ]);
    expect(warnings).toEqual([expect.stringMatching(/^Freed knex_migrations_lock: it was left at is_locked = 1/)]);
    expect(await db('knex_migrations_lock').select('is_locked')).toEqual([{ is_locked: 0 }]);
  } finally {
    await db.destroy();
  }
});

test('connection settings as an object (with password) or a function, searchPath, a pool of max 1 left untouched', async () => {
  const url = new URL(settingsUrl);
  const settings = {
    host: url.hostname,
    port: Number(url.port),
    user: decodeURIComponent(url.username),
    password: decodeURIComponent(url.password),
    database: url.pathname.slice(1),
  };
  await withClient(settingsUrl, (client) => client.query('CREATE SCHEMA app'));
  // knex's own setup of a new connection (searchPath, pool.afterCreate) applies to the lock session too.
  const afterCreate: string[] = [];
  const pool = {
    min: 0,
    max: 1,
    afterCreate: (conn: pg.Client, done: (err: Error | null) => void) =>
      conn.query('SHOW search_path', (err, result) => {
        afterCreate.push(result?.rows[0].search_path);
        done(err);
      }),
  };
  const common = { client: 'pg', searchPath: ['app'], pool, acquireConnectionTimeout: 5000 };
  const viaObject = knexFactory({ ...common, connection: settings, log: silentKnexLog });
  const viaFunction = knexFactory({ ...common, connection: async () => settings, log: silentKnexLog });
  const config = { directory: fixture('knex/migrations'), lock: { logger: null } };
  try {
    const [, log] = await latest(viaObject, config);
    expect(log).toEqual(MIGRATIONS);
    // The migration ran on our own session, so the app's pool (max 1) never lent a connection: no deadlock.
    expect(poolSize(viaObject)).toBe(0);
    await expect(latest(viaFunction, config)).resolves.toEqual([1, []]);
    expect(afterCreate).toEqual(['app', 'app']);
    await withClient(settingsUrl, async (client) => {
      const tables = await client.query(
        `SELECT to_regclass('app.widgets') AS widgets, to_regclass('app.knex_migrations') AS m`,
      );
      expect(tables.rows).toEqual([{ widgets: 'app.widgets', m: 'app.knex_migrations' }]);
    });
  } finally {
    await Promise.all([viaObject.destroy(), viaFunction.destroy()]);
  }
});

test("knex's `connectionPool` (a pg.Pool of max 1): the lock session is checked out of it, the migration runs on it", async () => {
  const pool = new pg.Pool({ connectionString: externalPoolUrl, max: 1 });
  const db = knexFactory({ client: 'pg', connectionPool: pool, log: silentKnexLog } as Knex.Config);
  try {
    const [, log] = await latest(db, { directory: fixture('knex/migrations'), lock: { logger: null } });
    expect(log).toEqual(MIGRATIONS);
    expect([pool.totalCount, pool.idleCount]).toEqual([1, 1]);
    const { rows } = await pool.query('SELECT advisory_keys FROM migration_session');
    expect(rows[0].advisory_keys).toEqual([DEFAULT_LOCK_KEY.toString()]);
  } finally {
    await db.destroy();
    await pool.end();
  }
});

test('if the lock session dies mid-migration, latest rejects with MigrationLockLostError and nothing is recorded', async () => {
  const db = knexFactory({ client: 'pg', connection: lostUrl, log: silentKnexLog });
  let pid: number | undefined;
  const run = latest(db, {
    directory: fixture('knex/migrations-lost'),
    lock: { logger: null, hooks: { onAcquired: (info) => (pid = info.pid) } },
  });
  run.catch(() => {});
  try {
    await withClient(lostUrl, async (client) => {
      await waitFor(
        async () =>
          pid !== undefined &&
          (await client.query(`SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'`, [pid]))
            .rowCount === 1,
        10_000,
        'the migration to be running',
      );
      await client.query('SELECT pg_terminate_backend($1)', [pid]);
    });
    await expect(run).rejects.toBeInstanceOf(MigrationLockLostError);
    await withClient(lostUrl, async (client) => {
      const left = await client.query(
        `SELECT to_regclass('long_running') AS created, (SELECT count(*)::int FROM knex_migrations) AS recorded`,
      );
      expect(left.rows).toEqual([{ created: null, recorded: 0 }]);
    });
  } finally {
    await db.destroy();
  }
});

test('rejects what is not a PostgreSQL knex instance, before connecting', async () => {
  const mysql = knexFactory({ client: 'mysql2' });
  await expect(latest(mysql)).rejects.toThrow(/knex instance for PostgreSQL.*'mysql2'/);
  await expect(latest({} as Knex)).rejects.toThrow(TypeError);
  await mysql.destroy();
});

function poolSize(db: Knex): number {
  const pool = db.client.pool;
  return pool.numUsed() + pool.numFree() + pool.numPendingCreates();
}
