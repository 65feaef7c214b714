// The lock through postgres.js (npm `postgres`): a `sql` reserves one connection per call, a reserved
// `sql` is used as-is. Real server, real processes, nothing mocked.
import postgres from 'postgres';
import { afterAll, describe, expect, test } from 'vitest';
import { postgresJsSource } from '../src/driver/postgres-js.js';
import {
  getLockStatus,
  MigrationLockError,
  MigrationLockLostError,
  releaseLock,
  withMigrationLock,
} from '../src/index.js';
import { poolerAdvice } from '../src/server-checks.js';
import { findPgbouncer, startPgbouncer } from './fixtures/pooler/pgbouncer.js';
import {
  createTestDatabase,
  expectSerialSections,
  fixture,
  lockRows,
  resetSectionTables,
  sleep,
  spawnNode,
  waitFor,
  withClient,
} from './helpers.js';

const url = await createTestDatabase();
const quiet = { logger: null };
const opened: postgres.Sql[] = [];
/** A postgres.js sql on the test database, ended after the file. */
const connect = (options: { max?: number } = {}) => {
  const sql = postgres(url, { onnotice: () => {}, ...options });
  opened.push(sql);
  return sql;
};
afterAll(async () => {
  await Promise.all(opened.map((sql) => sql.end({ timeout: 5 })));
});
const pidOf = async (client: postgres.Sql) => (await client`SELECT pg_backend_pid() AS pid`)[0]!.pid as number;

describe('OS processes', () => {
  test('8 processes locking through postgres.js: critical sections never overlap, no update is lost', async () => {
    await resetSectionTables(url);
    const replicas = Array.from({ length: 8 }, () =>
      spawnNode(fixture('pgjs-worker.mjs'), ['section', url, '301', '40']),
    );
    const exits = await Promise.all(replicas.map((r) => r.exited));
    expect(exits.map((e) => [e.code, e.stderr])).toEqual(exits.map(() => [0, '']));
    await expectSerialSections(url, 8);
  });

  test('pg and postgres.js replicas exclude each other', async () => {
    await resetSectionTables(url);
    const replicas = Array.from({ length: 8 }, (_, i) =>
      spawnNode(fixture(i % 2 ? 'pgjs-worker.mjs' : 'lock-worker.mjs'), ['section', url, '302', '40']),
    );
    const exits = await Promise.all(replicas.map((r) => r.exited));
    expect(exits.map((e) => [e.code, e.stderr])).toEqual(exits.map(() => [0, '']));
    await expectSerialSections(url, 8);
  });

  test('CREATE INDEX CONCURRENTLY by the holder while 4 postgres.js processes wait: no deadlock, every waiter gets its turn', async () => {
    await resetSectionTables(url);
    await withClient(url, (client) =>
      client.query('CREATE TABLE IF NOT EXISTS big AS SELECT g AS id FROM generate_series(1, 20000) g'),
    );
    const sql = connect({ max: 1 });
    const waiters: ReturnType<typeof spawnNode>[] = [];
    await withMigrationLock(
      sql,
      303n,
      async ({ client }) => {
        waiters.push(...[1, 2, 3, 4].map(() => spawnNode(fixture('pgjs-worker.mjs'), ['section', url, '303', '0'])));
        await waitFor(async () => (await getLockStatus(url, 303n)).waiters.length === 4, 15_000, '4 waiters');
        await client`CREATE INDEX CONCURRENTLY big_pgjs ON big (id)`;
        // Longer than deadlock_timeout (1 s): a deadlock would have been detected by now.
        await client`DROP INDEX CONCURRENTLY big_pgjs`;
        await client`SELECT pg_sleep(1.2)`;
        await client`CREATE INDEX CONCURRENTLY big_pgjs ON big (id)`;
      },
      quiet,
    );
    const exits = await Promise.all(waiters.map((w) => w.exited));
    expect(exits.map((e) => [e.code, e.stderr])).toEqual(exits.map(() => [0, '']));
    await withClient(url, async (client) => {
      expect((await client.query('SELECT n FROM counter')).rows[0].n).toBe(4);
      const index = await client.query(`SELECT indisvalid FROM pg_index WHERE indexrelid = 'big_pgjs'::regclass`);
      expect(index.rows).toEqual([{ indisvalid: true }]);
    });
  });

  test("the holder's backend terminated: its signal aborts with MigrationLockLostError and the call rejects with it", async () => {
    const holder = spawnNode(fixture('pgjs-worker.mjs'), ['hold', url, '304']);
    const pid = Number((await waitFor(() => /acquired (\d+)/.exec(holder.output()), 10_000, 'the holder'))![1]);
    expect((await lockRows(url, 304n)).map((r) => r.pid)).toEqual([pid]);
    await withClient(url, (client) => client.query('SELECT pg_terminate_backend($1)', [pid]));
    const exit = await holder.exited;
    expect(exit.stdout).toMatch(/aborted MigrationLockLostError/);
    expect(exit.stdout).toMatch(
      new RegExp(`MigrationLockLostError: Lost the session holding migration lock 304 \\(pid ${pid}\\)`),
    );
    expect(exit.code).toBe(3);
    expect(await lockRows(url, 304n)).toEqual([]);
  });
});

describe('one process', () => {
  test('fn gets the reserved sql: tagged templates and unsafe() run on the session holding the lock, and the connection goes back after', async () => {
    const sql = connect({ max: 1 });
    const before = await sql`SHOW tcp_keepalives_idle`;
    const seen = await withMigrationLock(
      sql,
      305n,
      async ({ client, key }) => {
        const pid = await pidOf(client);
        const [row] = await client.unsafe('SELECT $1::int + 1 AS n', [1]);
        return { pid, n: row!.n, key, rows: await lockRows(url, key) };
      },
      quiet,
    );
    expect(seen.n).toBe(2);
    expect(seen.rows).toEqual([{ pid: seen.pid, granted: true, objsubid: 1 }]);
    // max: 1, so the next query runs on the very connection: given back, unlocked, settings put back.
    expect(await pidOf(sql)).toBe(seen.pid);
    expect(await lockRows(url, 305n)).toEqual([]);
    expect(await sql`SHOW tcp_keepalives_idle`).toEqual(before);
  });

  test('a reserved sql is used as-is and never released by us', async () => {
    const sql = connect({ max: 1 });
    const reserved = await sql.reserve();
    try {
      const own = await pidOf(reserved);
      const lockPid = await withMigrationLock(
        reserved,
        306n,
        async ({ client }) => {
          expect(client).toBe(reserved);
          return pidOf(client);
        },
        quiet,
      );
      expect(lockPid).toBe(own);
      expect(await pidOf(reserved)).toBe(own);
      // The one connection is still reserved: the parent sql cannot run anything until it is released.
      const parent = sql`SELECT 1 AS one`.then(() => 'ran');
      expect(await Promise.race([parent, sleep(300).then(() => 'still reserved')])).toBe('still reserved');
      reserved.release();
      expect(await parent).toBe('ran');
    } finally {
      reserved.release();
    }
  });

  test('a waiter wakes on the release notification (through postgres.js listen), not by polling', async () => {
    const sql = connect({ max: 4 });
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const holder = withMigrationLock(sql, 307n, () => held, quiet);
    await waitFor(async () => (await lockRows(url, 307n)).length === 1);
    let releasedAt = 0;
    const waiter = withMigrationLock(sql, 307n, () => performance.now() - releasedAt, {
      ...quiet,
      pollIntervalMs: 10_000,
    });
    await waitFor(async () => (await getLockStatus(sql, 307n)).waiters.length === 1);
    releasedAt = performance.now();
    release();
    await holder;
    // With a 10 s poll, only the NOTIFY can wake it this soon.
    expect(await waiter).toBeLessThan(2_000);
  });

  test('a waiter whose waiting session is terminated reserves another connection and later gets the lock', async () => {
    const sql = connect({ max: 2 });
    const warnings: string[] = [];
    await withClient(url, async (holder) => {
      await holder.query('SELECT pg_advisory_lock(308)');
      let acquiredPid = 0;
      const waiter = withMigrationLock(sql, 308n, ({ client }) => pidOf(client), {
        logger: { info() {}, warn: (m: string) => warnings.push(m), error() {} },
        pollIntervalMs: 50,
        hooks: { onAcquired: (info) => (acquiredPid = info.pid) },
      });
      const first = await waitFor(async () => (await getLockStatus(url, 308n)).waiters[0], 10_000, 'the waiter');
      await holder.query('SELECT pg_terminate_backend($1)', [first!.pid]);
      await waitFor(async () => (await getLockStatus(url, 308n)).waiters.some((w) => w.pid !== first!.pid));
      await holder.query('SELECT pg_advisory_unlock(308)');
      const pid = await waiter;
      expect(pid).toBe(acquiredPid);
      expect(pid).not.toBe(first!.pid);
    });
    expect(warnings.join('\n')).toMatch(/Lost the connection while waiting for migration lock 308.*reconnecting/);
  });

  test('a reserved sql waiting when its session is terminated cannot be reopened: a clear MigrationLockError', async () => {
    const sql = connect({ max: 1 });
    const reserved = await sql.reserve();
    try {
      await withClient(url, async (holder) => {
        await holder.query('SELECT pg_advisory_lock(309)');
        const waiter = withMigrationLock(reserved, 309n, () => 'ran', { ...quiet, pollIntervalMs: 50 }).catch(
          (err: Error) => err,
        );
        const first = await waitFor(async () => (await getLockStatus(url, 309n)).waiters[0], 10_000, 'the waiter');
        await holder.query('SELECT pg_terminate_backend($1)', [first!.pid]);
        const error = await waiter;
        expect(error).toBeInstanceOf(MigrationLockError);
        expect((error as Error).message).toMatch(
          /Lost the connection while waiting for migration lock 309.*cannot be reopened/,
        );
      });
    } finally {
      reserved.release();
    }
  });

  test('lock loss while fn runs aborts signal at once, and fn sees it in its own catch', async () => {
    const sql = connect({ max: 2 });
    let seenInCatch: { aborted: boolean; reason: unknown; code: unknown } | undefined;
    let afterLoss: string | undefined;
    const outcome = await withMigrationLock(
      sql,
      310n,
      async ({ client, signal }) => {
        const pid = await pidOf(client);
        // Sent now (postgres.js sends a statement when it is awaited, or on execute()), failing later.
        const sleeping = client`SELECT pg_sleep(5)`.execute();
        const failed = sleeping.then(
          () => undefined,
          (err: unknown) => err,
        );
        // Built now, sent after the loss.
        const later = client`SELECT 1`;
        await sleep(200);
        await withClient(url, (other) => other.query('SELECT pg_terminate_backend($1)', [pid]));
        try {
          await sleeping;
        } catch (err) {
          seenInCatch = { aborted: signal.aborted, reason: signal.reason, code: (err as { code?: unknown }).code };
        }
        expect(await failed).toBeDefined();
        // postgres.js would write it to the closed connection, and hang or crash the process
        // (porsager/postgres#1208): the client we hand out refuses it instead.
        afterLoss = await Promise.resolve(later).then(
          () => 'sent',
          (err: { code?: string }) => err.code,
        );
        return 'fn returned';
      },
      quiet,
    ).catch((err: Error) => err);
    expect(outcome).toBeInstanceOf(MigrationLockLostError);
    // The statement fails with CONNECTION_CLOSED, or ECONNRESET when the server's close arrives as a reset.
    expect(seenInCatch).toEqual({
      aborted: true,
      reason: outcome,
      code: expect.stringMatching(/^(CONNECTION_CLOSED|ECONNRESET)$/),
    });
    expect(afterLoss).toBe((seenInCatch as { code: string }).code);
    expect(await lockRows(url, 310n)).toEqual([]);
    // The pool reconnects: the sql is still usable.
    expect(await sql`SELECT 1 AS one`).toEqual([{ one: 1 }]);
  });

  test('getLockStatus and releaseLock take a postgres.js sql', async () => {
    const sql = connect({ max: 2 });
    const holder = spawnNode(fixture('pgjs-worker.mjs'), ['hold', url, '311']);
    const pid = Number((await waitFor(() => /acquired (\d+)/.exec(holder.output()), 10_000, 'the holder'))![1]);
    const status = await getLockStatus(sql, 311n);
    // While it holds, the session carries the holding's tag (after it, its own name again).
    expect(status).toMatchObject({ key: 311n, locked: true, holder: { pid } });
    expect(status.holder?.applicationName).toMatch(/^pg-migration-lock:311:[0-9a-z]{6}\.\d+@/);
    expect(await releaseLock(sql, 311n, { pid: pid + 1_000_000 })).toEqual({
      released: false,
      pid: null,
      terminated: [],
    });
    expect(await releaseLock(sql, 311n)).toEqual({ released: true, pid, terminated: [pid] });
    expect((await holder.exited).stdout).toMatch(/MigrationLockLostError/);
    expect((await getLockStatus(sql, 311n)).locked).toBe(false);
  });

  test('the session names its endpoint, so the pooler advice can name Supabase port 6543', async () => {
    const sql = connect({ max: 1 });
    const session = await postgresJsSource(sql).open();
    try {
      expect(session.endpoint).toEqual({ host: '127.0.0.1', port: Number(new URL(url).port) });
    } finally {
      await session.release();
    }
    const supabase = postgres('postgres://u:secret@aws-0-eu-central-1.pooler.supabase.com:6543/postgres');
    opened.push(supabase);
    const options = supabase.options as unknown as { host: string[]; port: number[] };
    expect(poolerAdvice({ endpoint: { host: options.host[0], port: options.port[0] } })).toMatch(
      /Port 6543 is Supabase's transaction pooler: use the session pooler \(port 5432\) or the direct host/,
    );
  });

  test('a session that stops answering after fn (its backend SIGSTOPped): the call settles within the release bound, the connection is cut, the lock goes', async () => {
    const sql = connect({ max: 1 });
    const warnings: string[] = [];
    let pid = 0;
    const startedAt = performance.now();
    try {
      await withMigrationLock(
        sql,
        314n,
        async ({ client }) => {
          pid = await pidOf(client);
          // The server runs on this machine (the suite's own server or TEST_DATABASE_URL's, both local).
          process.kill(pid, 'SIGSTOP');
        },
        { logger: { info() {}, warn: (message: string) => warnings.push(message), error() {} } },
      );
    } finally {
      if (pid) process.kill(pid, 'SIGCONT');
    }
    const tookMs = performance.now() - startedAt;
    expect(tookMs).toBeGreaterThan(14_000);
    expect(tookMs).toBeLessThan(25_000);
    expect(warnings.join('\n')).toMatch(
      /Could not release migration lock 314 on pid \d+: the session did not answer within 15\.0s/,
    );
    // Cut, not given back: once the backend runs again it reads the Terminate, exits, and the lock goes with it.
    await waitFor(async () => (await lockRows(url, 314n)).length === 0, 10_000, 'the lock to go');
    expect(await pidOf(sql)).not.toBe(pid);
  }, 40_000);

  test('a column transform on the sql (postgres.camel) does not hide what the library reads', async () => {
    const sql = postgres(url, { max: 3, transform: postgres.camel, onnotice: () => {} });
    opened.push(sql as unknown as postgres.Sql);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const holder = withMigrationLock(sql, 313n, () => held, quiet);
    await waitFor(async () => (await lockRows(url, 313n)).length === 1);
    const waiter = withMigrationLock(sql, 313n, () => 'waited', quiet);
    const status = await waitFor(async () => {
      const seen = await getLockStatus(sql, 313n);
      // Once its first poll (which carries the waiting breadcrumb) ran, it shows how long it has waited.
      return seen.waiters.length === 1 && seen.waiters[0]!.waitingMs !== undefined ? seen : undefined;
    });
    expect(status?.holder?.applicationName).toMatch(/^pg-migration-lock:313:[0-9a-z]{6}\./);
    expect(status?.waiters[0]?.waitingMs).toEqual(expect.any(Number));
    release();
    await holder;
    expect(await waiter).toBe('waited');
  });

  test('bad input fails at once: a transaction sql, and a reserved sql already inside a call', async () => {
    const sql = connect({ max: 2 });
    await sql.begin(async (tx) => {
      await expect(withMigrationLock(tx as never, 312n, () => 1, quiet)).rejects.toThrow(
        /postgres.js `sql` from postgres\(\) or a reserved one/,
      );
    });
    const reserved = await sql.reserve();
    try {
      await withMigrationLock(
        reserved,
        312n,
        async () => {
          await expect(withMigrationLock(reserved, 312n, () => 1, quiet)).rejects.toThrow(
            /already inside withMigrationLock/,
          );
        },
        quiet,
      );
    } finally {
      reserved.release();
    }
  });
});

const pgbouncer = findPgbouncer();
describe.skipIf(!pgbouncer)(
  `postgres.js through a real PgBouncer${pgbouncer ? '' : ' [SKIPPED: no pgbouncer]'}`,
  () => {
    test('transaction mode (one server connection): calls that land on it are refused naming the pooler; session mode locks', async () => {
      const [transaction, session] = await Promise.all([
        startPgbouncer(pgbouncer!, {
          serverUrl: url,
          poolMode: 'transaction',
          databases: { single: { pool_size: 1 } },
        }),
        startPgbouncer(pgbouncer!, { serverUrl: url, poolMode: 'session', databases: { db: {} } }),
      ]);
      try {
        // What postgres.js users on a transaction pooler set (Supabase 6543): no prepared statements.
        const sql = postgres(transaction.url('single'), { max: 3, prepare: false, onnotice: () => {} });
        opened.push(sql);
        let inside = 0;
        let most = 0;
        const outcomes = await Promise.allSettled(
          [1, 2, 3].map(() =>
            withMigrationLock(
              sql,
              320n,
              async () => {
                most = Math.max(most, ++inside);
                await sleep(300);
                inside--;
              },
              quiet,
            ),
          ),
        );
        expect(most).toBe(1);
        expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
        for (const outcome of outcomes.filter((o) => o.status === 'rejected')) {
          expect(outcome.reason).toBeInstanceOf(MigrationLockError);
          expect(String(outcome.reason)).toMatch(/already holds migration lock 320.*transaction-mode pooler/);
        }
        expect(await lockRows(url, 320n)).toEqual([]);

        await resetSectionTables(url);
        const replicas = Array.from({ length: 4 }, () =>
          spawnNode(fixture('pgjs-worker.mjs'), ['section', session.url('db'), '321', '20']),
        );
        const exits = await Promise.all(replicas.map((r) => r.exited));
        expect(exits.map((e) => [e.code, e.stderr])).toEqual(exits.map(() => [0, '']));
        await expectSerialSections(url, 4);
      } finally {
        await Promise.all([transaction.stop(), session.stop()]);
      }
    });
  },
);
