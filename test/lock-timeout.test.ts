// lockTimeoutMs + lockRetries on withMigrationLock: a migration blocked behind a long transaction gives up its table
// lock wait instead of stalling the app's queries, is tried again with the lock held, and names who blocked it.
import pg from 'pg';
import postgres from 'postgres';
import { describe, expect, test } from 'vitest';
import { type Logger, MigrationBlockedError, withMigrationLock } from '../src/index.js';
import { isLockTimeout } from '../src/lock/retry.js';
import { expectAppliedOnceAfterReader } from './fixtures/lock-timeout/expect.js';
import { applied, blockedMigration, prepare } from './fixtures/lock-timeout/scenario.mjs';
import { createTestDatabase, lockRows, withClient } from './helpers.js';

const url = await createTestDatabase();
const KEY = 4242n;

function recording() {
  const lines: string[] = [];
  const logger: Logger = {
    debug: () => {},
    info: (m) => lines.push(`info ${m}`),
    warn: (m) => lines.push(`warn ${m}`),
    error: (m) => lines.push(`error ${m}`),
  };
  return { logger, lines };
}

/** The wrapped migration: a transaction that adds a column to the app's table and records that it applied. */
async function addColumn(client: pg.ClientBase): Promise<void> {
  await client.query('BEGIN');
  // No ROLLBACK on failure, as a careless fn: the retry must end the aborted transaction itself.
  await client.query('ALTER TABLE app_data ADD COLUMN extra int');
  await client.query('INSERT INTO lt_runs DEFAULT VALUES');
  await client.query('COMMIT');
}

describe('options', () => {
  test.each([
    [{ lockTimeoutMs: '500' }, TypeError, 'Expected `lockTimeoutMs` to be a number, got string'],
    [{ lockTimeoutMs: 0 }, RangeError, 'Expected `lockTimeoutMs` to be a whole number from 1 to 2147483647, got 0'],
    [{ lockTimeoutMs: 1.5 }, RangeError, 'got 1.5'],
    [{ lockTimeoutMs: 2 ** 31 }, RangeError, 'got 2147483648'],
    [{ lockRetries: -1 }, RangeError, 'Expected `lockRetries` to be a whole number from 0 to 1000, got -1'],
    [{ lockRetries: null }, TypeError, 'Expected `lockRetries` to be a number, got object'],
    [{ lockTimeOutMs: 500 }, TypeError, 'Unknown option lockTimeOutMs; did you mean lockTimeoutMs?'],
    [{ lockRetry: 3 }, TypeError, 'Unknown option lockRetry; did you mean lockRetries?'],
  ])('%o is refused before anything connects', async (options, type, message) => {
    let called = false;
    const call = withMigrationLock('postgres://nobody@127.0.0.1:1/none', KEY, () => (called = true), options as never);
    await expect(call).rejects.toThrow(type);
    await expect(call).rejects.toThrow(message);
    expect(called).toBe(false);
  });

  test('a lock timeout is found through the wrappers of migrators', () => {
    const pgError = Object.assign(new Error('canceling statement due to lock timeout'), { code: '55P03' });
    expect(isLockTimeout(pgError)).toBe(true);
    expect(isLockTimeout(new Error('migration failed', { cause: pgError }))).toBe(true); // umzug, drizzle
    expect(isLockTimeout(Object.assign(new Error('QueryFailedError'), { driverError: pgError }))).toBe(true); // TypeORM
    expect(isLockTimeout(Object.assign(new Error('SequelizeDatabaseError'), { parent: pgError }))).toBe(true);
    expect(isLockTimeout(Object.assign(new Error('LockWaitTimeoutException'), { sqlState: '55P03' }))).toBe(true);
    expect(isLockTimeout({ error: pgError })).toBe(true); // kysely's result
    expect(isLockTimeout(new AggregateError([new Error('x'), pgError]))).toBe(true);
    expect(isLockTimeout(Object.assign(new Error('deadlock detected'), { code: '40P01' }))).toBe(false);
    const loop: { cause?: unknown } = {};
    loop.cause = loop;
    expect(isLockTimeout(loop)).toBe(false);
  });
});

describe('a migration blocked behind a reader', () => {
  test('without the option, the app queues behind the waiting ALTER for the whole hold', async () => {
    await prepare(url);
    const pool = new pg.Pool({ connectionString: url });
    try {
      const result = await blockedMigration(
        url,
        () => withMigrationLock(pool, KEY, ({ client }) => addColumn(client), { logger: null }),
        { holdMs: 4000 },
      );
      expect(result.error).toBeUndefined();
      expect(result.worstMs).toBeGreaterThan(3000);
    } finally {
      await pool.end();
    }
  });

  test('with lockTimeoutMs 500, the app keeps going; the migration applies once, after the reader, and the log names it', async () => {
    await prepare(url);
    const pool = new pg.Pool({ connectionString: url });
    const { logger, lines } = recording();
    let tries = 0;
    try {
      const result = await blockedMigration(
        url,
        () =>
          withMigrationLock(
            url,
            KEY,
            async ({ client }) => {
              tries++;
              await addColumn(client);
              return (await client.query('SHOW lock_timeout')).rows[0].lock_timeout;
            },
            { logger, lockTimeoutMs: 500, lockRetries: 30 },
          ),
        { holdMs: 4000 },
      );
      expect(result.error).toBeUndefined();
      // fn ran with the session's lock_timeout set to the option.
      expect(result.value).toBe('500ms');
      expect(result.worstMs).toBeLessThan(2000);
      expect(result.endedBeforeReader).toBe(false);
      expect(tries).toBeGreaterThanOrEqual(2);
      await expectAppliedOnceAfterReader(url, result.readerEndedAt);
      const retried = lines.filter((line) => line.startsWith('warn ') && line.includes('trying again'));
      expect(retried).toHaveLength(tries - 1);
      // Seen while it blocked (a URL lets a second session of our own look; never a pool's), by pid, name and statement.
      expect(retried[0]).toContain(`try 1 of 31: a statement waited longer than lock_timeout 500ms for a table lock`);
      expect(retried[0]).toContain(
        `held by pid ${result.readerPid} (application_name long-reader), idle in transaction`,
      );
      expect(retried[0]).toContain(': SELECT count(*) FROM app_data');
      expect(retried[0]).not.toContain('probably');
      // Given back with the lock_timeout it had.
      const { rows } = await pool.query('SHOW lock_timeout');
      expect(rows[0].lock_timeout).toBe('0');
    } finally {
      await pool.end();
    }
  });

  test('retries exhausted: fails naming the blocker and the tries; lock released, nothing applied, settings back', async () => {
    await prepare(url);
    // A client of the caller's: no second session to look with, so the blocker is found after the fact.
    const client = new pg.Client(url);
    await client.connect();
    await client.query("SET lock_timeout = '7s'");
    const { logger, lines } = recording();
    let tries = 0;
    try {
      const result = await blockedMigration(
        url,
        () =>
          withMigrationLock(
            client,
            KEY,
            async ({ client: session }) => {
              tries++;
              await addColumn(session);
            },
            { logger, lockTimeoutMs: 200, lockRetries: 2 },
          ),
        { holdMs: 6000 },
      );
      expect(result.endedBeforeReader).toBe(true);
      const error = result.error as MigrationBlockedError;
      expect(error).toBeInstanceOf(MigrationBlockedError);
      expect(error.tries).toBe(3);
      expect(tries).toBe(3);
      expect(error.code).toBe('55P03');
      expect((error.cause as { code?: string }).code).toBe('55P03');
      expect(error.blockers[0]).toMatchObject({
        pid: result.readerPid,
        applicationName: 'long-reader',
        seen: 'likely',
      });
      expect(error.message).toContain('gave up after 3 tries');
      expect(error.message).toContain(`probably pid ${result.readerPid} (application_name long-reader)`);
      expect(lines.filter((line) => line.includes('trying again'))).toHaveLength(2);
      expect(await lockRows(url, KEY)).toEqual([]);
      expect(await applied(url)).toEqual({ runs: [], column: false });
      const { rows } = await client.query('SHOW lock_timeout');
      expect(rows[0].lock_timeout).toBe('7s');
    } finally {
      await client.end();
    }
  });
});

describe('what is not a lock wait', () => {
  test('a long statement that waits for no lock is not cut, and fn runs once', async () => {
    let tries = 0;
    const value = await withMigrationLock(
      url,
      KEY,
      async ({ client }) => {
        tries++;
        await client.query('SELECT pg_sleep(0.5)');
        return (await client.query('SHOW lock_timeout')).rows[0].lock_timeout;
      },
      { logger: null, lockTimeoutMs: 100 },
    );
    expect(value).toBe('100ms');
    expect(tries).toBe(1);
  });

  test('postgres.js: the reserved session gets the lock_timeout, and a retry finds the blocker', async () => {
    await prepare(url);
    const sql = postgres(url, { max: 3, onnotice: () => {} });
    const { logger, lines } = recording();
    let tries = 0;
    try {
      const result = await blockedMigration(
        url,
        () =>
          withMigrationLock(
            sql,
            KEY,
            async ({ client }) => {
              tries++;
              const [shown] = (await client.unsafe('SHOW lock_timeout')) as unknown as { lock_timeout: string }[];
              await client.unsafe('BEGIN');
              await client.unsafe('ALTER TABLE app_data ADD COLUMN extra int');
              await client.unsafe('INSERT INTO lt_runs DEFAULT VALUES');
              await client.unsafe('COMMIT');
              return shown!.lock_timeout;
            },
            { logger, lockTimeoutMs: 300, lockRetries: 30 },
          ),
        { holdMs: 1500 },
      );
      expect(result.error).toBeUndefined();
      expect(result.value).toBe('300ms');
      expect(tries).toBeGreaterThanOrEqual(2);
      expect(lines.find((line) => line.includes('trying again'))).toContain(
        `pid ${result.readerPid} (application_name long-reader)`,
      );
      expect((await applied(url)).runs).toHaveLength(1);
    } finally {
      await sql.end();
    }
  });

  test('another failure is not tried again', async () => {
    let tries = 0;
    const call = withMigrationLock(
      url,
      KEY,
      async ({ client }) => {
        tries++;
        await client.query('SELECT * FROM no_such_table');
      },
      { logger: null, lockTimeoutMs: 100, lockRetries: 5 },
    );
    await expect(call).rejects.toMatchObject({ code: '42P01' });
    expect(tries).toBe(1);
  });

  test("lockRetries alone retries a lock timeout of fn's own lock_timeout, and sets none", async () => {
    await prepare(url);
    const { lines, logger } = recording();
    let tries = 0;
    await withClient(url, async (reader) => {
      await reader.query("SET application_name = 'long-reader'");
      await reader.query('BEGIN');
      await reader.query('SELECT count(*) FROM app_data');
      const call = withMigrationLock(
        url,
        KEY,
        async ({ client }) => {
          tries++;
          if (tries === 1) expect((await client.query('SHOW lock_timeout')).rows[0].lock_timeout).toBe('0');
          // The reader goes away during the second try's wait.
          if (tries === 2) setTimeout(() => void reader.query('COMMIT'), 300);
          await client.query("SET lock_timeout = '1s'");
          await addColumn(client);
        },
        { logger, lockRetries: 3 },
      );
      await call;
    });
    expect(tries).toBe(2);
    expect(lines.filter((line) => line.includes('waited longer than its lock_timeout'))).toHaveLength(1);
    expect((await applied(url)).runs).toHaveLength(1);
  });
});
