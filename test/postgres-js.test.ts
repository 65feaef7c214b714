// The lock through postgres.js (npm `postgres`), 4.x and 3.x (installed as postgres-v3): a `sql` reserves
// one connection per call, a reserved `sql` is used as-is. Real server, real processes, nothing mocked.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import postgres from 'postgres';
import postgresV3 from 'postgres-v3';
import { afterAll, describe, expect, test } from 'vitest';
import { postgresJsSource } from '../src/driver/postgres-js.js';
import {
  getLockStatus,
  MigrationLockError,
  MigrationLockLostError,
  releaseLock,
  withMigrationLock,
} from '../src/index.js';
import { poolerAdvice } from '../src/lock/server-checks.js';
import { findPgbouncer, startPgbouncer } from './fixtures/pooler/pgbouncer.mjs';
import {
  createTestDatabase,
  expectSerialSections,
  fixture,
  lockRows,
  resetSectionTables,
  spawnProcess,
  waitFor,
  withClient,
} from './helpers.js';

const url = await createTestDatabase();
const quiet = { logger: null };
const opened: postgres.Sql[] = [];
afterAll(async () => {
  await Promise.all(opened.map((sql) => sql.end({ timeout: 5 })));
});
const pidOf = async (client: postgres.ISql) => (await client`SELECT pg_backend_pid() AS pid`)[0]!.pid as number;

// Each major runs every test, on keys of its own. The 3.x types differ in details the tests do not touch.
const drivers = [
  { name: 'postgres.js 4', postgres, major: 4, keys: 300, nodeArgs: [] as string[] },
  {
    name: 'postgres.js 3',
    postgres: postgresV3 as unknown as typeof postgres,
    major: 3,
    keys: 1300,
    // The worker imports `postgres`: resolved to postgres-v3 in its process.
    nodeArgs: ['--import', fixture('adapters/use-postgres-v3.mjs')],
  },
];

describe.each(drivers)('$name', ({ postgres, major, keys, nodeArgs }) => {
  /** This major's key number n (keys differ per major, so a failure names which one). */
  const k = (n: number) => BigInt(keys + n);
  /** A postgres.js sql of this major on the test database, ended after the file. */
  const connect = (options: { max?: number } = {}) => {
    const sql = postgres(url, { onnotice: () => {}, ...options });
    opened.push(sql);
    return sql;
  };
  /** test/fixtures/pgjs-worker.mjs in its own process, on this major. */
  const worker = (args: string[]) => spawnProcess(process.execPath, [...nodeArgs, fixture('pgjs-worker.mjs'), ...args]);

  test('the worker process runs this major', async () => {
    const exit = await worker(['version', url]).exited;
    expect([exit.code, exit.stderr]).toEqual([0, '']);
    expect(exit.stdout.trim()).toMatch(new RegExp(`^${major}\\.`));
  });

  describe('OS processes', () => {
    test('8 processes locking through postgres.js: critical sections never overlap, no update is lost', async () => {
      await resetSectionTables(url);
      const replicas = Array.from({ length: 8 }, () => worker(['section', url, String(k(1)), '40']));
      const exits = await Promise.all(replicas.map((r) => r.exited));
      expect(exits.map((e) => [e.code, e.stderr])).toEqual(exits.map(() => [0, '']));
      await expectSerialSections(url, 8);
    });

    test('CREATE INDEX CONCURRENTLY by the holder while 4 postgres.js processes wait: no deadlock, every waiter gets its turn', async () => {
      await resetSectionTables(url);
      const index = `big_pgjs_${major}`;
      await withClient(url, (client) =>
        client.query('CREATE TABLE IF NOT EXISTS big AS SELECT g AS id FROM generate_series(1, 20000) g'),
      );
      const sql = connect({ max: 1 });
      const waiters: ReturnType<typeof worker>[] = [];
      await withMigrationLock(
        sql,
        k(3),
        async ({ client }) => {
          waiters.push(...[1, 2, 3, 4].map(() => worker(['section', url, String(k(3)), '0'])));
          await waitFor(async () => (await getLockStatus(url, k(3))).waiters.length === 4, 15_000, '4 waiters');
          await client.unsafe(`CREATE INDEX CONCURRENTLY ${index} ON big (id)`);
          // Longer than deadlock_timeout (1 s): a deadlock would have been detected by now.
          await client.unsafe(`DROP INDEX CONCURRENTLY ${index}`);
          await client`SELECT pg_sleep(1.2)`;
          await client.unsafe(`CREATE INDEX CONCURRENTLY ${index} ON big (id)`);
        },
        quiet,
      );
      const exits = await Promise.all(waiters.map((w) => w.exited));
      expect(exits.map((e) => [e.code, e.stderr])).toEqual(exits.map(() => [0, '']));
      await withClient(url, async (client) => {
        expect((await client.query('SELECT n FROM counter')).rows[0].n).toBe(4);
        const valid = await client.query('SELECT indisvalid FROM pg_index WHERE indexrelid = $1::regclass', [index]);
        expect(valid.rows).toEqual([{ indisvalid: true }]);
      });
    });

    test("the holder's backend terminated: its signal aborts with MigrationLockLostError and the call rejects with it", async () => {
      const holder = worker(['hold', url, String(k(4))]);
      const pid = Number((await waitFor(() => /acquired (\d+)/.exec(holder.output()), 10_000, 'the holder'))![1]);
      expect((await lockRows(url, k(4))).map((r) => r.pid)).toEqual([pid]);
      await withClient(url, (client) => client.query('SELECT pg_terminate_backend($1)', [pid]));
      const exit = await holder.exited;
      expect(exit.stdout).toMatch(/aborted MigrationLockLostError/);
      expect(exit.stdout).toMatch(
        new RegExp(`MigrationLockLostError: Lost the session holding migration lock ${k(4)} \\(pid ${pid}\\)`),
      );
      expect(exit.code).toBe(3);
      expect(await lockRows(url, k(4))).toEqual([]);
    });
  });

  describe('one process', () => {
    test('fn gets the reserved sql: tagged templates and unsafe() run on the session holding the lock, and the connection goes back after', async () => {
      const sql = connect({ max: 1 });
      const before = await sql`SHOW tcp_keepalives_idle`;
      const seen = await withMigrationLock(
        sql,
        k(5),
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
      expect(await lockRows(url, k(5))).toEqual([]);
      expect(await sql`SHOW tcp_keepalives_idle`).toEqual(before);
    });

    test('a reserved sql is used as-is and never released by us', async () => {
      const sql = connect({ max: 1 });
      const reserved = await sql.reserve();
      try {
        const own = await pidOf(reserved);
        const lockPid = await withMigrationLock(
          reserved,
          k(6),
          async ({ client }) => {
            expect(client).toBe(reserved);
            return pidOf(client);
          },
          quiet,
        );
        expect(lockPid).toBe(own);
        // The one connection is still reserved: a statement on the parent sql queues behind the
        // reservation. It is sent before the round trips on the reserved sql below, and still has not run.
        let ran = false;
        const parent = sql`SELECT 1 AS one`.then(() => {
          ran = true;
        });
        expect(await pidOf(reserved)).toBe(own);
        expect(await pidOf(reserved)).toBe(own);
        expect(ran).toBe(false);
        reserved.release();
        await parent;
        expect(ran).toBe(true);
      } finally {
        reserved.release();
      }
    });

    test('a waiter wakes on the release notification (through postgres.js listen), not by polling', async () => {
      const sql = connect({ max: 4 });
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      const holder = withMigrationLock(sql, k(7), () => held, quiet);
      await waitFor(async () => (await lockRows(url, k(7))).length === 1);
      // Neither a poll nor a report retries within the hour: only the NOTIFY of the release can wake it.
      const waiter = withMigrationLock(sql, k(7), () => 'woken', {
        ...quiet,
        pollIntervalMs: 3_600_000,
        reportEveryMs: 3_600_000,
      });
      await waitFor(async () => (await getLockStatus(sql, k(7))).waiters.length === 1);
      release();
      await holder;
      expect(await waiter).toBe('woken');
    });

    test('a waiter whose waiting session is terminated reserves another connection and later gets the lock', async () => {
      const sql = connect({ max: 2 });
      const warnings: string[] = [];
      await withClient(url, async (holder) => {
        await holder.query('SELECT pg_advisory_lock($1)', [k(8)]);
        let acquiredPid = 0;
        const waiter = withMigrationLock(sql, k(8), ({ client }) => pidOf(client), {
          logger: { info() {}, warn: (m: string) => warnings.push(m), error() {} },
          pollIntervalMs: 50,
          hooks: { onAcquired: (info) => (acquiredPid = info.pid) },
        });
        const first = await waitFor(async () => (await getLockStatus(url, k(8))).waiters[0], 10_000, 'the waiter');
        await holder.query('SELECT pg_terminate_backend($1)', [first!.pid]);
        await waitFor(async () => (await getLockStatus(url, k(8))).waiters.some((w) => w.pid !== first!.pid));
        await holder.query('SELECT pg_advisory_unlock($1)', [k(8)]);
        const pid = await waiter;
        expect(pid).toBe(acquiredPid);
        expect(pid).not.toBe(first!.pid);
      });
      expect(warnings.join('\n')).toMatch(
        new RegExp(`Lost the connection while waiting for migration lock ${k(8)}.*reconnecting`),
      );
    });

    test('a reserved sql waiting when its session is terminated cannot be reopened: a clear MigrationLockError', async () => {
      const sql = connect({ max: 1 });
      const reserved = await sql.reserve();
      try {
        await withClient(url, async (holder) => {
          await holder.query('SELECT pg_advisory_lock($1)', [k(9)]);
          const waiter = withMigrationLock(reserved, k(9), () => 'ran', { ...quiet, pollIntervalMs: 50 }).catch(
            (err: Error) => err,
          );
          const first = await waitFor(async () => (await getLockStatus(url, k(9))).waiters[0], 10_000, 'the waiter');
          await holder.query('SELECT pg_terminate_backend($1)', [first!.pid]);
          const error = await waiter;
          expect(error).toBeInstanceOf(MigrationLockError);
          expect((error as Error).message).toMatch(
            new RegExp(`Lost the connection while waiting for migration lock ${k(9)}.*cannot be reopened`),
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
        k(10),
        async ({ client, signal }) => {
          const pid = await pidOf(client);
          // Sent now (postgres.js sends a statement when it is awaited, or on execute()), failing later.
          const sleeping = client`SELECT pg_sleep(30)`.execute();
          const failed = sleeping.then(
            () => undefined,
            (err: unknown) => err,
          );
          // Built now, sent after the loss.
          const later = client`SELECT 1`;
          await waitFor(
            async () =>
              withClient(url, async (other) => {
                const { rows } = await other.query('SELECT query FROM pg_stat_activity WHERE pid = $1', [pid]);
                return /pg_sleep/.test(rows[0]?.query ?? '');
              }),
            10_000,
            'pg_sleep to run',
          );
          await withClient(url, (other) => other.query('SELECT pg_terminate_backend($1)', [pid]));
          try {
            await sleeping;
          } catch (err) {
            seenInCatch = { aborted: signal.aborted, reason: signal.reason, code: (err as { code?: unknown }).code };
          }
          expect(await failed).toBeDefined();
          // postgres.js 3 would write it to the closed connection, and hang or crash the process
          // (porsager/postgres#1208): the client we hand out refuses it instead. postgres.js 4 refuses it itself.
          afterLoss = await Promise.resolve(later).then(
            () => 'sent',
            (err: { code?: string }) => err.code,
          );
          return 'fn returned';
        },
        quiet,
      ).catch((err: Error) => err);
      expect(outcome).toBeInstanceOf(MigrationLockLostError);
      // The statement fails with CONNECTION_CLOSED, or ECONNRESET when the server's close arrives as a reset;
      // postgres.js 4 gives the server's own FATAL (57P01, terminated by an administrator) where it came.
      expect(seenInCatch).toEqual({
        aborted: true,
        reason: outcome,
        code: expect.stringMatching(major === 3 ? /^(CONNECTION_CLOSED|ECONNRESET)$/ : /^(57P01|CONNECTION_CLOSED)$/),
      });
      if (major === 3) expect(afterLoss).toBe((seenInCatch as { code: string }).code);
      else expect(afterLoss).toBe('CONNECTION_CLOSED');
      expect(await lockRows(url, k(10))).toEqual([]);
      // The pool reconnects: the sql is still usable.
      expect(await sql`SELECT 1 AS one`).toEqual([{ one: 1 }]);
    });

    test('keys whose halves are the int4 minimum (statements with values written in) take and release cleanly', async () => {
      const sql = connect({ max: 1 });
      // The lowest bigint, and keys whose high or low 32 bits are 0x80000000: -2147483648 as a bare literal
      // followed by ::int would read as minus an out-of-range int.
      for (const key of [-(2n ** 63n), 2n ** 31n, -(2n ** 31n)]) {
        const warnings: string[] = [];
        const logger = {
          info() {},
          warn: (m: string) => void warnings.push(m),
          error: (m: string) => void warnings.push(m),
        };
        expect(await withMigrationLock(sql, key, () => 'ran', { logger })).toBe('ran');
        expect(warnings).toEqual([]);
        expect(await lockRows(url, key)).toEqual([]);
      }
    });

    test('getLockStatus and releaseLock take a postgres.js sql', async () => {
      const sql = connect({ max: 2 });
      const holder = worker(['hold', url, String(k(11))]);
      const pid = Number((await waitFor(() => /acquired (\d+)/.exec(holder.output()), 10_000, 'the holder'))![1]);
      const status = await getLockStatus(sql, k(11));
      // While it holds, the session carries the holding's tag (after it, its own name again).
      expect(status).toMatchObject({ key: k(11), locked: true, holder: { pid } });
      expect(status.holder?.applicationName).toMatch(new RegExp(`^pg-migration-lock:${k(11)}:[0-9a-z]{6}\\.\\d+@`));
      expect(await releaseLock(sql, k(11), { pid: pid + 1_000_000 })).toEqual({
        released: false,
        pid: null,
        terminated: [],
      });
      expect(await releaseLock(sql, k(11))).toEqual({ released: true, pid, terminated: [pid] });
      expect((await holder.exited).stdout).toMatch(/MigrationLockLostError/);
      expect((await getLockStatus(sql, k(11))).locked).toBe(false);
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

    test('a column transform on the sql (postgres.camel) does not hide what the library reads', async () => {
      const sql = postgres(url, { max: 3, transform: postgres.camel, onnotice: () => {} });
      opened.push(sql as unknown as postgres.Sql);
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      const holder = withMigrationLock(sql, k(13), () => held, quiet);
      await waitFor(async () => (await lockRows(url, k(13))).length === 1);
      const waiter = withMigrationLock(sql, k(13), () => 'waited', quiet);
      const status = await waitFor(async () => {
        const seen = await getLockStatus(sql, k(13));
        // Once its first poll (which carries the waiting breadcrumb) ran, it shows how long it has waited.
        return seen.waiters.length === 1 && seen.waiters[0]!.waitingMs !== undefined ? seen : undefined;
      });
      expect(status?.holder?.applicationName).toMatch(new RegExp(`^pg-migration-lock:${k(13)}:[0-9a-z]{6}\\.`));
      expect(status?.waiters[0]?.waitingMs).toEqual(expect.any(Number));
      release();
      await holder;
      expect(await waiter).toBe('waited');
    });

    test('bad input fails at once: a transaction sql, and a reserved sql already inside a call', async () => {
      const sql = connect({ max: 2 });
      await sql.begin(async (tx) => {
        await expect(withMigrationLock(tx as never, k(12), () => 1, quiet)).rejects.toThrow(
          /postgres.js `sql` from postgres\(\) or a reserved one/,
        );
      });
      const reserved = await sql.reserve();
      try {
        await withMigrationLock(
          reserved,
          k(12),
          async () => {
            await expect(withMigrationLock(reserved, k(12), () => 1, quiet)).rejects.toThrow(
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
  describe.skipIf(!pgbouncer)(`through a real PgBouncer${pgbouncer ? '' : ' [SKIPPED: no pgbouncer]'}`, () => {
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
        const pooled = postgres(transaction.url('single'), { max: 3, prepare: false, onnotice: () => {} });
        opened.push(pooled);
        let inside = 0;
        let most = 0;
        let refused = 0;
        let release!: () => void;
        const held = new Promise<void>((resolve) => (release = resolve));
        const calls = [1, 2, 3].map(() =>
          withMigrationLock(
            pooled,
            k(20),
            async () => {
              most = Math.max(most, ++inside);
              await held;
              inside--;
            },
            quiet,
          ).catch((err: unknown) => {
            refused++;
            throw err;
          }),
        );
        const outcomes = Promise.allSettled(calls);
        // The holder holds until the two calls that land on its server connection are refused.
        await waitFor(() => refused === 2, 15_000, 'two calls refused');
        release();
        const settled = await outcomes;
        expect(most).toBe(1);
        expect(settled.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
        for (const outcome of settled.filter((o) => o.status === 'rejected')) {
          expect(outcome.reason).toBeInstanceOf(MigrationLockError);
          expect(String(outcome.reason)).toMatch(
            new RegExp(`already holds migration lock ${k(20)}.*transaction-mode pooler`),
          );
        }
        expect(await lockRows(url, k(20))).toEqual([]);

        await resetSectionTables(url);
        const replicas = Array.from({ length: 4 }, () => worker(['section', session.url('db'), String(k(21)), '20']));
        const exits = await Promise.all(replicas.map((r) => r.exited));
        expect(exits.map((e) => [e.code, e.stderr])).toEqual(exits.map(() => [0, '']));
        await expectSerialSections(url, 4);
      } finally {
        await Promise.all([transaction.stop(), session.stop()]);
      }
    });
  });
});

test('pg, postgres.js 4 and postgres.js 3 replicas exclude one another', async () => {
  await resetSectionTables(url);
  const clients = [[fixture('lock-worker.mjs')], ...drivers.map((d) => [...d.nodeArgs, fixture('pgjs-worker.mjs')])];
  const replicas = Array.from({ length: 9 }, (_, i) =>
    spawnProcess(process.execPath, [...clients[i % clients.length]!, 'section', url, '302', '40']),
  );
  const exits = await Promise.all(replicas.map((r) => r.exited));
  expect(exits.map((e) => [e.code, e.stderr])).toEqual(exits.map(() => [0, '']));
  await expectSerialSections(url, 9);
});

// Both majors at once: each waits out the 15 s release bound.
test('a session that stops answering after fn (its backend SIGSTOPped): the call settles without it, the connection is cut, the lock goes (postgres.js 4 and 3)', async () => {
  await Promise.all(
    drivers.map(async ({ postgres, keys }) => {
      const key = BigInt(keys + 14);
      const sql = postgres(url, { max: 1, onnotice: () => {} });
      opened.push(sql);
      const warnings: string[] = [];
      let pid = 0;
      try {
        await withMigrationLock(
          sql,
          key,
          async ({ client }) => {
            pid = await pidOf(client);
            // The server runs on this machine (the suite's own server or TEST_DATABASE_URL's, both local).
            process.kill(pid, 'SIGSTOP');
          },
          { logger: { info() {}, warn: (message: string) => warnings.push(message), error() {} } },
        );
        // Settled while the backend is still stopped: nothing of the release waited for it to answer.
        if (existsSync('/proc')) expect(await backendState(pid)).toBe('T');
      } finally {
        if (pid) process.kill(pid, 'SIGCONT');
      }
      expect(warnings.join('\n')).toMatch(
        new RegExp(`Could not release migration lock ${key} on pid \\d+: the session did not answer within 15\\.0s`),
      );
      // Cut, not given back: once the backend runs again it reads the end of its connection, exits, and the
      // lock goes with it.
      await waitFor(async () => (await lockRows(url, key)).length === 0, 10_000, 'the lock to go');
      expect(await pidOf(sql)).not.toBe(pid);
    }),
  );
}, 40_000);

/** The state letter of a local process in /proc (`T`: stopped). */
async function backendState(pid: number): Promise<string | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return /\) (\S)/.exec(stat)?.[1];
}
