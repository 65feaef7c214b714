import { hostname } from 'node:os';
import pg from 'pg';
import { describe, expect, test, vi } from 'vitest';
import {
  getLockStatus,
  type Logger,
  MigrationLockBusyError,
  MigrationLockTimeoutError,
  withMigrationLock,
} from '../src/index.js';
import { createTestDatabase, lockRows, sleep, waitFor, withClient } from './helpers.js';

const url = await createTestDatabase();
const quiet = { logger: null };

/** Holds `key` on a separate connection until the returned release() is called. */
async function holdLock(key: bigint, options = {}) {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let acquired!: () => void;
  const ready = new Promise<void>((resolve) => (acquired = resolve));
  const done = withMigrationLock(
    url,
    key,
    async () => {
      acquired();
      await released;
    },
    { ...quiet, ...options },
  );
  await ready;
  return {
    release: () => {
      release();
      return done;
    },
    done,
  };
}

function recordingLogger() {
  const lines: string[] = [];
  const logger: Logger = {
    debug: (m) => lines.push(`debug ${m}`),
    info: (m) => lines.push(`info ${m}`),
    warn: (m) => lines.push(`warn ${m}`),
    error: (m) => lines.push(`error ${m}`),
  };
  return { logger, lines };
}

describe('client forms', () => {
  test('connection string: fn runs on the locking session; the connection is named and closed after', async () => {
    const seen = await withMigrationLock(
      url,
      11n,
      async ({ client, key, signal, waitedMs, tag }) => {
        const { rows } = await client.query(
          `SELECT pg_backend_pid() AS pid, current_setting('application_name') AS app,
                current_setting('tcp_keepalives_idle') AS idle`,
        );
        const locks = await lockRows(url, key);
        return { ...rows[0], locks, signal, waitedMs, tag };
      },
      quiet,
    );
    expect(seen.locks).toEqual([{ pid: seen.pid, granted: true, objsubid: 1 }]);
    // While it holds, the session carries the holding's fencing tag, which still names this process and host.
    expect(seen.app).toBe(seen.tag);
    expect(seen.app).toMatch(
      new RegExp(`^pg-migration-lock:11:[0-9a-z]{6}\\.${process.pid}@${hostname().slice(0, 10)}`),
    );
    expect(seen.idle).toBe('10');
    expect(seen.signal.aborted).toBe(false);
    expect(seen.waitedMs).toBe(0);
    await waitFor(
      () =>
        withClient(
          url,
          async (c) => (await c.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [seen.pid])).rowCount === 0,
        ),
      5000,
      'the lock connection to close',
    );
  });

  test('config object with applicationName option: the connection is named so, and the holding tag ends with it', async () => {
    const held = await holdLock(12n);
    const waiting = withMigrationLock(
      { connectionString: url },
      12n,
      async ({ client }) => (await client.query(`SELECT current_setting('application_name') AS a`)).rows[0].a,
      { ...quiet, applicationName: 'deploy-42' },
    );
    const waiter = await waitFor(async () => (await getLockStatus(url, 12n)).waiters[0], 10_000, 'the waiter');
    expect(waiter?.applicationName).toBe('deploy-42');
    await held.release();
    expect(await waiting).toMatch(/^pg-migration-lock:12:[0-9a-z]{6}\.deploy-42$/);
  });

  test('pool: one connection checked out for the call and given back', async () => {
    const pool = new pg.Pool({ connectionString: url, max: 3 });
    try {
      const pid = await withMigrationLock(
        pool,
        13n,
        async ({ client }) => {
          expect(pool.totalCount - pool.idleCount).toBe(1);
          return (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
        },
        quiet,
      );
      expect(pool.idleCount).toBe(1);
      expect(pid).toBeTypeOf('number');
      expect(await lockRows(url, 13n)).toEqual([]);
    } finally {
      await pool.end();
    }
  });

  test('one pool serves concurrent calls, each on a session of its own', async () => {
    const pool = new pg.Pool({ connectionString: url, max: 4 });
    try {
      const order: string[] = [];
      const call = (key: bigint, name: string) =>
        withMigrationLock(
          pool,
          key,
          async () => {
            order.push(`${name} in`);
            await sleep(50);
            order.push(`${name} out`);
          },
          quiet,
        );
      await Promise.all([call(17n, 'a'), call(17n, 'b'), call(18n, 'c')]);
      // Same key: one after the other; another key: alongside.
      expect(order.indexOf('a out') < order.indexOf('b in') || order.indexOf('b out') < order.indexOf('a in')).toBe(
        true,
      );
      expect(order).toHaveLength(6);
    } finally {
      await pool.end();
    }
  });

  test('connected client: used as-is, not ended, lock and waiter state cleaned up', async () => {
    await withClient(url, async (client) => {
      const { pid } = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0];
      const held = await holdLock(14n);
      const waiting = withMigrationLock(
        client,
        14n,
        async (ctx) => {
          expect(ctx.client).toBe(client);
          return (await lockRows(url, 14n)).map((r) => r.pid);
        },
        quiet,
      );
      await waitFor(async () => (await getLockStatus(url, 14n)).waiters.length === 1);
      await held.release();
      expect(await waiting).toEqual([pid]);
      const after = await client.query(
        `SELECT (SELECT count(*)::int FROM pg_listening_channels()) AS channels,
                (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks`,
      );
      expect(after.rows[0]).toEqual({ channels: 0, locks: 0 });
    });
  });

  test('two concurrent calls on one client are refused (advisory locks are re-entrant per session)', async () => {
    await withClient(url, async (client) => {
      await withMigrationLock(
        client,
        15n,
        async () => {
          await expect(withMigrationLock(client, 15n, () => {}, quiet)).rejects.toThrow(
            /already inside withMigrationLock/,
          );
        },
        quiet,
      );
    });
  });
  test("a client's own connection: the two statements of each call are prepared once, and an app's DISCARD ALL between calls costs nothing", async () => {
    await withClient(url, async (client) => {
      const prepared = async () =>
        (await client.query("SELECT count(*)::int AS n FROM pg_prepared_statements WHERE name LIKE 'pgml\\_%'")).rows[0]
          .n;
      for (let i = 0; i < 3; i++) expect(await withMigrationLock(client, 27n, () => i, quiet)).toBe(i);
      // The statement that takes the lock and the one that releases it: two, however many calls.
      expect(await prepared()).toBe(2);
      // The app discards them (pg still believes they are prepared): the next calls take the lock all the same.
      await client.query('DISCARD ALL');
      for (let i = 0; i < 2; i++) expect(await withMigrationLock(client, 27n, () => 'after', quiet)).toBe('after');
      expect(await lockRows(url, 27n)).toEqual([]);
      expect((await client.query("SELECT current_setting('application_name') AS app")).rows[0].app).toBe('');
    });
  });
});

describe('results and errors', () => {
  test("fn's value is returned and fn's error rethrown as the same object, after the lock is released", async () => {
    expect(await withMigrationLock(url, 21n, () => 'value', quiet)).toBe('value');
    const boom = new Error('boom');
    const error = await withMigrationLock(
      url,
      21n,
      async () => {
        throw boom;
      },
      quiet,
    ).catch((err: unknown) => err);
    expect(error).toBe(boom);
    expect(await lockRows(url, 21n)).toEqual([]);
  });

  test('wait: false rejects with MigrationLockBusyError naming the holder; fn is not called', async () => {
    const held = await holdLock(22n);
    const fn = vi.fn();
    const error = await withMigrationLock(url, 22n, fn, { ...quiet, wait: false }).catch((err: unknown) => err);
    await held.release();
    expect(error).toBeInstanceOf(MigrationLockBusyError);
    const busy = error as MigrationLockBusyError;
    expect(busy.key).toBe(22n);
    expect(busy.holder?.pid).toBeTypeOf('number');
    expect(busy.holder?.applicationName).toMatch(/^pg-migration-lock:/);
    expect(busy.message).toContain(`pid ${busy.holder?.pid}`);
    expect(fn).not.toHaveBeenCalled();
  });

  test('a refused or failed acquisition gives the session back: our own connection is closed, a pooled one returned', async () => {
    const held = await holdLock(25n);
    const pool = new pg.Pool({ connectionString: url, max: 1 });
    try {
      await expect(withMigrationLock(pool, 25n, () => {}, { ...quiet, wait: false })).rejects.toThrow(
        MigrationLockBusyError,
      );
      expect([pool.totalCount, pool.idleCount]).toEqual([1, 1]);
      await expect(withMigrationLock(pool, 25n, () => {}, { ...quiet, timeoutMs: 50 })).rejects.toThrow(
        MigrationLockTimeoutError,
      );
      expect([pool.totalCount, pool.idleCount]).toEqual([1, 1]);
      const probe = { ...quiet, wait: false, applicationName: 'pgml-busy-probe' };
      await expect(withMigrationLock(url, 25n, () => {}, probe)).rejects.toThrow(MigrationLockBusyError);
      await waitFor(
        () =>
          withClient(
            url,
            async (c) =>
              (await c.query(`SELECT 1 FROM pg_stat_activity WHERE application_name = 'pgml-busy-probe'`)).rowCount ===
              0,
          ),
        5000,
        'the refused connection to close',
      );
      // A pooled session that already holds the key (taken outside the library) is refused and destroyed.
      const client = await pool.connect();
      await client.query('SELECT pg_advisory_lock(26)');
      client.release();
      await expect(withMigrationLock(pool, 26n, () => {}, quiet)).rejects.toThrow(/already holds migration lock 26/);
      expect(pool.totalCount).toBe(0);
    } finally {
      await pool.end();
      await held.release();
    }
  });

  test('timeoutMs rejects with MigrationLockTimeoutError and leaves no waiter behind', async () => {
    const held = await holdLock(23n);
    // The order of events, not their durations (the exact waitedMs is the fake clock's, in wait.test.ts): it
    // reported waiting first, then gave up, having waited at least as long as it had reported.
    const waited: number[] = [];
    const hooks = { onWaiting: (info: { waitedMs: number }) => void waited.push(info.waitedMs) };
    const error = await withMigrationLock(url, 23n, () => {}, { ...quiet, timeoutMs: 300, hooks }).catch(
      (err: unknown) => err,
    );
    expect(error).toBeInstanceOf(MigrationLockTimeoutError);
    expect(waited.length).toBeGreaterThan(0);
    expect((error as MigrationLockTimeoutError).waitedMs).toBeGreaterThanOrEqual(Math.max(...waited));
    expect((error as MigrationLockTimeoutError).holder?.pid).toBeTypeOf('number');
    expect((await getLockStatus(url, 23n)).waiters).toEqual([]);
    await held.release();
  });

  test('an aborted signal stops the wait with its reason', async () => {
    const held = await holdLock(24n);
    const controller = new AbortController();
    const waiting = withMigrationLock(url, 24n, () => {}, { ...quiet, signal: controller.signal });
    await waitFor(async () => (await getLockStatus(url, 24n)).waiters.length === 1);
    controller.abort(new Error('deploy cancelled'));
    await expect(waiting).rejects.toThrow('deploy cancelled');
    expect((await getLockStatus(url, 24n)).waiters).toEqual([]);
    await held.release();
  });
});

describe('waiting', () => {
  test('a release wakes the next waiter by notification, not by polling', async () => {
    const held = await holdLock(31n);
    let started = 0;
    const waiting = withMigrationLock(url, 31n, () => (started = performance.now()), {
      ...quiet,
      pollIntervalMs: 600_000,
    });
    await waitFor(async () => (await getLockStatus(url, 31n)).waiters.length === 1);
    const releasedAt = performance.now();
    await held.release();
    await waiting;
    // With a 10-minute poll interval only the NOTIFY can have woken it.
    expect(started - releasedAt).toBeLessThan(5_000);
  });

  test('hooks and periodic reports; a throwing hook is logged and never fails the run', async () => {
    const { logger, lines } = recordingLogger();
    const events: string[] = [];
    const held = await holdLock(32n);
    const waiting = withMigrationLock(url, 32n, () => 'ok', {
      logger,
      reportEveryMs: 100,
      hooks: {
        onWaiting: (info) => {
          events.push(`waiting ${info.holder?.pid}`);
          throw new Error('hook bug');
        },
        onAcquired: (info) => events.push(`acquired ${info.waitedMs > 0}`),
        onReleased: (info) => events.push(`released ${info.heldMs > 0}`),
      },
    });
    // Three reports, however long each takes on a busy machine, then the release.
    const waits = () => events.filter((e) => e.startsWith('waiting '));
    await waitFor(() => waits().length >= 3, 10_000, 'three waiting reports');
    await held.release();
    expect(await waiting).toBe('ok');
    expect(waits()[0]).toMatch(/^waiting \d+$/);
    expect(events.slice(-2)).toEqual(['acquired true', 'released true']);
    expect(lines.some((l) => l.startsWith('warn onWaiting hook failed: hook bug'))).toBe(true);
    // The hook took the report over: the log line came at debug level.
    expect(lines.some((l) => /^debug Waiting for migration lock 32, held by backend pid \d+/.test(l))).toBe(true);
    expect(lines.some((l) => l.startsWith('info Waiting'))).toBe(false);
  });
});

describe('unlock failures', () => {
  test('are reported, never thrown; the pooled connection is destroyed so the lock dies with it', async () => {
    // A real failure of the release statement: the role fn switches to may not call pg_notify.
    await withClient(url, (c) =>
      c.query(`DROP ROLE IF EXISTS pgml_no_notify; CREATE ROLE pgml_no_notify;
               REVOKE EXECUTE ON FUNCTION pg_notify(text, text) FROM PUBLIC`),
    );
    const pool = new pg.Pool({ connectionString: url, max: 2 });
    const { logger, lines } = recordingLogger();
    const unlockErrors: unknown[] = [];
    const released: unknown[] = [];
    try {
      const result = await withMigrationLock(
        pool,
        41n,
        async ({ client }) => {
          await client.query('SET ROLE pgml_no_notify');
          return 'migrated';
        },
        { logger, hooks: { onUnlockError: (err) => unlockErrors.push(err), onReleased: (i) => released.push(i) } },
      );
      expect(result).toBe('migrated');
      expect(unlockErrors).toHaveLength(1);
      expect(String(unlockErrors[0])).toMatch(/permission denied for function pg_notify/);
      // Destroying the connection released the lock.
      expect(released).toHaveLength(1);
      expect(
        lines.some((l) => /^warn Could not release migration lock 41 .*destroying the pooled connection/.test(l)),
      ).toBe(true);
      expect(pool.totalCount).toBe(0);
      await waitFor(
        async () => (await lockRows(url, 41n)).length === 0,
        5000,
        'the destroyed session to drop the lock',
      );
    } finally {
      await pool.end();
      await withClient(url, (c) => c.query('GRANT EXECUTE ON FUNCTION pg_notify(text, text) TO PUBLIC'));
    }
  });

  test("a transaction fn left aborted is rolled back, so the lock is released and fn's error rethrown", async () => {
    await withClient(url, async (client) => {
      const failure = new Error('migration failed');
      const error = await withMigrationLock(
        client,
        42n,
        async ({ client: session }) => {
          await session.query('BEGIN');
          await session.query('SELECT 1/0').catch(() => {});
          throw failure;
        },
        quiet,
      ).catch((err: unknown) => err);
      expect(error).toBe(failure);
      expect(await lockRows(url, 42n)).toEqual([]);
      expect(client.getTransactionStatus()).toBe('I');
    });
  });

  test('a transaction fn left open on a pooled session is rolled back (with a warning) before it goes back', async () => {
    const pool = new pg.Pool({ connectionString: url, max: 1 });
    const { logger, lines } = recordingLogger();
    try {
      await withMigrationLock(
        pool,
        43n,
        async ({ client }) => {
          await client.query('BEGIN');
          await client.query('CREATE TABLE left_open (id int)');
        },
        { logger },
      );
      expect(lines).toContain(
        'warn fn left a transaction open on the lock session: rolling it back, since its work was not committed under the lock (a COMMIT after the unlock would be outside it); commit inside fn',
      );
      expect(await lockRows(url, 43n)).toEqual([]);
      const client = await pool.connect();
      expect(client.getTransactionStatus()).toBe('I');
      expect((await client.query(`SELECT to_regclass('left_open') AS t`)).rows[0].t).toBeNull();
      client.release();
    } finally {
      await pool.end();
    }
  });
});
