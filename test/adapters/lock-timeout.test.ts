// The adapters' `lock` takes lockTimeoutMs and lockRetries: each migrator's ALTER TABLE, blocked behind a reader's
// open transaction, gives up its table lock wait after 500 ms (the app's queries go on), and the migrator's run is
// tried again with the advisory lock held until it applies, once, after the reader; the log names the reader.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { drizzle } from 'drizzle-orm/node-postgres';
import knexFactory from 'knex';
import { Kysely, PostgresDialect } from 'kysely';
import { FileMigrationProvider } from 'kysely/migration';
import pg from 'pg';
import { DataSource } from 'typeorm';
import { memoryStorage, Umzug } from 'umzug';
import { describe, expect, test } from 'vitest';
import { migrate as drizzleMigrate } from '../../adapters/drizzle.js';
import { latest } from '../../adapters/knex.js';
import { Migrator } from '../../adapters/kysely.js';
import { up as mikroUp } from '../../adapters/mikro-orm.js';
import { runner } from '../../adapters/node-pg-migrate.js';
import { runMigrations } from '../../adapters/typeorm.js';
import { up as umzugUp } from '../../adapters/umzug.js';
import type { Logger } from '../../src/index.js';
import { expectAppliedOnceAfterReader } from '../fixtures/lock-timeout/expect.js';
import { blockedMigration, prepare } from '../fixtures/lock-timeout/scenario.mjs';
import { ormFor } from '../fixtures/mikro-orm/orm.mjs';
import { createTestDatabase, fixture } from '../helpers.js';

const [knexUrl, npmUrl, drizzleUrl, kyselyUrl, typeormUrl, umzugUrl, mikroUrl] = (await Promise.all(
  Array.from({ length: 7 }, () => createTestDatabase()),
)) as [string, string, string, string, string, string, string];
const HOLD_MS = 3000;
const folder = (name: string) => fixture(`lock-timeout/${name}`);

function recording() {
  const warnings: string[] = [];
  const logger: Logger = { info() {}, warn: (m) => warnings.push(m), error() {} };
  return { logger, warnings };
}

/** Runs `migrate` (given the lock options) blocked behind the reader, and checks what the app and the log saw. */
async function expectUnblocked(url: string, migrate: (lock: object) => Promise<unknown>): Promise<unknown> {
  await prepare(url);
  const { logger, warnings } = recording();
  const result = await blockedMigration(url, () => migrate({ logger, lockTimeoutMs: 500, lockRetries: 30 }), {
    holdMs: HOLD_MS,
  });
  expect(result.error).toBeUndefined();
  // Without the option the app's worst query waits about the whole hold (test/lock-timeout.test.ts).
  expect(result.worstMs).toBeLessThan(HOLD_MS / 2);
  expect(result.endedBeforeReader).toBe(false);
  await expectAppliedOnceAfterReader(url, result.readerEndedAt);
  const retried = warnings.filter((line) => line.includes('trying again'));
  expect(retried.length).toBeGreaterThanOrEqual(1);
  expect(retried[0]).toContain('waited longer than lock_timeout 500ms for a table lock');
  expect(retried[0]).toContain(`pid ${result.readerPid} (application_name long-reader)`);
  expect(retried[0]).toContain('SELECT count(*) FROM app_data');
  return result.value;
}

describe('a migration blocked behind a reader, with lockTimeoutMs 500', () => {
  test('knex', async () => {
    const db = knexFactory({ client: 'pg', connection: knexUrl, log: { warn() {}, error() {}, debug() {} } });
    try {
      const [, log] = (await expectUnblocked(knexUrl, (lock) => latest(db, { directory: folder('knex'), lock }))) as [
        number,
        string[],
      ];
      expect(log).toEqual(['001_add_extra.cjs']);
    } finally {
      await db.destroy();
    }
  });

  test('node-pg-migrate', async () => {
    const ran = await expectUnblocked(npmUrl, (lock) =>
      runner({
        databaseUrl: npmUrl,
        dir: folder('node-pg-migrate'),
        direction: 'up',
        migrationsTable: 'pgmigrations',
        log: () => {},
        lock,
      }),
    );
    expect((ran as { name: string }[]).map((m) => m.name)).toEqual(['1700000000001_add-extra']);
  });

  test('drizzle', async () => {
    const pool = new pg.Pool({ connectionString: drizzleUrl });
    try {
      await expectUnblocked(drizzleUrl, (lock) =>
        drizzleMigrate(drizzle({ client: pool }), { migrationsFolder: folder('drizzle'), lock }),
      );
    } finally {
      await pool.end();
    }
  });

  test('kysely (its results come back as { error }: a lock timeout still retries)', async () => {
    const db = new Kysely<unknown>({
      dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: kyselyUrl }) }),
    });
    try {
      const provider = new FileMigrationProvider({ fs, path, migrationFolder: folder('kysely') });
      const result = (await expectUnblocked(kyselyUrl, (lock) =>
        new Migrator({ db, provider, lock }).migrateToLatest(),
      )) as { error?: unknown; results?: { migrationName: string; status: string }[] };
      expect(result.error).toBeUndefined();
      expect(result.results).toEqual([{ migrationName: '001_add_extra', direction: 'Up', status: 'Success' }]);
    } finally {
      await db.destroy();
    }
  });

  test('TypeORM', async () => {
    const dataSource = new DataSource({
      type: 'postgres',
      url: typeormUrl,
      migrations: [`${folder('typeorm')}/*.mjs`],
      logging: false,
    });
    await dataSource.initialize();
    try {
      const ran = await expectUnblocked(typeormUrl, (lock) => runMigrations(dataSource, { lock }));
      expect((ran as { name: string }[]).map((m) => m.name)).toEqual(['AddExtra1700000000001']);
    } finally {
      await dataSource.destroy();
    }
  });
});

describe('umzug and MikroORM take the options', () => {
  test('umzug: checked up front, and a run with them applies', async () => {
    let ran = 0;
    const umzug = new Umzug({
      migrations: [{ name: 'one', up: async () => void ran++ }],
      storage: memoryStorage(),
      logger: undefined,
    });
    await expect(umzugUp(umzug, umzugUrl, { lock: { lockRetries: -1 } })).rejects.toThrow(RangeError);
    await expect(umzugUp(umzug, umzugUrl, { lock: { lockTimeoutMs: 'soon' as never } })).rejects.toThrow(TypeError);
    expect(ran).toBe(0);
    const done = await umzugUp(umzug, umzugUrl, { lock: { logger: null, lockTimeoutMs: 500, lockRetries: 2 } });
    expect(done.map((m) => m.name)).toEqual(['one']);
    expect(ran).toBe(1);
  });

  test('MikroORM: checked up front, and a run with them applies', async () => {
    const orm = await ormFor(mikroUrl, 'migrations');
    try {
      await expect(mikroUp(orm, { lock: { lockRetrie: 2 } as never })).rejects.toThrow(
        'Unknown lock option lockRetrie; did you mean lockRetries?',
      );
      const done = await mikroUp(orm, { lock: { logger: null, lockTimeoutMs: 500, lockRetries: 2 } });
      expect(done.length).toBeGreaterThan(0);
    } finally {
      await orm.close();
    }
  });
});
