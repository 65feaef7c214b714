import { drizzle } from 'drizzle-orm/node-postgres';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { DataSource } from 'typeorm';
import { describe, expect, test } from 'vitest';
import { getLockStatus, MigrationLockBusyError, MigrationLockError, withMigrationLock } from '../src/index.js';
import { SKIPPED, withMigrationLockUnless } from '../src/lock/lock.js';
import { poolerAdvice, unsupportedServer } from '../src/lock/server-checks.js';
import { createTestDatabase, lockRows, waitFor, withClient } from './helpers.js';

const url = await createTestDatabase();
/** How many sessions wait for `key` in this database (other test files wait for keys of their own). */
const waiters = async (key: bigint) => (await getLockStatus(url, key)).waiters.length;
/** Waiters of `key` idle after a try (their last statement a poll): they move next on a wake-up or their poll. */
const napping = (key: bigint) =>
  withClient(url, async (client) => {
    const { rows } = await client.query(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'idle'
         AND query LIKE $1 AND query LIKE '%pg_try_advisory_lock(%'`,
      [`/* pg-migration-lock: waiting for ${key} since %`],
    );
    return rows[0].n as number;
  });
const quiet = { logger: null };
const SETTINGS = `SELECT current_setting('tcp_keepalives_idle') AS idle, current_setting('tcp_keepalives_interval') AS interval,
  current_setting('tcp_keepalives_count') AS count, current_setting('tcp_user_timeout') AS user_timeout,
  current_setting('client_connection_check_interval', true) AS check_interval`;
const OURS = { idle: '10', interval: '5', count: '4', user_timeout: '30000' };
const THEIRS = { idle: '77', interval: '7', count: '3', user_timeout: '0' };

describe('server-side keepalive on every lock session', () => {
  for (const form of ['pool', 'client'] as const) {
    test(`${form}: set while fn runs (and while waiting), put back before the session goes back`, async () => {
      const pool = new pg.Pool({ connectionString: url, max: 1 });
      const client = form === 'client' ? await pool.connect() : undefined;
      try {
        // The session's own values, as a role or an app may have set them.
        const own = client ?? pool;
        await own.query('SET tcp_keepalives_idle = 77; SET tcp_keepalives_interval = 7; SET tcp_keepalives_count = 3');
        const source = client ?? pool;
        const inside = await withMigrationLock(
          source,
          91n,
          async ({ client: c }) => (await c.query(SETTINGS)).rows[0],
          quiet,
        );
        expect(inside).toMatchObject(OURS);
        if (inside.check_interval !== null) expect(inside.check_interval).toBe('5s');
        expect((await own.query(SETTINGS)).rows[0]).toMatchObject(THEIRS);

        // Refused (busy) and after waiting: put back too.
        await withMigrationLock(
          url,
          91n,
          () =>
            expect(withMigrationLock(source, 91n, () => {}, { ...quiet, wait: false })).rejects.toThrow(
              MigrationLockBusyError,
            ),
          quiet,
        );
        expect((await own.query(SETTINGS)).rows[0]).toMatchObject(THEIRS);
        let release!: () => void;
        const holding = withMigrationLock(url, 91n, () => new Promise<void>((r) => (release = r)), quiet);
        await waitFor(async () => (await lockRows(url, 91n)).length === 1);
        const waited = withMigrationLock(
          source,
          91n,
          async ({ client: c }) => (await c.query(SETTINGS)).rows[0],
          quiet,
        );
        await waitFor(() => release !== undefined);
        setTimeout(() => release(), 300);
        await holding;
        expect(await waited).toMatchObject(OURS);
        expect((await own.query(SETTINGS)).rows[0]).toMatchObject(THEIRS);
        expect((await own.query('SELECT count(*)::int AS n FROM pg_listening_channels()')).rows[0].n).toBe(0);
      } finally {
        client?.release();
        await pool.end();
      }
    });
  }
});

describe('withMigrationLockUnless (adapters: re-check at each release instead of queueing)', () => {
  test('a waiter whose work is done skips without the lock, and hands the wake-up on to a plain waiter', async () => {
    let release!: () => void;
    const holding = withMigrationLock(url, 92n, () => new Promise<void>((r) => (release = r)), quiet);
    await waitFor(() => release !== undefined);
    let done = false;
    const checkedOn: unknown[] = [];
    // It polls only every 10 s too: a periodic try that lands just as the holder lets go would take the
    // lock (rightly: fn's migrator then finds nothing), which is not what this test is about.
    const skipping = withMigrationLockUnless(
      url,
      92n,
      () => 'ran',
      { ...quiet, pollIntervalMs: 10_000 },
      {
        isDone: async ({ client }) => {
          checkedOn.push(client);
          return done;
        },
      },
    );
    // The plain waiter polls only every 10 s: it can start quickly only if the wake-up reaches it.
    let plainStartedAt = 0;
    const plain = withMigrationLock(url, 92n, () => (plainStartedAt = performance.now()), {
      ...quiet,
      pollIntervalMs: 10_000,
    });
    // Both napping after a try: a release that came between one's registration and its first try would let that
    // try take the lock (rightly), which is not what this test is about.
    await waitFor(async () => (await waiters(92n)) === 2 && (await napping(92n)) === 2);
    done = true;
    const releasedAt = performance.now();
    release();
    await holding;
    expect(await skipping).toBe(SKIPPED);
    await plain;
    expect(plainStartedAt - releasedAt).toBeLessThan(2_000);
    expect(checkedOn.length).toBeGreaterThanOrEqual(1);
    expect(typeof (checkedOn[0] as pg.ClientBase).query).toBe('function');
    expect(await lockRows(url, 92n)).toEqual([]);
  });

  test('nothing to do: skipped before queueing, on the one session the call opened, without touching the lock', async () => {
    let release!: () => void;
    const holding = withMigrationLock(url, 95n, () => new Promise<void>((r) => (release = r)), quiet);
    await waitFor(() => release !== undefined);
    let checkedOn: pg.ClientBase | undefined;
    const result = await withMigrationLockUnless(
      url,
      95n,
      () => 'ran',
      { ...quiet, wait: false },
      {
        isDone: async ({ client }) => {
          checkedOn = client;
          return true;
        },
      },
    );
    // wait: false with the lock held would have thrown MigrationLockBusyError had the lock been tried.
    expect(result).toBe(SKIPPED);
    expect(typeof checkedOn?.query).toBe('function');
    release();
    await holding;
  });

  test('a waiter with work left takes the lock and runs fn; an error of isDone reaches the caller as it is', async () => {
    let release!: () => void;
    const holding = withMigrationLock(url, 93n, () => new Promise<void>((r) => (release = r)), quiet);
    await waitFor(() => release !== undefined);
    const running = withMigrationLockUnless(url, 93n, () => 'ran', quiet, { isDone: async () => false });
    await waitFor(async () => (await waiters(93n)) === 1);
    release();
    await holding;
    expect(await running).toBe('ran');

    const corrupt = new Error('The migration directory is corrupt');
    let release2: (() => void) | undefined;
    const holding2 = withMigrationLock(url, 93n, () => new Promise<void>((r) => (release2 = r)), quiet);
    await waitFor(() => release2 !== undefined);
    let checks = 0;
    // The first waiter's session, closed, can still be listed for a moment: count only the next one.
    await waitFor(async () => (await waiters(93n)) === 0);
    const failing = withMigrationLockUnless(
      url,
      93n,
      () => 'ran',
      quiet,
      // Checked before queueing (work left), then again at the release: there it fails.
      { isDone: async () => (checks++ === 0 ? false : Promise.reject(corrupt)) },
    ).catch((err: unknown) => err);
    // Napping after a try, so the release is heard, not found by a try already on its way (under load, once).
    await waitFor(async () => (await waiters(93n)) === 1 && (await napping(93n)) === 1);
    release2!();
    await holding2;
    expect(await failing).toBe(corrupt);
    expect(checks).toBe(2);
    expect(await lockRows(url, 93n)).toEqual([]);
  });
});

describe('servers and poolers that cannot lock', () => {
  test('CockroachDB and YugabyteDB are named from version(); PostgreSQL is not', () => {
    expect(unsupportedServer('CockroachDB CCL v23.1.11 (x86_64-pc-linux-gnu, built 2023/09/27)')).toBe('CockroachDB');
    expect(unsupportedServer('PostgreSQL 11.2-YB-2.20.1.0-b0 on x86_64-pc-linux-gnu')).toBe('YugabyteDB');
    expect(unsupportedServer('PostgreSQL 16.4 (Debian 16.4-1.pgdg120+1) on x86_64-pc-linux-gnu')).toBeUndefined();
  });

  test('the pooler advice names the culprit from the endpoint', () => {
    expect(poolerAdvice({ endpoint: { host: 'aws-0-eu-central-1.pooler.supabase.com', port: 6543 } })).toMatch(
      /Port 6543 is Supabase's transaction pooler/,
    );
    expect(
      poolerAdvice({ endpoint: { host: 'ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech', port: 5432 } }),
    ).toMatch(/Neon's pooled endpoint .*: use its direct host, ep-cool-darkness-123456\.us-east-2\.aws\.neon\.tech\./);
    expect(poolerAdvice({ endpoint: { host: 'db.example.com', port: 5432 } })).toMatch(/PgBouncer pool_mode = session/);
  });
});

describe('bad input: a clear error before any query, and no lock left behind', () => {
  const rejectsEarly: [string, () => Promise<unknown>, RegExp][] = [
    [
      'timeoutMs negative',
      () => withMigrationLock(url, 1n, () => {}, { timeoutMs: -1 }),
      /`timeoutMs` to be a finite number of milliseconds >= 0/,
    ],
    ['timeoutMs a string', () => withMigrationLock(url, 1n, () => {}, { timeoutMs: '5s' as never }), /`timeoutMs`/],
    ['reportEveryMs 0', () => withMigrationLock(url, 1n, () => {}, { reportEveryMs: 0 }), /`reportEveryMs`/],
    ['wait a string', () => withMigrationLock(url, 1n, () => {}, { wait: 'no' as never }), /`wait` to be a boolean/],
    [
      'a hook that is not a function',
      () => withMigrationLock(url, 1n, () => {}, { hooks: { onAcquired: 1 as never } }),
      /hook `onAcquired`/,
    ],
    [
      'a logger without warn',
      () => withMigrationLock(url, 1n, () => {}, { logger: { info() {} } as never }),
      /`logger` to have info, warn and error/,
    ],
    [
      'signal not an AbortSignal',
      () => withMigrationLock(url, 1n, () => {}, { signal: {} as never }),
      /`signal` to be an AbortSignal/,
    ],
    [
      'applicationName a number',
      () => withMigrationLock(url, 1n, () => {}, { applicationName: 1 as never }),
      /`applicationName` to be a string/,
    ],
    ['fn not a function', () => withMigrationLock(url, 1n, 'migrate' as never), /`fn` to be a function/],
    ['client null', () => withMigrationLock(null as never, 1n, () => {}), /Expected `client` to be a pg.Pool/],
    ['client an empty string', () => withMigrationLock('', 1n, () => {}), /empty string/],
    [
      'a client never connected',
      () => withMigrationLock(new pg.Client(url), 1n, () => {}),
      /call `await client.connect\(\)` first/,
    ],
    [
      'a URL that does not parse',
      () => withMigrationLock('postgres://u:s3cret-PASS@[bad/db', 1n, () => {}),
      /not a valid URL/,
    ],
    [
      'a port out of range',
      () => withMigrationLock('postgres://u:s3cret-PASS@127.0.0.1:99999/db', 1n, () => {}),
      /port must be 1-65535/,
    ],
    [
      'not a URL at all',
      () => withMigrationLock('db.example.com:5432/app?password=s3cret-PASS', 1n, () => {}),
      /got a db.example.com: URL|got a string that is not a URL/,
    ],
    [
      'another database',
      () => withMigrationLock('mysql://u:s3cret-PASS@127.0.0.1/db', 1n, () => {}),
      /got a mysql: URL/,
    ],
    ['key fractional', () => withMigrationLock(url, 1.5, () => {}), /Invalid lock key/],
    // Objects that are not a lock source: named, with what to pass instead, before pg could read them as a
    // config and connect with the PG* environment.
    [
      'a Kysely instance',
      () =>
        withMigrationLock(new Kysely({ dialect: new PostgresDialect({ pool: new pg.Pool() }) }) as never, 1n, () => {}),
      /got a Kysely instance: pass the pg.Pool of its dialect \(or a URL\)/,
    ],
    [
      'a drizzle database',
      () => withMigrationLock(drizzle({ client: new pg.Pool() }) as never, 1n, () => {}),
      /got a drizzle database: pass its client \(db.\$client\)/,
    ],
    [
      'a TypeORM DataSource',
      () => withMigrationLock(new DataSource({ type: 'postgres' }) as never, 1n, () => {}),
      /got a TypeORM DataSource: use pg-migration-lock\/typeorm/,
    ],
    ['an empty object', () => withMigrationLock({}, 1n, () => {}), /a config that names no server/],
    [
      'an object with keys a pg config does not have',
      () => withMigrationLock({ url: 'postgres://u:s3cret-PASS@db/app' } as never, 1n, () => {}),
      /got an object with `url`, which a pg client config does not have/,
    ],
    ['a class instance', () => withMigrationLock(new Map() as never, 1n, () => {}), /got an instance of Map/],
  ];
  for (const [name, call, message] of rejectsEarly) {
    test(name, async () => {
      const error = await call().catch((err: unknown) => err);
      expect(error instanceof TypeError || error instanceof RangeError).toBe(true);
      expect(String(error)).toMatch(message);
      expect(String(error)).not.toContain('s3cret-PASS');
    });
  }

  const port = new URL(url).port;
  const connectFailures: [string, string, RegExp][] = [
    ['unreachable server', 'postgres://migrator:s3cret-PASS@127.0.0.1:1/app', /ECONNREFUSED/],
    ['wrong password', `postgres://postgres:s3cret-PASS@127.0.0.1:${port}/postgres`, /password authentication failed/],
    ['missing database', url.replace(/\/[^/?]+(\?|$)/, '/no_such_db$1'), /database "no_such_db" does not exist/],
  ];
  for (const [name, target, message] of connectFailures) {
    test(`${name}: the driver's own error, at once, without the password`, async (ctx) => {
      // A server with trust authentication (the machine's own, in CI's second run) takes any password.
      if (name === 'wrong password' && (await withClient(target, async () => true).catch(() => false))) {
        ctx.skip('this server trusts every password');
      }
      let called = false;
      const lines: string[] = [];
      const logger = { info: (l: string) => lines.push(l), warn: (l: string) => lines.push(l), error: () => {} };
      const error = await withMigrationLock(target, 94n, () => (called = true), { logger }).catch((err: Error) => err);
      expect(String(error)).toMatch(message);
      expect(String(error)).not.toContain('s3cret-PASS');
      expect(called).toBe(false);
      // At once: no reconnect was tried before the error came back.
      expect(lines).toEqual([]);
    });
  }
});

describe('calls that could only hang or exclude nobody are refused at once', () => {
  test("a client inside a transaction block: MigrationLockError; the caller's transaction and settings are untouched", async () => {
    await withClient(url, async (client) => {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      await client.query("SET LOCAL statement_timeout = '7s'");
      const error = await withMigrationLock(client, 96n, () => 'ran', quiet).catch((err: unknown) => err);
      expect(error).toBeInstanceOf(MigrationLockError);
      expect((error as Error).message).toMatch(/inside a transaction block.*COMMIT or ROLLBACK first/);
      expect(await lockRows(url, 96n)).toEqual([]);
      const { rows } = await client.query(
        "SELECT current_setting('transaction_isolation') AS iso, current_setting('statement_timeout') AS st, current_setting('tcp_keepalives_idle') AS idle",
      );
      expect(rows[0]).toMatchObject({ iso: 'repeatable read', st: '7s' });
      await client.query('COMMIT');
      // Outside the block, the same client locks.
      expect(await withMigrationLock(client, 96n, () => 'ran', quiet)).toBe('ran');
    });
  });

  test('a call nested in fn on the key its own caller holds (same pool): refused at once, the outer call goes on', async () => {
    const pool = new pg.Pool({ connectionString: url, max: 3 });
    try {
      const inner = await withMigrationLock(
        pool,
        97n,
        () => withMigrationLock(pool, 97n, () => 'inner ran', quiet).catch((err: unknown) => err),
        quiet,
      );
      expect(inner).toBeInstanceOf(MigrationLockError);
      expect((inner as Error).message).toMatch(/held by the very call this one runs inside/);
      // A sibling call in the same process (not nested) still waits its turn.
      let release!: () => void;
      const first = withMigrationLock(pool, 97n, () => new Promise<void>((r) => (release = r)), quiet);
      await waitFor(() => release !== undefined);
      const second = withMigrationLock(pool, 97n, () => 'second ran', quiet);
      await waitFor(async () => (await waiters(97n)) === 1);
      release();
      await first;
      expect(await second).toBe('second ran');
    } finally {
      await pool.end();
    }
  });
});
