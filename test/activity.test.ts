// What the holder is doing, in getLockStatus(): its running statement with when it began, and the progress of a
// command that has a pg_stat_progress_* view (CREATE INDEX CONCURRENTLY here), for the holder and its tagged work.
import { expect, test } from 'vitest';
import { getLockStatus, type WaitingInfo, withMigrationLock } from '../src/index.js';
import { createTestDatabase, waitFor, withClient } from './helpers.js';

const url = await createTestDatabase();

test('the holder running pg_sleep: its query and since when, for the holder and for a waiter', async () => {
  let holderPid = 0;
  const before = await withClient(url, async (c) => (await c.query('SELECT now() AS t')).rows[0].t as Date);
  const holder = withMigrationLock(
    url,
    71,
    async ({ client }) => {
      holderPid = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      await client.query('SELECT pg_sleep(3)');
    },
    { logger: null },
  );
  const seen: WaitingInfo[] = [];
  await waitFor(async () => (await getLockStatus(url, 71n)).holder?.query === 'SELECT pg_sleep(3)', 10_000, 'pg_sleep');
  const waiter = withMigrationLock(url, 71, () => {}, {
    logger: null,
    reportEveryMs: 100,
    hooks: { onWaiting: (info) => void seen.push(info) },
  });
  const status = await getLockStatus(url, 71n);
  expect(status.holder).toMatchObject({ pid: holderPid, state: 'active', query: 'SELECT pg_sleep(3)' });
  expect(status.holder!.queryStart).toBeInstanceOf(Date);
  expect(status.holder!.queryStart!.getTime()).toBeGreaterThanOrEqual(before.getTime());
  expect(status.holder!.progress).toBeUndefined();
  await waitFor(() => seen.length > 0, 10_000, 'the waiter to report');
  expect(seen[0]!.holder).toMatchObject({ pid: holderPid, query: 'SELECT pg_sleep(3)' });
  expect(seen[0]!.holder!.queryStart).toEqual(status.holder!.queryStart);
  await Promise.all([holder, waiter]);
});

test('a CREATE INDEX CONCURRENTLY under the lock: its phase and progress on the holder', async () => {
  await withClient(url, async (c) => {
    // Slowed per row, so that the build is seen under way: 400 rows of 25 ms.
    await c.query(`CREATE FUNCTION slow(i int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS
                   $$ BEGIN PERFORM pg_sleep(0.025); RETURN i; END $$`);
    await c.query('CREATE TABLE orders AS SELECT g AS id, repeat($$x$$, 500) AS pad FROM generate_series(1, 400) g');
  });
  const run = (sql: string) =>
    withMigrationLock(
      url,
      72,
      async ({ client }) => {
        await client.query(sql).catch((error: { code?: string }) => {
          if (error.code !== '57014') throw error; // canceled by the test
        });
      },
      { logger: null },
    );
  const holder = run('CREATE INDEX CONCURRENTLY orders_slow ON orders (slow(id))');
  let status = await getLockStatus(url, 72n);
  await waitFor(
    async () => {
      status = await getLockStatus(url, 72n);
      return /^building index/.test(status.holder?.progress?.phase ?? '') && (status.holder?.progress?.done ?? 0) > 0;
    },
    15_000,
    'the index build to show',
  );
  expect(status.holder!.query).toBe('CREATE INDEX CONCURRENTLY orders_slow ON orders (slow(id))');
  expect(status.holder!.queryStart).toBeInstanceOf(Date);
  const progress = status.holder!.progress!;
  expect(progress).toEqual({
    command: 'CREATE INDEX CONCURRENTLY',
    phase: expect.stringMatching(/^building index/),
    done: expect.any(Number),
    total: expect.any(Number),
  });
  expect(progress.done!).toBeLessThanOrEqual(progress.total!);
  await withClient(url, (c) => c.query('SELECT pg_cancel_backend($1)', [status.holder!.pid]));
  await holder;
  await withClient(url, (c) => c.query('DROP INDEX IF EXISTS orders_slow'));
});

test("the holding's tagged work: its running statement and since when", async () => {
  let workPid = 0;
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const holder = withMigrationLock(
    url,
    73,
    async ({ tag }) => {
      // fn's extra connection, wearing the holding's tag: the holding's work.
      await withClient(
        `${url}${url.includes('?') ? '&' : '?'}application_name=${encodeURIComponent(tag)}`,
        async (c) => {
          workPid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
          await Promise.all([c.query('SELECT pg_sleep(1.5)'), released]);
        },
      );
    },
    { logger: null },
  );
  let status = await getLockStatus(url, 73n);
  await waitFor(
    async () => {
      status = await getLockStatus(url, 73n);
      return status.work.some((w) => w.query === 'SELECT pg_sleep(1.5)');
    },
    10_000,
    'the work to show',
  );
  expect(status.work).toEqual([
    expect.objectContaining({
      pid: workPid,
      state: 'active',
      query: 'SELECT pg_sleep(1.5)',
      queryStart: expect.any(Date),
    }),
  ]);
  expect(status.work[0]!.progress).toBeUndefined();
  release();
  await holder;
});
