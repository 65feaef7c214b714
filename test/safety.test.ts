import { describe, expect, test } from 'vitest';
import { getLockStatus, withMigrationLock } from '../src/index.js';
import { createTestDatabase, fixture, resetSectionTables, spawnNode, waitFor, withClient } from './helpers.js';

const url = await createTestDatabase();
const quiet = { logger: null };

async function setUp() {
  await resetSectionTables(url);
  await withClient(url, (client) =>
    client.query('CREATE TABLE IF NOT EXISTS big AS SELECT g AS id FROM generate_series(1, 20000) g'),
  );
}

describe('CREATE INDEX CONCURRENTLY by the holder', () => {
  test('control: a session blocked in pg_advisory_lock() makes CIC report a deadlock', async () => {
    await setUp();
    await withClient(url, async (holder) => {
      await holder.query('SELECT pg_advisory_lock(81)');
      await withClient(url, async (waiter) => {
        const waiting = waiter.query('SELECT pg_advisory_lock(81)').catch((err: Error) => err);
        await waitFor(async () => (await getLockStatus(url, 81n)).waiters.length === 1);
        const cic = await holder.query('CREATE INDEX CONCURRENTLY big_control ON big (id)').catch((err: Error) => err);
        await holder.query('SELECT pg_advisory_unlock_all()');
        const outcomes = [cic, await waiting].map((r) => (r instanceof Error ? r.message : 'ok'));
        // Either side may be the deadlock victim: this is the failure the library must avoid.
        expect(outcomes).toContain('deadlock detected');
      });
    });
  });

  test('with 4 waiting OS processes, CIC succeeds and every waiter then gets its turn', async () => {
    await setUp();
    const waiters: ReturnType<typeof spawnNode>[] = [];
    await withMigrationLock(
      url,
      82n,
      async ({ client }) => {
        waiters.push(...[1, 2, 3, 4].map(() => spawnNode(fixture('lock-worker.mjs'), ['section', url, '82', '0'])));
        await waitFor(async () => (await getLockStatus(url, 82n)).waiters.length === 4, 30_000, '4 waiters');
        await client.query('CREATE INDEX CONCURRENTLY big_id ON big (id)');
        // Longer than deadlock_timeout (1 s): a deadlock would have been detected by now.
        await client.query('DROP INDEX CONCURRENTLY big_id');
        await client.query('SELECT pg_sleep(1.2)');
        await client.query('CREATE INDEX CONCURRENTLY big_id ON big (id)');
      },
      quiet,
    );
    const exits = await Promise.all(waiters.map((w) => w.exited));
    expect(exits.map((e) => [e.code, e.stderr])).toEqual(exits.map(() => [0, '']));
    await withClient(url, async (client) => {
      expect((await client.query('SELECT n FROM counter')).rows[0].n).toBe(4);
      expect(
        (await client.query(`SELECT indisvalid FROM pg_index WHERE indexrelid = 'big_id'::regclass`)).rows,
      ).toEqual([{ indisvalid: true }]);
    });
  });
});

describe('role and database settings', () => {
  test('a database-level statement_timeout / lock_timeout neither cancels the wait nor is changed for fn', async () => {
    const database = new URL(url).pathname.slice(1);
    await withClient(url, (client) =>
      client.query(
        `ALTER DATABASE ${database} SET statement_timeout = '150ms'; ALTER DATABASE ${database} SET lock_timeout = '100ms'`,
      ),
    );
    try {
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      let holding = false;
      const holder = withMigrationLock(
        url,
        83n,
        async () => {
          holding = true;
          await held;
        },
        quiet,
      );
      await waitFor(() => holding);
      const waiter = withMigrationLock(
        url,
        83n,
        async ({ client, waitedMs }) => {
          const { rows } = await client.query(
            `SELECT current_setting('statement_timeout') AS st, current_setting('lock_timeout') AS lt`,
          );
          return { ...rows[0], waitedMs };
        },
        quiet,
      );
      // Waiting (the server's own account, from the waiter's breadcrumb) far longer than either timeout; asked
      // on a session of the test's own, without the database's statement_timeout.
      let serverCounted = 0;
      await withClient(url, async (client) => {
        await client.query('SET statement_timeout = 0');
        await waitFor(
          async () => {
            serverCounted = (await getLockStatus(client, 83n)).waiters[0]?.waitingMs ?? 0;
            return serverCounted >= 1_000;
          },
          30_000,
          'the waiter to have waited 1 s',
        );
      });
      release();
      await holder;
      const seen = await waiter;
      expect(seen).toMatchObject({ st: '150ms', lt: '100ms' });
      // Its own account holds the server's: its wait began before the server started counting, and ended after
      // the reading (an order of events, whatever the durations).
      expect(seen.waitedMs).toBeGreaterThanOrEqual(serverCounted);
    } finally {
      await withClient(url, (client) =>
        client.query(
          `ALTER DATABASE ${database} RESET statement_timeout; ALTER DATABASE ${database} RESET lock_timeout`,
        ),
      );
    }
  });
});
