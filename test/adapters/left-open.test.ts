// A migration that opens a transaction and leaves it open, on the lock session an adapter borrowed from the app's
// own pool: at release it is rolled back (warned), and the connection goes back to the app's pool with the app's
// name and settings, so a next deploy's holder never takes it for a holding's work and terminates it.
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { DataSource, type MigrationInterface, type QueryRunner } from 'typeorm';
import { expect, test } from 'vitest';
import { Migrator } from '../../adapters/kysely.js';
import { runMigrations } from '../../adapters/typeorm.js';
import { type Logger, withMigrationLock } from '../../src/index.js';
import { createTestDatabase, sleep, withClient } from '../helpers.js';

const [kyselyUrl, typeormUrl] = await Promise.all([createTestDatabase(), createTestDatabase()]);

function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return { lines, info: (m) => lines.push(`info ${m}`), warn: (m) => lines.push(`warn ${m}`), error: () => {} };
}

/** The app querying on its own pool every 50 ms while a next deploy's holder takes the lock: the errors it saw. */
async function appQueriesThroughNextHolder(url: string, key: bigint, query: () => Promise<unknown>): Promise<string[]> {
  const errors: string[] = [];
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      await query().catch((err: Error) => errors.push(err.message));
      await sleep(50);
    }
  })();
  await sleep(150);
  await withMigrationLock(url, key, () => sleep(200), { logger: null });
  await sleep(150);
  stopped = true;
  await loop;
  return errors;
}

/** Application names of the database's sessions that carry a holding's tag. */
const tagged = (url: string) =>
  withClient(url, async (c) => {
    const { rows } = await c.query(
      `SELECT application_name FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'pg-migration-lock:%:%'`,
    );
    return rows.map((row) => row.application_name as string);
  });

test("kysely, a disableTransactions migration that runs BEGIN and never ends it: rolled back, the pool's connection untagged, the app never terminated", async () => {
  const pool = new pg.Pool({ connectionString: kyselyUrl, max: 1, application_name: 'kysely-app' });
  pool.on('error', () => {});
  const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
  try {
    const logger = recordingLogger();
    const migrator = new Migrator({
      db,
      disableTransactions: true,
      provider: {
        async getMigrations() {
          return {
            '001_left_open': {
              async up(db: Kysely<unknown>) {
                await sql`BEGIN`.execute(db);
                await sql`CREATE TABLE left_open_kysely (id int)`.execute(db);
              },
            },
          };
        },
      },
      lock: { logger },
    });
    await migrator.migrateToLatest();
    expect(
      logger.lines.some((line) => /warn fn left a transaction open on the lock session: rolling it back/.test(line)),
    ).toBe(true);
    const { rows } = await pool.query(
      `SELECT current_setting('application_name') AS app, to_regclass('left_open_kysely')::text AS t`,
    );
    expect(rows[0]).toEqual({ app: 'kysely-app', t: null });
    expect(await tagged(kyselyUrl)).toEqual([]);
    expect(await appQueriesThroughNextHolder(kyselyUrl, 3853314791062309107n, () => pool.query('SELECT 1'))).toEqual(
      [],
    );
  } finally {
    await db.destroy();
  }
});

/** A TypeORM migration that opts out of the run's transaction, opens one itself and leaves it open. */
class LeftOpen1700000000001 implements MigrationInterface {
  name = 'LeftOpen1700000000001';
  transaction = false;
  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query('BEGIN');
    await queryRunner.query('CREATE TABLE left_open_typeorm (id int)');
  }
  async down(): Promise<void> {}
}

test("TypeORM, transaction 'none' and a migration that runs BEGIN and never ends it: rolled back, the data source's connection untagged, the app never terminated", async () => {
  const dataSource = new DataSource({
    type: 'postgres',
    url: typeormUrl,
    migrations: [LeftOpen1700000000001],
    logging: false,
    poolSize: 1,
    applicationName: 'typeorm-app',
  });
  await dataSource.initialize();
  try {
    const logger = recordingLogger();
    await runMigrations(dataSource, { transaction: 'none', lock: { logger } });
    expect(
      logger.lines.some((line) => /warn fn left a transaction open on the lock session: rolling it back/.test(line)),
    ).toBe(true);
    const [row] = await dataSource.query(
      `SELECT current_setting('application_name') AS app, to_regclass('left_open_typeorm')::text AS t`,
    );
    expect(row).toEqual({ app: 'typeorm-app', t: null });
    expect(await tagged(typeormUrl)).toEqual([]);
    expect(
      await appQueriesThroughNextHolder(typeormUrl, -4853655304891776800n, () => dataSource.query('SELECT 1')),
    ).toEqual([]);
  } finally {
    await dataSource.destroy();
  }
});
