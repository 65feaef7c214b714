// pg-migration-lock/mikro-orm: races of replica processes (MikroORM's default all-or-nothing transaction, which
// runs on the lock session, and allOrNothing: false, which runs on the ORM's pool), check-first, pending, a failing
// migration, a lost lock session, a fleet of schemas, and bad input.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Migration } from '@mikro-orm/migrations';
import { expect, test } from 'vitest';
import { fleet, pending, up } from '../../adapters/mikro-orm.js';
import {
  DEFAULT_LOCK_KEY,
  fleetKey,
  fleetTarget,
  lockKey,
  MigrationLockLostError,
  migrateEach,
  withMigrationLock,
} from '../../src/index.js';
import { appliedMigrations, race } from '../fixtures/adapters/race.mjs';
import { ormFor, ormOptions } from '../fixtures/mikro-orm/orm.mjs';
import { createTestDatabase, lockRows, waitFor, watchRuns, withClient } from '../helpers.js';
import { expectAllSucceeded, expectCicRace, expectExclusiveHoldings, report } from './race-report.js';

const REPLICAS = 8;
// MikroORM replicas are heavy to start (about a second of CPU each): the secondary races use fewer.
const FEW = 4;
const MIGRATIONS = [
  'Migration20240101000001_create_accounts',
  'Migration20240101000002_slow_step',
  'Migration20240101000003_double_balance',
];
// One fresh database per test that needs one.
const fresh = () => createTestDatabase();
const [
  lockedUrl,
  eachUrl,
  pendingUrl,
  failUrl,
  lostUrl,
  fleetUrl,
  inputUrl,
  cicUrl,
  snapshotUrl,
  lostEachUrl,
  fieldsUrl,
] = await Promise.all([
  fresh(),
  fresh(),
  fresh(),
  fresh(),
  fresh(),
  fresh(),
  fresh(),
  fresh(),
  fresh(),
  fresh(),
  fresh(),
]);

/** The one account's balance: 100 once created, doubled once by the data migration. */
const balance = (url: string, schema = 'public') =>
  withClient(url, async (client) => (await client.query(`SELECT balance FROM "${schema}".accounts`)).rows);

/** The advisory keys the session that ran the slow migration held (recorded by the migration itself). */
const migrationSessionKeys = (url: string) =>
  withClient(url, async (client) => (await client.query('SELECT advisory_keys FROM migration_session')).rows);

// The full race with MikroORM's defaults; a smaller one with allOrNothing: false.
test.each([
  [
    REPLICAS,
    "MikroORM's default (allOrNothing): on the lock session",
    'all-or-nothing',
    lockedUrl,
    [DEFAULT_LOCK_KEY.toString()],
  ],
  [FEW, "allOrNothing: false: on the ORM's pool", 'each', eachUrl, []],
] as const)(
  '%i replicas, %s: each migration once, the balance doubled once, 0 failures',
  async (replicas, _what, transactions, url, keys) => {
    const outcome = await race({
      migrator: 'mikro-orm',
      mode: 'locked',
      replicas,
      databaseUrl: url,
      // All replicas start migrating together, however long each took to load.
      args: () => [transactions, `barrier=${replicas}`],
    });
    report('mikro-orm', 'locked', outcome, ` (${transactions})`);
    expectExclusiveHoldings(outcome);
    expectAllSucceeded(outcome);
    expect(outcome.failed).toBe(0);
    // A real race: replicas queued behind the one migrating (and left at its release, or took the lock and found
    // nothing left to do).
    const waited = outcome.results.filter((r) => r.result?.waited).length;
    console.info(`[race] ${waited} of ${replicas} replicas waited for the lock`);
    expect(waited).toBeGreaterThan(0);
    expect(outcome.results.flatMap((r) => r.result?.ran ?? []).sort()).toEqual(MIGRATIONS);
    expect(await appliedMigrations(url, 'mikro-orm')).toEqual({ total: 3, distinct: 3 });
    expect(await balance(url)).toEqual([{ balance: 200 }]);
    // With allOrNothing the migration ran on the very session that held the lock: they share fate.
    expect(await migrationSessionKeys(url)).toEqual([{ advisory_keys: keys }]);
  },
);

test(`${FEW} replicas on the up-to-date database: none takes or waits for the lock (held meanwhile by a test session)`, async () => {
  // A replica that queued would wait behind this session (onWaiting) instead of exiting.
  const release = await withMigrationLock(
    lockedUrl,
    DEFAULT_LOCK_KEY,
    async () =>
      race({
        migrator: 'mikro-orm',
        mode: 'locked',
        replicas: FEW,
        databaseUrl: lockedUrl,
        args: () => [`barrier=${FEW}`],
      }),
    { logger: null },
  );
  report('mikro-orm', 'locked', release, ' (up to date, lock held by a test session)');
  expectAllSucceeded(release);
  expect(release.results.map((r) => [r.result?.ran, r.result?.waited, r.result?.locked])).toEqual(
    Array(FEW).fill([[], false, false]),
  );
  expect(await appliedMigrations(lockedUrl, 'mikro-orm')).toEqual({ total: 3, distinct: 3 });
  expect(await balance(lockedUrl)).toEqual([{ balance: 200 }]);
});

test('CREATE INDEX CONCURRENTLY (a non-transactional migration, allOrNothing: false) with the waiters polling, never blocking it', async () => {
  await expectCicRace('mikro-orm', cicUrl, { replicas: 4, barrier: true });
});

test("pending() lists exactly what up() then applies; MikroORM's options pass through; up to date, no lock", async () => {
  const orm = await ormFor(pendingUrl);
  try {
    expect(await pending(orm)).toEqual(MIGRATIONS);
    const acquired: number[] = [];
    const lock = { logger: null, key: lockKey('mikro-orm-test'), hooks: { onAcquired: () => acquired.push(1) } };
    // MikroORM's own `to`, then the rest.
    const first = await up(orm, { to: MIGRATIONS[0], lock });
    expect(first.map((m) => m.name)).toEqual([MIGRATIONS[0]]);
    expect(await pending(orm)).toEqual(MIGRATIONS.slice(1));
    const rest = await up(orm, { lock });
    expect(rest.map((m) => m.name)).toEqual(MIGRATIONS.slice(1));
    expect(acquired).toHaveLength(2);
    expect(await pending(orm)).toEqual([]);
    // Held elsewhere, and not allowed to wait: touching the lock would throw MigrationLockBusyError.
    await withMigrationLock(
      pendingUrl,
      lockKey('mikro-orm-test'),
      async () => {
        expect(await up(orm, { lock: { ...lock, wait: false } })).toEqual([]);
      },
      { logger: null },
    );
    expect(acquired).toHaveLength(2);
    // The call forms MikroORM takes, a migration name or names: named, an applied one fails as in bare MikroORM.
    await expect(up(orm, MIGRATIONS[2]!)).rejects.toThrow(/Couldn't find migration to apply/);
    await expect(up(orm, { migrations: [MIGRATIONS[2]!], lock })).rejects.toThrow(/Couldn't find migration to apply/);
    expect(acquired).toHaveLength(3);
  } finally {
    await orm.close(true);
  }
  expect(await lockRows(pendingUrl, lockKey('mikro-orm-test'))).toEqual([]);
  expect(await balance(pendingUrl)).toEqual([{ balance: 200 }]);
  expect(await migrationSessionKeys(pendingUrl)).toEqual([{ advisory_keys: [lockKey('mikro-orm-test').toString()] }]);
});

test('an ORM configured by host, port, user, password and dbName: the lock session is made from them', async () => {
  const url = new URL(fieldsUrl);
  const orm = await ormFor('', 'migrations', undefined, {
    clientUrl: undefined,
    host: url.hostname,
    port: Number(url.port),
    user: decodeURIComponent(url.username),
    password: decodeURIComponent(url.password),
    dbName: url.pathname.slice(1),
  });
  try {
    const keys: bigint[] = [];
    const applied = await up(orm, {
      lock: { logger: null, hooks: { onAcquired: (info) => void keys.push(info.key) } },
    });
    expect(applied.map((m) => m.name)).toEqual(MIGRATIONS);
    expect(keys).toEqual([DEFAULT_LOCK_KEY]);
  } finally {
    await orm.close(true);
  }
  expect(await migrationSessionKeys(fieldsUrl)).toEqual([{ advisory_keys: [DEFAULT_LOCK_KEY.toString()] }]);
});

test('a failing migration is named in the error; the all-or-nothing transaction rolled back; the lock is released', async () => {
  const orm = await ormFor(failUrl, 'migrations-failing');
  try {
    const names = ['Migration20240101000001_create_accounts', 'Migration20240101000002_broken'];
    expect(await pending(orm)).toEqual(names);
    const error = await up(orm, { lock: { logger: null } }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toMatch(/Migration20240101000002_broken/);
    expect((error as Error).message).toMatch(/no_such_table/);
    // One transaction: the first migration's table and row went too.
    expect(await pending(orm)).toEqual(names);
    const table = await withClient(failUrl, (client) => client.query(`SELECT to_regclass('accounts') AS t`));
    expect(table.rows).toEqual([{ t: null }]);
  } finally {
    await orm.close(true);
  }
  expect(await lockRows(failUrl, DEFAULT_LOCK_KEY)).toEqual([]);
});

test("snapshot: true (MikroORM's default): written after the commit, with the new schema, and no deadlock", async () => {
  // MikroORM reads the schema for its snapshot through its pool: done inside the transaction on the lock session,
  // it would see the old schema, or wait forever for the lock an ALTER TABLE holds there.
  class Migration20240101000001_accounts extends Migration {
    async up() {
      this.addSql('CREATE TABLE accounts (id serial PRIMARY KEY, balance integer NOT NULL)');
    }
  }
  class Migration20240101000002_note extends Migration {
    async up() {
      this.addSql('ALTER TABLE accounts ADD COLUMN note text');
      this.addSql('CREATE INDEX accounts_note_idx ON accounts (note)');
    }
  }
  const dir = mkdtempSync(join(tmpdir(), 'pgml-mikro-orm-'));
  const orm = await ormFor(snapshotUrl, 'migrations', {
    path: dir,
    snapshot: true,
    migrationsList: [
      { name: 'Migration20240101000001_accounts', class: Migration20240101000001_accounts },
      { name: 'Migration20240101000002_note', class: Migration20240101000002_note },
    ],
  });
  const snapshot = () => {
    const file = join(dir, `.snapshot-${new URL(snapshotUrl).pathname.slice(1)}.json`);
    const { tables } = JSON.parse(readFileSync(file, 'utf8')) as { tables: { name: string; columns: object }[] };
    return tables.map((table) => [table.name, Object.keys(table.columns)]);
  };
  try {
    await up(orm, { to: 'Migration20240101000001_accounts', lock: { logger: null } });
    expect(snapshot()).toEqual([['accounts', ['id', 'balance']]]);
    expect((await up(orm, { lock: { logger: null } })).map((m) => m.name)).toEqual(['Migration20240101000002_note']);
    expect(snapshot()).toEqual([['accounts', ['id', 'balance', 'note']]]);
    // MikroORM's own setting is back as it was.
    expect(orm.config.get('migrations').snapshot).toBe(true);
  } finally {
    await orm.close(true);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the lock session terminated mid-migration: MigrationLockLostError, the transaction rolled back', async () => {
  class Migration20240101000001_half_done extends Migration {
    async up() {
      this.addSql('CREATE TABLE half_done (id int)');
      this.addSql('SELECT pg_sleep(10)');
    }
  }
  const orm = await ormFor(lostUrl, 'migrations', {
    migrationsList: [{ name: 'Migration20240101000001_half_done', class: Migration20240101000001_half_done }],
  });
  try {
    const outcome = up(orm, { lock: { logger: null } }).then(
      () => 'resolved',
      (error: unknown) => error,
    );
    const holderPid = await waitFor(
      async () => {
        const pid = (await lockRows(lostUrl, DEFAULT_LOCK_KEY))[0]?.pid;
        if (pid === undefined) return undefined;
        // Terminated once it is inside the sleep, i.e. the table was created in the transaction.
        const busy = await withClient(lostUrl, (client) =>
          client.query(`SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'`, [pid]),
        );
        return busy.rowCount ? pid : undefined;
      },
      10_000,
      'the lock session to run the migration',
    );
    await withClient(lostUrl, (client) => client.query('SELECT pg_terminate_backend($1)', [holderPid]));
    expect(await outcome).toBeInstanceOf(MigrationLockLostError);
    expect(await lockRows(lostUrl, DEFAULT_LOCK_KEY)).toEqual([]);
    const table = await withClient(lostUrl, (client) => client.query(`SELECT to_regclass('half_done') AS t`));
    expect(table.rows).toEqual([{ t: null }]);
    expect(await pending(orm)).toEqual(['Migration20240101000001_half_done']);
  } finally {
    await orm.close(true);
  }
});

test('allOrNothing: false, the lock session terminated mid-migration: MigrationLockLostError, no further migration starts', async () => {
  const ran: string[] = [];
  class Migration20240101000001_slow extends Migration {
    async up() {
      ran.push('slow');
      this.addSql('SELECT pg_sleep(1.5)');
    }
  }
  class Migration20240101000002_next extends Migration {
    async up() {
      ran.push('next');
      this.addSql('CREATE TABLE next_one (id int)');
    }
  }
  const orm = await ormFor(lostEachUrl, 'migrations', {
    allOrNothing: false,
    migrationsList: [
      { name: 'Migration20240101000001_slow', class: Migration20240101000001_slow },
      { name: 'Migration20240101000002_next', class: Migration20240101000002_next },
    ],
  });
  try {
    const outcome = up(orm, { lock: { logger: null } }).then(
      () => 'resolved',
      (error: unknown) => error,
    );
    const holderPid = await waitFor(
      async () => (ran.length > 0 ? (await lockRows(lostEachUrl, DEFAULT_LOCK_KEY))[0]?.pid : undefined),
      10_000,
      'the lock and the first migration',
    );
    await withClient(lostEachUrl, (client) => client.query('SELECT pg_terminate_backend($1)', [holderPid]));
    expect(await outcome).toBeInstanceOf(MigrationLockLostError);
    // The running migration (on MikroORM's pool) finished; the next one never started.
    expect(ran).toEqual(['slow']);
    expect(await pending(orm)).toEqual(['Migration20240101000002_next']);
  } finally {
    await orm.close(true);
  }
});

test("a fleet of 3 schemas with migrateEach: MikroORM's table and the migrations' tables in each schema, once", async () => {
  class Migration20240101000001_accounts extends Migration {
    async up() {
      // Unqualified: it lands in the tenant's schema (first in the lock session's search_path).
      this.addSql('CREATE TABLE accounts (id serial PRIMARY KEY, balance integer NOT NULL)');
      this.addSql('INSERT INTO accounts (balance) VALUES (100)');
    }
  }
  class Migration20240101000002_double extends Migration {
    async up() {
      this.addSql('UPDATE accounts SET balance = balance * 2');
    }
  }
  const options = ormOptions('migrations', {
    migrationsList: [
      { name: 'Migration20240101000001_accounts', class: Migration20240101000001_accounts },
      { name: 'Migration20240101000002_double', class: Migration20240101000002_double },
    ],
  });
  const migrator = fleet(options);
  const schemas = ['t_1', 't_2', 't_3'];
  const targets = schemas.map((schema) => ({ url: fleetUrl, schema }));
  const report = await migrateEach(targets, migrator, { concurrency: 3, logger: null });
  expect(report.results.map((r) => [r.target.schema, r.status, 'applied' in r ? r.applied : r.error])).toEqual(
    schemas.map((schema) => [
      schema,
      'applied',
      ['Migration20240101000001_accounts', 'Migration20240101000002_double'],
    ]),
  );
  expect(report.results.map((r) => r.key)).toEqual(schemas.map((s) => fleetKey('mikro-orm', s)));
  for (const schema of schemas) {
    expect(await balance(fleetUrl, schema)).toEqual([{ balance: 200 }]);
    const rows = await withClient(fleetUrl, (client) =>
      client.query(`SELECT name FROM "${schema}".mikro_orm_migrations`),
    );
    expect(rows.rows.map((r) => r.name)).toEqual([
      'Migration20240101000001_accounts',
      'Migration20240101000002_double',
    ]);
  }
  const publicTables = await withClient(fleetUrl, (client) =>
    client.query(`SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`),
  );
  expect(publicTables.rows).toEqual([]);
  expect(await migrator.pending(fleetTarget(targets[0]!))).toEqual([]);
  const again = await migrateEach(targets, migrator, { logger: null });
  expect(again.results.map((r) => r.status)).toEqual(['up-to-date', 'up-to-date', 'up-to-date']);

  // Checked in a batch: up-to-date schemas never reach the migrator; a name recorded with its extension counts, as
  // MikroORM reads it; a renamed one is pending again to MikroORM, so that schema goes to it, which applies it.
  await withClient(fleetUrl, async (client) => {
    await client.query(`UPDATE t_2.mikro_orm_migrations SET name = name || '.js'`);
    await client.query(`UPDATE t_3.mikro_orm_migrations SET name = 'Renamed' WHERE name LIKE '%_double'`);
  });
  const { watched, ran } = watchRuns(migrator);
  const third = await migrateEach(targets, watched, { logger: null });
  expect(third.results.map((r) => r.status)).toEqual(['up-to-date', 'up-to-date', 'applied']);
  expect(ran).toEqual(['t_3']);
  expect(await balance(fleetUrl, 't_3')).toEqual([{ balance: 400 }]);
});

test('bad input is a TypeError (or RangeError) before anything is sent', async () => {
  await expect(up(null as never)).rejects.toThrow(/initialized MikroORM/);
  await expect(up({} as never)).rejects.toThrow(TypeError);
  await expect(pending({ config: { get() {} }, em: {} } as never)).rejects.toThrow(TypeError);
  // Another driver's shape.
  const sqlite = {
    config: { get() {} },
    em: { getConnection: () => ({ getKnex: () => ({ client: { driverName: 'sqlite3' } }) }) },
  };
  await expect(up(sqlite as never)).rejects.toThrow(/'sqlite3' driver/);
  const orm = await ormFor(inputUrl);
  try {
    await expect(up(orm, null as never)).rejects.toThrow(TypeError);
    await expect(up(orm, 42 as never)).rejects.toThrow(TypeError);
    await expect(up(orm, { lock: { key: 2n ** 63n } })).rejects.toBeInstanceOf(RangeError);
    await expect(up(orm, { lock: { key: 'x' } })).rejects.toBeInstanceOf(TypeError);
    await expect(up(orm, { lock: 'x' as never })).rejects.toThrow(/lock/);
  } finally {
    await orm.close(true);
  }
  expect(() => fleet(null as never)).toThrow(TypeError);
  // Nothing was migrated, nothing created (not even MikroORM's table).
  const tables = await withClient(inputUrl, (client) =>
    client.query(`SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`),
  );
  expect(tables.rows).toEqual([]);
});

test('importing pg-migration-lock/mikro-orm (ESM and CommonJS builds) loads no MikroORM package', () => {
  // An ESM import of the adapter first, then the CommonJS build: whatever either loaded through require shows here.
  const out = execFileSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { createRequire } from 'node:module';
       const esm = await import('pg-migration-lock/mikro-orm');
       const require = createRequire(import.meta.url);
       const cjs = require('pg-migration-lock/mikro-orm');
       const loaded = Object.keys(require.cache).filter((f) => /node_modules\\/(@mikro-orm\\/[a-z]+|umzug|knex)\\//.test(f));
       console.log(JSON.stringify({ esm: Object.keys(esm).sort(), cjs: Object.keys(cjs).sort(), loaded }));`,
    ],
    { encoding: 'utf8' },
  );
  expect(JSON.parse(out)).toEqual({ esm: ['fleet', 'pending', 'up'], cjs: ['fleet', 'pending', 'up'], loaded: [] });
});
