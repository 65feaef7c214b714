// Check before queueing, with real replica processes: on an up-to-date database no replica takes (or even
// waits for) the lock; with migrations pending, one replica applies them once and the others find nothing
// left to do, whether they checked before queueing or re-checked when the holder released.

import { promises as fs } from 'node:fs';
import path from 'node:path';
import { drizzle } from 'drizzle-orm/node-postgres';
import { migrate as bareDrizzleMigrate } from 'drizzle-orm/node-postgres/migrator';
import knexFactory from 'knex';
import { Kysely, PostgresDialect } from 'kysely';
import { FileMigrationProvider, Migrator as KyselyMigrator } from 'kysely/migration';
import { runner as bareRunner } from 'node-pg-migrate';
import pg from 'pg';
import { DataSource } from 'typeorm';
import { describe, expect, test } from 'vitest';
import { migrate as drizzleMigrate } from '../../adapters/drizzle.js';
import { latest } from '../../adapters/knex.js';
import { KYSELY_LOCK_KEY } from '../../adapters/kysely.js';
import { runner } from '../../adapters/node-pg-migrate.js';
import { DEFAULT_LOCK_KEY } from '../../src/index.js';
import { appliedMigrations, type Migrator, race } from '../fixtures/adapters/race.mjs';
import { ormFor } from '../fixtures/mikro-orm/orm.mjs';
import { sequelizeFor, umzugFor } from '../fixtures/umzug/umzug.mjs';
import { createTestDatabase, fixture, withClient } from '../helpers.js';
import { expectAllSucceeded, expectExclusiveHoldings, report } from './race-report.js';

const REPLICAS = 3;
const NODE_PG_MIGRATE_KEY = 7241865325823964n;

/** Each migrator: how to apply its first migration only (leaving the slow 0.5 s one and the last pending), and its key. */
/** drizzle applies what is newer than its last row: this is how its first migration leaves the database. */
async function drizzleFirst(url: string) {
  await withClient(url, (client) =>
    client.query(`CREATE TABLE widgets (id serial PRIMARY KEY, name text NOT NULL);
      CREATE SCHEMA drizzle; CREATE TABLE drizzle.__drizzle_migrations (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint);
      INSERT INTO drizzle.__drizzle_migrations (hash, created_at) VALUES ('first', 1700000000001)`),
  );
}

const SETUPS: Record<Migrator, { key: bigint; applyFirst: (url: string) => Promise<void>; rest: string[] }> = {
  knex: {
    key: DEFAULT_LOCK_KEY,
    rest: ['002_slow_add_size.cjs', '003_index_name.cjs'],
    async applyFirst(url) {
      const db = knexFactory({ client: 'pg', connection: url });
      try {
        await db.migrate.up({ directory: fixture('knex/migrations') });
      } finally {
        await db.destroy();
      }
    },
  },
  'node-pg-migrate': {
    key: NODE_PG_MIGRATE_KEY,
    rest: ['1700000000002_slow-add-size', '1700000000003_index-name'],
    async applyFirst(url) {
      await bareRunner({
        databaseUrl: url,
        dir: fixture('node-pg-migrate/migrations'),
        direction: 'up',
        count: 1,
        migrationsTable: 'pgmigrations',
        log: () => {},
      });
    },
  },
  drizzle: { key: DEFAULT_LOCK_KEY, rest: [], applyFirst: drizzleFirst },
  'drizzle-postgres-js': { key: DEFAULT_LOCK_KEY, rest: [], applyFirst: drizzleFirst },
  typeorm: {
    key: DEFAULT_LOCK_KEY,
    rest: ['SlowAddSize1700000000002', 'IndexName1700000000003'],
    async applyFirst(url) {
      const dataSource = new DataSource({
        type: 'postgres',
        url,
        migrations: [fixture('typeorm/migrations/1700000000001-*.mjs')],
      });
      await dataSource.initialize();
      try {
        await dataSource.runMigrations();
      } finally {
        await dataSource.destroy();
      }
    },
  },
  umzug: {
    key: DEFAULT_LOCK_KEY,
    rest: ['002_slow_step.cjs', '003_double_balance.cjs'],
    async applyFirst(url) {
      const sequelize = sequelizeFor(url);
      try {
        await umzugFor(sequelize).up({ step: 1 });
      } finally {
        await sequelize.close();
      }
    },
  },
  'mikro-orm': {
    key: DEFAULT_LOCK_KEY,
    rest: ['Migration20240101000002_slow_step', 'Migration20240101000003_double_balance'],
    async applyFirst(url) {
      const orm = await ormFor(url);
      try {
        await orm.migrator.up({ to: 'Migration20240101000001_create_accounts' });
      } finally {
        await orm.close(true);
      }
    },
  },
  kysely: {
    key: KYSELY_LOCK_KEY,
    rest: ['002_slow_add_size', '003_index_name'],
    async applyFirst(url) {
      const db = new Kysely({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url }) }) });
      const migrationFolder = fixture('kysely/migrations');
      try {
        const provider = new FileMigrationProvider({ fs, path, migrationFolder });
        const { error } = await new KyselyMigrator({ db, provider }).migrateUp();
        if (error) throw error;
      } finally {
        await db.destroy();
      }
    },
  },
};

/** Holds `key` on a session of its own until `done` is called: any replica that tried to take it would wait. */
async function holdLock(url: string, key: bigint) {
  const client = new pg.Client(url);
  await client.connect();
  await client.query('SELECT pg_advisory_lock($1::bigint)', [key.toString()]);
  return async () => {
    await client.query('SELECT pg_advisory_unlock($1::bigint)', [key.toString()]);
    await client.end();
  };
}

const MIGRATORS = Object.keys(SETUPS) as Migrator[];
const urls = await Promise.all(MIGRATORS.flatMap(() => [createTestDatabase(), createTestDatabase()]));
const noOpUrl = await createTestDatabase();

describe.each(MIGRATORS)('%s', (migrator) => {
  const setup = SETUPS[migrator];
  const [pendingUrl, upToDateUrl] = urls.slice(MIGRATORS.indexOf(migrator) * 2);

  test(`${REPLICAS} replicas, two migrations pending: applied once each, 0 failures, the others skip without the lock`, async () => {
    const url = pendingUrl!;
    await setup.applyFirst(url);
    const outcome = await race({ migrator, mode: 'locked', replicas: REPLICAS, databaseUrl: url });
    report(migrator, 'locked', outcome, ' (check first, 2 pending)');
    expectExclusiveHoldings(outcome);
    expectAllSucceeded(outcome);
    expect(await appliedMigrations(url, migrator)).toEqual({ total: 3, distinct: 3 });
    if (setup.rest.length > 0) {
      // One replica ran both; no other ran anything.
      const ran = outcome.results.map((r) => r.result?.ran ?? []).filter((names) => names.length > 0);
      expect(ran).toEqual([setup.rest]);
    }
    const locked = outcome.results.filter((r) => r.result?.locked).length;
    const skippedAfterWaiting = outcome.results.filter((r) => r.result?.waited && !r.result?.locked).length;
    console.info(
      `[check-first] ${migrator}: ${locked}/${REPLICAS} took the lock, ${skippedAfterWaiting} waited then skipped at the release, ${REPLICAS - locked - skippedAfterWaiting} skipped before queueing`,
    );
    expect(locked).toBeGreaterThanOrEqual(1);
  });

  test(`${REPLICAS} replicas on an up-to-date database: none takes or waits for the lock (held meanwhile by a test session)`, async () => {
    const url = upToDateUrl!;
    await race({ migrator, mode: 'locked', replicas: 1, databaseUrl: url });
    expect(await appliedMigrations(url, migrator)).toEqual({ total: 3, distinct: 3 });
    // Held for the whole race: a replica that queued would wait (and say so through onWaiting) instead of exiting.
    const release = await holdLock(url, setup.key);
    let outcome: Awaited<ReturnType<typeof race>>;
    try {
      outcome = await race({ migrator, mode: 'locked', replicas: REPLICAS, databaseUrl: url });
    } finally {
      await release();
    }
    report(migrator, 'locked', outcome, ' (up to date, lock held by a test session)');
    expectExclusiveHoldings(outcome);
    expectAllSucceeded(outcome);
    expect(outcome.results.map((r) => [r.result?.waited, r.result?.locked])).toEqual(
      Array(REPLICAS).fill([false, false]),
    );
    expect(await appliedMigrations(url, migrator)).toEqual({ total: 3, distinct: 3 });
  });
});

test("an up-to-date database: each adapter returns exactly the bare migrator's no-op, without the lock", async () => {
  // The lock is held elsewhere and the calls may not wait: touching the lock would throw MigrationLockBusyError.
  const calls: string[] = [];
  const lock = {
    wait: false,
    logger: null,
    hooks: { onWaiting: () => calls.push('waiting'), onAcquired: () => calls.push('acquired') },
  };
  const knex = knexFactory({ client: 'pg', connection: noOpUrl });
  const pool = new pg.Pool({ connectionString: noOpUrl, max: 1 });
  const npmOptions = {
    databaseUrl: noOpUrl,
    dir: fixture('node-pg-migrate/migrations'),
    direction: 'up' as const,
    migrationsTable: 'pgmigrations',
    log: () => {},
  };
  const knexConfig = { directory: fixture('knex/migrations') };
  const drizzleConfig = { migrationsFolder: fixture('drizzle/migrations') };
  try {
    await knex.migrate.latest(knexConfig);
    await withClient(noOpUrl, (client) => client.query('DROP TABLE widgets, migration_session'));
    await bareRunner(npmOptions);
    await withClient(noOpUrl, (client) => client.query('DROP TABLE widgets, migration_session'));
    await bareDrizzleMigrate(drizzle({ client: pool }), drizzleConfig);

    const release = await holdLock(noOpUrl, DEFAULT_LOCK_KEY);
    const releaseOwn = await holdLock(noOpUrl, NODE_PG_MIGRATE_KEY);
    try {
      const bareKnex = await knex.migrate.latest(knexConfig);
      expect(bareKnex).toEqual([1, []]);
      expect(await latest(knex, { ...knexConfig, lock })).toEqual(bareKnex);
      expect(await runner({ ...npmOptions, lock })).toEqual([]);
      expect(await drizzleMigrate(drizzle({ client: pool }), { ...drizzleConfig, lock })).toBeUndefined();
    } finally {
      await release();
      await releaseOwn();
    }
    expect(calls).toEqual([]);
  } finally {
    await knex.destroy();
    await pool.end();
  }
});
