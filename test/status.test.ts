import { hostname } from 'node:os';
import { describe, expect, test } from 'vitest';
import { getLockStatus, releaseLock, withMigrationLock } from '../src/index.js';
import { createTestDatabase, waitFor, withClient } from './helpers.js';

const url = await createTestDatabase();

describe('getLockStatus', () => {
  test('unlocked key', async () => {
    expect(await getLockStatus(url, 61n)).toEqual({
      key: 61n,
      locked: false,
      holder: null,
      waiters: [],
      work: [],
      standby: false,
    });
  });

  test('holder and waiters, ours and plain pg_advisory_lock ones, with how long they wait', async () => {
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let holderPid = 0;
    const holder = withMigrationLock(
      url,
      '62',
      async ({ client }) => {
        holderPid = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
        await released;
      },
      { logger: null },
    );
    await waitFor(() => holderPid);
    const waiters = [1, 2, 3].map(() => withMigrationLock(url, 62, () => {}, { logger: null }));
    // Ours first, then the plain one: it has waited least of all.
    await waitFor(async () => (await getLockStatus(url, 62n)).waiters.length === 3, 10_000, '3 waiters');
    await withClient(url, async (plain) => {
      const plainPid: number = (await plain.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      const blocked = plain.query('SELECT pg_advisory_lock(62)');
      await waitFor(async () => (await getLockStatus(url, 62n)).waiters.length === 4, 10_000, '4 waiters');
      const first = await getLockStatus(url, 62n);
      const firstMs = new Map(first.waiters.map((w) => [w.pid, w.waitingMs ?? -1]));
      // Each of our waiters' counts goes on growing while it waits (later readings, however long they take).
      let status = first;
      await waitFor(
        async () => {
          status = await getLockStatus(url, 62n);
          const ours = status.waiters.filter((w) => w.pid !== plainPid);
          return ours.length === 3 && ours.every((w) => (w.waitingMs ?? -1) > firstMs.get(w.pid)!);
        },
        10_000,
        'the waiting counts to grow',
      );
      expect(status.locked).toBe(true);
      expect(status.holder).toMatchObject({
        pid: holderPid,
        // The holding's tag: key, token, then this process and host.
        applicationName: expect.stringMatching(new RegExp(`^pg-migration-lock:62:[0-9a-z]{6}\\.${process.pid}@`)),
        clientAddr: '127.0.0.1',
        backendStart: expect.any(Date),
        state: 'idle',
      });
      expect(status.waiters).toHaveLength(4);
      // Waiters carry the name of the connection: `pg-migration-lock:<host>:<pid>` (or the plain session's own).
      expect(
        status.waiters.filter((w) => w.applicationName === `pg-migration-lock:${hostname()}:${process.pid}`),
      ).toHaveLength(3);
      const plainWaiter = status.waiters.find((w) => w.pid === plainPid);
      for (const waiter of status.waiters) {
        expect(waiter.pid).not.toBe(holderPid);
        expect(waiter.waitingMs).toBeTypeOf('number');
        // The last to arrive has waited no longer than any other (one reading, the server's clock).
        expect(waiter.waitingMs!).toBeGreaterThanOrEqual(plainWaiter?.waitingMs ?? 0);
      }
      release();
      await holder;
      // The plain session gets its turn among ours; once it has, it must let go for the rest to finish.
      await blocked;
      await plain.query('SELECT pg_advisory_unlock(62)');
      await Promise.all(waiters);
    });
    expect(await getLockStatus(url, 62n)).toMatchObject({ locked: false, holder: null, waiters: [], work: [] });
  });

  test('releaseLock on a free key changes nothing', async () => {
    expect(await releaseLock(url, 63n)).toEqual({ released: false, pid: null, terminated: [] });
  });
});
