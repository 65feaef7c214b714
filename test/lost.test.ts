import pg from 'pg';
import { describe, expect, test } from 'vitest';
import { MigrationLockLostError, releaseLock, withMigrationLock } from '../src/index.js';
import { createTestDatabase, fixture, lockRows, spawnNode, waitFor, withClient } from './helpers.js';

const url = await createTestDatabase();
const quiet = { logger: null };
const terminate = (pid: number) => withClient(url, (client) => client.query('SELECT pg_terminate_backend($1)', [pid]));

describe('lock loss while fn runs', () => {
  test('pg_terminate_backend of an idle lock session aborts the signal; the call rejects even though fn resolves', async () => {
    const lost: unknown[] = [];
    let aborted: unknown;
    const error = await withMigrationLock(
      url,
      51n,
      async ({ client, signal }) => {
        const { pid } = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0];
        await terminate(pid);
        // The loss may already have been noticed while the terminating query was in flight.
        if (!signal.aborted) await new Promise((resolve) => signal.addEventListener('abort', resolve));
        aborted = signal.reason;
        return 'finished anyway';
      },
      { ...quiet, hooks: { onLockLost: (err) => lost.push(err) } },
    ).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(MigrationLockLostError);
    expect(aborted).toBe(error);
    expect(lost).toEqual([error]);
    const cause = (error as MigrationLockLostError).cause as { code?: string };
    expect(cause.code).toBe('57P01'); // admin_shutdown: terminating connection due to administrator command
    expect(await lockRows(url, 51n)).toEqual([]);
  });

  test('a migration query running on the lock session fails with MigrationLockLostError', async () => {
    const pool = new pg.Pool({ connectionString: url, max: 1 });
    pool.on('error', () => {});
    try {
      const error = await withMigrationLock(
        pool,
        52n,
        async ({ client }) => {
          const { pid } = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0];
          setTimeout(() => terminate(pid), 100);
          await client.query('SELECT pg_sleep(30)');
        },
        quiet,
      ).catch((err: unknown) => err);
      expect(error).toBeInstanceOf(MigrationLockLostError);
      expect(((error as Error).cause as Error).message).toMatch(/terminating connection/);
      // The broken connection was not given back to the pool.
      expect(pool.totalCount).toBe(0);
      expect(await withMigrationLock(pool, 52n, () => 'usable again', quiet)).toBe('usable again');
    } finally {
      await pool.end();
    }
  });

  test('a killed backend fails the query fn is awaiting; fn may catch it, the call still rejects', async () => {
    let abortedInCatch: boolean | undefined;
    const error = await withMigrationLock(
      url,
      57n,
      async ({ client, signal }) => {
        const { pid } = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0];
        setTimeout(() => terminate(pid), 100);
        await client.query('SELECT pg_sleep(30)').catch(() => {
          abortedInCatch = signal.aborted;
        });
        return 'carried on';
      },
      quiet,
    ).catch((err: unknown) => err);
    expect(abortedInCatch).toBe(true);
    expect(error).toBeInstanceOf(MigrationLockLostError);
  });

  test('a lock that fn itself dropped (DISCARD ALL) is a lost lock, not a success', async () => {
    const error = await withMigrationLock(url, 58n, ({ client }) => client.query('DISCARD ALL'), quiet).catch(
      (err: unknown) => err,
    );
    expect(error).toBeInstanceOf(MigrationLockLostError);
    expect(String(error)).toMatch(/no longer held it at release/);
  });

  test('releaseLock terminates only the holder, whose call then fails with MigrationLockLostError', async () => {
    const holder = spawnNode(fixture('lock-worker.mjs'), ['hold', url, '53']);
    await waitFor(() => holder.output().includes('acquired'), 10_000, 'the holder');
    const holderPid = Number(/acquired (\d+)/.exec(holder.output())![1]);
    await withClient(url, async (bystander) => {
      // Same classid/objid but another lock, and another session: both must survive.
      await bystander.query('SELECT pg_advisory_lock(54), pg_advisory_lock_shared(0, 53)');
      expect(await releaseLock(url, 53n)).toEqual({ released: true, pid: holderPid, terminated: [holderPid] });
      expect(await lockRows(url, 53n)).toEqual([]);
      const { rows } = await bystander.query(
        `SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()`,
      );
      expect(rows[0].n).toBe(2);
    });
    const exited = await holder.exited;
    expect(exited.code).toBe(3);
    expect(exited.stdout).toMatch(/MigrationLockLostError: Lost the session holding migration lock 53/);
    expect(await releaseLock(url, 53n)).toEqual({ released: false, pid: null, terminated: [] });
  });

  test('releaseLock with { pid } terminates only that backend, not whoever holds the lock now', async () => {
    const holder = spawnNode(fixture('lock-worker.mjs'), ['hold', url, '56']);
    await waitFor(() => holder.output().includes('acquired'), 10_000, 'the holder');
    const holderPid = Number(/acquired (\d+)/.exec(holder.output())![1]);
    expect(await releaseLock(url, 56n, { pid: holderPid + 100_000 })).toEqual({
      released: false,
      pid: null,
      terminated: [],
    });
    expect(await lockRows(url, 56n)).toEqual([{ pid: holderPid, granted: true, objsubid: 1 }]);
    expect(await releaseLock(url, 56n, { pid: holderPid })).toEqual({
      released: true,
      pid: holderPid,
      terminated: [holderPid],
    });
    expect((await holder.exited).code).toBe(3);
    await expect(releaseLock(url, 56n, { pid: -1 })).rejects.toThrow(TypeError);
  });

  test('a holder killed with SIGKILL frees the lock; a waiter proceeds within about a second', async () => {
    const holder = spawnNode(fixture('lock-worker.mjs'), ['hold', url, '55']);
    await waitFor(() => holder.output().includes('acquired'), 10_000, 'the holder');
    let startedAt = 0;
    const waiting = withMigrationLock(url, 55n, () => (startedAt = performance.now()), quiet);
    await waitFor(async () => (await lockRows(url, 55n)).length === 1 && startedAt === 0);
    const killedAt = performance.now();
    holder.child.kill('SIGKILL');
    await waiting;
    expect((await holder.exited).signal).toBe('SIGKILL');
    // The backend sees the socket close at once; the waiter's next poll (every 0.9–1.3 s) then finds the lock free.
    expect(startedAt - killedAt).toBeLessThan(2_000);
  });
});
