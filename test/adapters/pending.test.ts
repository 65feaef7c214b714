// `pending` in every adapter: what the migrator would run, by name, without creating anything or taking
// the lock. Each answer is checked against the migrator itself: what it lists, runs or refuses next.
import { drizzle } from 'drizzle-orm/node-postgres';
import { migrate as bareMigrate } from 'drizzle-orm/node-postgres/migrator';
import knexFactory, { type Knex } from 'knex';
import { runner as bareRunner, type RunnerOption } from 'node-pg-migrate';
import pg from 'pg';
import { describe, expect, test } from 'vitest';
import { pending as drizzlePending } from '../../adapters/drizzle.js';
import { pending as knexPending } from '../../adapters/knex.js';
import { pending as nodePgMigratePending } from '../../adapters/node-pg-migrate.js';
import { race } from '../fixtures/adapters/race.mjs';
import { createTestDatabase, fixture, silentKnexLog, withClient } from '../helpers.js';

const [knexUrl, knexSchemaUrl, npmUrl, npmOrderUrl, npmV8Url, drizzleUrl, drizzleRuleUrl, npmV7Url, npmV7OrderUrl] =
  await Promise.all([
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
const silentLog = () => {};

/** Every relation and schema in the database, to prove a check created none. */
async function catalog(url: string): Promise<string[]> {
  return withClient(url, async (client) => {
    const { rows } = await client.query(
      `SELECT n.nspname || '.' || c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
       UNION ALL SELECT nspname FROM pg_namespace ORDER BY 1`,
    );
    return rows.map((row) => row.name);
  });
}

describe('knex', () => {
  const directory = fixture('knex/migrations');
  const ALL = ['001_create_widgets.cjs', '002_slow_add_size.cjs', '003_index_name.cjs'];

  test('agrees with migrate.list at every step, creates nothing, and fails like it on a corrupt directory', async () => {
    const db = knexFactory({ client: 'pg', connection: knexUrl, log: silentKnexLog });
    try {
      const before = await catalog(knexUrl);
      expect(await knexPending(db, { directory })).toEqual(ALL);
      expect(await catalog(knexUrl)).toEqual(before); // no knex_migrations, no knex_migrations_lock

      const listed = async () => (await db.migrate.list({ directory }))[1].map((m: { file: string }) => m.file);
      expect(await listed()).toEqual(ALL);
      await db.migrate.up({ directory });
      expect(await knexPending(db, { directory })).toEqual(ALL.slice(1));
      expect(await listed()).toEqual(ALL.slice(1));
      const [, ran] = await db.migrate.latest({ directory });
      expect(ran).toEqual(ALL.slice(1));
      expect(await knexPending(db, { directory, lock: { timeoutMs: 1 } })).toEqual([]);

      await db('knex_migrations').insert({ name: '000_gone.cjs', batch: 1, migration_time: new Date() });
      const corrupt = 'The migration directory is corrupt, the following files are missing: 000_gone.cjs';
      await expect(db.migrate.list({ directory })).rejects.toThrow(corrupt);
      await expect(knexPending(db, { directory })).rejects.toThrow(corrupt);
      await expect(knexPending(db, { directory, disableMigrationsListValidation: true })).resolves.toEqual([]);
    } finally {
      await db.destroy();
    }
  });

  test("schemaName, tableName and the knex instance's own migrations config are honoured like knex does", async () => {
    await withClient(knexSchemaUrl, (client) => client.query('CREATE SCHEMA app'));
    const db = knexFactory({
      client: 'pg',
      connection: knexSchemaUrl,
      log: silentKnexLog,
      migrations: { directory, schemaName: 'app', tableName: 'history' },
    });
    try {
      await db.migrate.up();
      expect(await knexPending(db)).toEqual(ALL.slice(1));
      // Another table in the same schema has run nothing yet.
      expect(await knexPending(db, { tableName: 'other' })).toEqual(ALL);
      // Only .js files count: the applied 001_….cjs is then "missing", for knex and for the check.
      const corrupt = /directory is corrupt, the following files are missing: 001_create_widgets.cjs$/;
      await expect(db.migrate.list({ loadExtensions: ['.js'] })).rejects.toThrow(corrupt);
      await expect(knexPending(db, { loadExtensions: ['.js'] })).rejects.toThrow(corrupt);
    } finally {
      await db.destroy();
    }
  });

  test('rejects what is not a pg knex, before connecting', async () => {
    await expect(knexPending({} as Knex)).rejects.toThrow(/expected a knex instance for PostgreSQL/);
  });
});

describe('node-pg-migrate', () => {
  const dir = fixture('node-pg-migrate/migrations');
  const ALL = ['1700000000001_create-widgets', '1700000000002_slow-add-size', '1700000000003_index-name'];
  const options = (url: string, more: Partial<RunnerOption> = {}): RunnerOption => ({
    databaseUrl: url,
    dir,
    direction: 'up',
    migrationsTable: 'pgmigrations',
    log: silentLog,
    ...more,
  });
  const ran = async (opts: RunnerOption) => (await bareRunner(opts)).map((m) => m.name);

  test('agrees with what runner then runs (count, file, timestamp, down), and creates nothing', async () => {
    const before = await catalog(npmUrl);
    expect(await nodePgMigratePending(options(npmUrl))).toEqual(ALL);
    expect(await catalog(npmUrl)).toEqual(before); // no pgmigrations table
    expect(await nodePgMigratePending(options(npmUrl, { migrationsSchema: 'nowhere' }))).toEqual(ALL);

    const one = options(npmUrl, { count: 1 });
    expect(await nodePgMigratePending(one)).toEqual(ALL.slice(0, 1));
    expect(await ran(one)).toEqual(ALL.slice(0, 1));

    const byTimestamp = options(npmUrl, { count: 1700000000002, timestamp: true });
    expect(await nodePgMigratePending(byTimestamp)).toEqual([ALL[1]]);
    expect(await nodePgMigratePending(options(npmUrl, { file: ALL[2] }))).toEqual([ALL[2]]);

    const down = options(npmUrl, { direction: 'down', count: 1 });
    expect(await nodePgMigratePending(options(npmUrl))).toEqual(ALL.slice(1));
    expect(await ran(options(npmUrl))).toEqual(ALL.slice(1));
    expect(await nodePgMigratePending(options(npmUrl))).toEqual([]);
    expect(await nodePgMigratePending(down)).toEqual([ALL[2]]);
    expect(await nodePgMigratePending(options(npmUrl, { direction: 'down', count: 2 }))).toEqual([ALL[2], ALL[1]]);
    expect(await ran(down)).toEqual([ALL[2]]);
    expect(await nodePgMigratePending(options(npmUrl))).toEqual([ALL[2]]);
  });

  test('checkOrder fails exactly like runner (and passes with checkOrder: false), on a dbClient too', async () => {
    await ran(options(npmOrderUrl));
    await withClient(npmOrderUrl, (client) => client.query(`DELETE FROM pgmigrations WHERE name = '${ALL[0]}'`));
    const message = `Not run migration ${ALL[0]} is preceding already run migration ${ALL[1]}`;
    await expect(nodePgMigratePending(options(npmOrderUrl))).rejects.toThrow(message);
    await expect(bareRunner(options(npmOrderUrl))).rejects.toThrow(message);
    const client = new pg.Client(npmOrderUrl);
    await client.connect();
    try {
      const unordered = { ...options(npmOrderUrl, { checkOrder: false }), databaseUrl: undefined, dbClient: client };
      expect(await nodePgMigratePending(unordered as RunnerOption)).toEqual([ALL[0]]);
      expect(client.listenerCount('notification')).toBe(0); // the caller's client stays theirs, open
      expect((await client.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    } finally {
      await client.end();
    }
  });

  test('node-pg-migrate 8.x: the same names, in a real process resolving node-pg-migrate to 8.x', async () => {
    const outcome = await race({
      migrator: 'node-pg-migrate',
      mode: 'pending',
      replicas: 1,
      databaseUrl: npmV8Url,
      nodeArgs: ['--import', fixture('adapters/use-node-pg-migrate-v8.mjs')],
    });
    expect(outcome.results[0]?.stderr).toBe('');
    expect(outcome.results[0]?.result).toEqual({ pending: ALL, nodePgMigrate: expect.stringMatching(/-v8\//) });
  });

  test('node-pg-migrate 7.x: the same names, in a real process resolving node-pg-migrate to 7.x', async () => {
    const outcome = await race({
      migrator: 'node-pg-migrate',
      mode: 'pending',
      replicas: 1,
      databaseUrl: npmV7Url,
      nodeArgs: ['--import', fixture('adapters/use-node-pg-migrate-v7.mjs')],
    });
    expect(outcome.results[0]?.stderr).toBe('');
    expect(outcome.results[0]?.result).toEqual({ pending: ALL, nodePgMigrate: expect.stringMatching(/-v7\//) });
  });

  test('node-pg-migrate 7.x checks the order only when asked: an earlier migration not run is pending, not an error', async () => {
    await ran(options(npmV7OrderUrl));
    await withClient(npmV7OrderUrl, (client) => client.query(`DELETE FROM pgmigrations WHERE name = '${ALL[0]}'`));
    const outcome = await race({
      migrator: 'node-pg-migrate',
      mode: 'pending',
      replicas: 1,
      databaseUrl: npmV7OrderUrl,
      nodeArgs: ['--import', fixture('adapters/use-node-pg-migrate-v7.mjs')],
    });
    expect(outcome.results[0]?.stderr).toBe('');
    expect(outcome.results[0]?.result).toEqual({ pending: [ALL[0]], nodePgMigrate: expect.stringMatching(/-v7\//) });
  });

  test('rejects options without a connection, before connecting', async () => {
    await expect(nodePgMigratePending({ dir, direction: 'up' } as never)).rejects.toThrow(
      /either a databaseUrl or a dbClient/,
    );
  });
});

describe('drizzle', () => {
  const migrationsFolder = fixture('drizzle/migrations');
  const ALL = ['0000_create_widgets', '0001_slow_add_size', '0002_index_name'];

  test('agrees with what migrate applies, creates nothing (no drizzle schema), and names journal tags', async () => {
    const pool = new pg.Pool({ connectionString: drizzleUrl, max: 1 });
    try {
      const db = drizzle({ client: pool });
      const before = await catalog(drizzleUrl);
      expect(await drizzlePending(db, { migrationsFolder })).toEqual(ALL);
      expect(await catalog(drizzleUrl)).toEqual(before);
      await bareMigrate(db, { migrationsFolder });
      expect(await drizzlePending(db, { migrationsFolder })).toEqual([]);
      expect(await drizzlePending(db, { migrationsFolder, migrationsTable: 'other' })).toEqual(ALL);
      await expect(drizzlePending(db, { migrationsFolder: fixture('knex') })).rejects.toThrow(
        "Can't find meta/_journal.json file",
      );
    } finally {
      await pool.end();
    }
  });

  test("drizzle's created_at rule: only migrations later than the last recorded one, even if earlier ones never ran", async () => {
    const client = new pg.Client(drizzleRuleUrl);
    await client.connect();
    try {
      const db = drizzle(client);
      await client.query(`CREATE SCHEMA drizzle; CREATE TABLE drizzle.__drizzle_migrations
        (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint); CREATE TABLE widgets (id int, name text)`);
      // Recorded: the second migration only (e.g. a squashed history). drizzle skips the first for good.
      await client.query(`INSERT INTO drizzle.__drizzle_migrations (hash, created_at) VALUES ('x', 1700000000002)`);
      expect(await drizzlePending(db, { migrationsFolder })).toEqual([ALL[2]]);
      await client.query('ALTER TABLE widgets ADD COLUMN size int');
      await bareMigrate(db, { migrationsFolder });
      const { rows } = await client.query('SELECT created_at FROM drizzle.__drizzle_migrations ORDER BY id');
      expect(rows.map((row) => Number(row.created_at))).toEqual([1700000000002, 1700000000003]);
      // A row without created_at sorts first in drizzle's "order by created_at desc": everything is pending again.
      await client.query(`INSERT INTO drizzle.__drizzle_migrations (hash) VALUES ('y')`);
      expect(await drizzlePending(db, { migrationsFolder })).toEqual(ALL);
    } finally {
      await client.end();
    }
  });
});
