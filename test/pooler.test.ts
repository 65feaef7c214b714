// The lock through a real PgBouncer (our own processes in front of the test server): session mode keeps every
// guarantee; transaction mode cannot keep a session, and these tests pin down what happens then.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  getLockStatus,
  type LockStatus,
  type Logger,
  MigrationLockError,
  releaseLock,
  withMigrationLock,
} from '../src/index.js';
import { findPgbouncer, type Pgbouncer, startPgbouncer } from './fixtures/pooler/pgbouncer.mjs';
import {
  createTestDatabase,
  expectSerialSections,
  fixture,
  lockRows,
  resetSectionTables,
  skipUnlessRequired,
  sleep,
  spawnNode,
  waitFor,
  withClient,
} from './helpers.js';

const binary = findPgbouncer();
const skip = skipUnlessRequired(
  binary
    ? undefined
    : 'pooler.test.ts needs pgbouncer (on PATH, in /usr/sbin or $PGBOUNCER; apt-get install -y pgbouncer)',
);
const skipped = skip ? ' [SKIPPED: pgbouncer is not installed; apt-get install -y pgbouncer]' : '';
const pgbouncerTest = test.skipIf(skip);

// Direct to the server: pg_locks is always read here, never through a pooler.
const url = await createTestDatabase();
let session: Pgbouncer;
let transaction: Pgbouncer;

beforeAll(async () => {
  if (!binary) return;
  [session, transaction] = await Promise.all([
    startPgbouncer(binary, { serverUrl: url, poolMode: 'session' }),
    // `single`: one server connection for every client, as in a small transaction pool under load.
    startPgbouncer(binary, {
      serverUrl: url,
      poolMode: 'transaction',
      databases: { db: {}, single: { pool_size: 1 } },
    }),
  ]);
});
afterAll(async () => {
  await Promise.all([session?.stop(), transaction?.stop()]);
});

const quiet = { logger: null };
const hold = (target: string, key: bigint) => spawnNode(fixture('lock-worker.mjs'), ['hold', target, String(key)]);
const heldOn = async (holder: ReturnType<typeof hold>) =>
  Number((await waitFor(() => /acquired (\d+)/.exec(holder.output()), 10_000, 'the holder'))![1]);

/** Every advisory row of the key on the server: the lock (objsubid 1) and the waiters' registry (objsubid 2). */
const keyRows = (key: bigint) =>
  withClient(url, async (client) => {
    const { rows } = await client.query<{ pid: number; objsubid: number; granted: boolean }>(
      `SELECT pid, objsubid, granted FROM pg_locks
       WHERE locktype = 'advisory' AND objsubid IN (1, 2)
         AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       ORDER BY objsubid, pid`,
      [key.toString()],
    );
    return rows;
  });

function recordingLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  return {
    warnings,
    debug() {},
    info() {},
    warn: (m: string) => warnings.push(m),
    error: (m: string) => warnings.push(m),
  };
}

/** Opens clients through the pooler, each in an open transaction, until one sits on server backend `pid`. */
async function occupy(target: string, pid: number) {
  const clients: pg.Client[] = [];
  let occupant: pg.Client | undefined;
  for (let i = 0; i < 10 && !occupant; i++) {
    const client = new pg.Client(target);
    client.on('error', () => {});
    await client.connect();
    clients.push(client);
    await client.query('BEGIN');
    if ((await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid === pid) occupant = client;
  }
  if (!occupant) throw new Error(`no client of the pooler landed on backend ${pid}`);
  return { occupant, others: clients.filter((c) => c !== occupant), all: clients };
}

describe(`PgBouncer, pool_mode = session${skipped}`, () => {
  pgbouncerTest(
    '8 OS processes contending through it: critical sections never overlap, no update is lost',
    async () => {
      await resetSectionTables(url);
      const replicas = Array.from({ length: 8 }, () =>
        spawnNode(fixture('lock-worker.mjs'), ['section', session.url(), '101', '40']),
      );
      const exits = await Promise.all(replicas.map((r) => r.exited));
      expect(exits.map((e) => [e.code, e.stderr])).toEqual(exits.map(() => [0, '']));

      await expectSerialSections(url, 8);
      expect(await keyRows(101n)).toEqual([]);
    },
  );

  pgbouncerTest('a release wakes the next waiter through it at once: LISTEN/NOTIFY works in session mode', async () => {
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const holder = withMigrationLock(session.url(), 102n, () => released, quiet);
    await waitFor(async () => (await lockRows(url, 102n)).length === 1, 10_000, 'the holder');
    let acquiredAt = 0;
    // With these intervals the waiter's next poll comes long after the test's own timeout: it can only find the
    // lock free through the NOTIFY. Proceeding at all is the proof; how fast is logged, not asserted.
    const waiter = withMigrationLock(session.url(), 102n, () => (acquiredAt = performance.now()), {
      ...quiet,
      pollIntervalMs: 10 * 60_000,
      reportEveryMs: 10 * 60_000,
    });
    // Asleep after a first poll that failed.
    await waitFor(
      async () => {
        const [w] = (await getLockStatus(url, 102n)).waiters;
        return w?.state === 'idle' && /SELECT pg_try_advisory_lock\('/.test(w.query ?? '');
      },
      10_000,
      'the waiter to poll once',
    );
    const releasedAt = performance.now();
    release();
    await Promise.all([holder, waiter]);
    const handoffMs = acquiredAt - releasedAt;
    console.info(
      `[pooler] session mode: hand-off through PgBouncer (unlock + NOTIFY + acquire) ${handoffMs.toFixed(1)} ms`,
    );
    expect(acquiredAt).toBeGreaterThan(releasedAt);
    expect(await keyRows(102n)).toEqual([]);
  });

  pgbouncerTest(
    'a holder killed with SIGKILL: DISCARD ALL (server_reset_query) frees the lock on the still-open server connection, and a waiter proceeds',
    async () => {
      const holder = hold(session.url(), 103n);
      const holderBackend = await heldOn(holder);
      let acquiredAt = 0;
      let waiterBackend = 0;
      const waiter = withMigrationLock(
        session.url(),
        103n,
        async ({ client }) => {
          acquiredAt = performance.now();
          waiterBackend = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
        },
        quiet,
      );
      await waitFor(async () => (await getLockStatus(url, 103n)).waiters.length === 1, 10_000, 'the waiter');

      await withClient(url, async (direct) => {
        const killedAt = performance.now();
        holder.child.kill('SIGKILL');
        await waitFor(
          async () => (await lockRows(url, 103n)).every((row) => row.pid !== holderBackend),
          5_000,
          'release',
        );
        const freedMs = performance.now() - killedAt;
        // The server connection survived: PgBouncer reset it with DISCARD ALL (which unlocks all advisory
        // locks) and keeps it in its pool. The lock was not freed by a dying backend.
        const { rows } = await direct.query('SELECT state, query FROM pg_stat_activity WHERE pid = $1', [
          holderBackend,
        ]);
        expect(rows).toEqual([{ state: 'idle', query: 'DISCARD ALL' }]);
        await waiter;
        const handoffMs = acquiredAt - killedAt;
        console.info(
          `[pooler] session mode: SIGKILLed holder's lock freed by DISCARD ALL within ${freedMs.toFixed(0)} ms; the waiter (polling about every second) proceeded after ${handoffMs.toFixed(0)} ms`,
        );
        // The order of events: killed, then freed (within the wait's 5 s deadline above), then the waiter proceeded.
        expect(acquiredAt).toBeGreaterThan(killedAt);
      });
      expect(waiterBackend).not.toBe(holderBackend);
      expect((await holder.exited).signal).toBe('SIGKILL');
      expect(await keyRows(103n)).toEqual([]);
    },
  );

  pgbouncerTest(
    'getLockStatus through it shows the holder and the waiters; releaseLock through it frees the lock and the holder notices',
    async () => {
      const holder = hold(session.url(), 104n);
      const holderBackend = await heldOn(holder);
      let done = 0;
      const waiters = [1, 2, 3].map(() => withMigrationLock(session.url(), 104n, () => void done++, quiet));
      const status = (await waitFor(
        async () => {
          const s = await getLockStatus(session.url(), 104n);
          // Each waiter shows how long it has waited once its first poll (which carries the breadcrumb) ran.
          return s.waiters.length === 3 && s.waiters.every((w) => w.waitingMs !== undefined) && s;
        },
        10_000,
        '3 waiters',
      )) as LockStatus;
      expect(status).toMatchObject({
        key: 104n,
        locked: true,
        holder: {
          pid: holderBackend,
          // PgBouncer passes application_name on to the server connection: the holder is named by its tag.
          applicationName: expect.stringMatching(
            new RegExp(`^pg-migration-lock:104:[0-9a-z]{6}\\.${holder.child.pid}@`),
          ),
          clientAddr: '127.0.0.1',
          state: 'idle',
        },
      });
      expect(new Set(status.waiters.map((w) => w.pid)).size).toBe(3);
      for (const waiter of status.waiters) {
        expect(waiter.pid).not.toBe(holderBackend);
        expect(waiter.applicationName).toMatch(new RegExp(`^pg-migration-lock:.+:${process.pid}$`));
        expect(waiter.waitingMs).toBeGreaterThanOrEqual(0);
      }
      expect(done).toBe(0);

      expect(await releaseLock(session.url(), 104n)).toEqual({
        released: true,
        pid: holderBackend,
        terminated: [holderBackend],
      });
      // PgBouncer closes the client of a terminated server connection: the holder learns it lost the lock.
      const exited = await holder.exited;
      expect(exited.code).toBe(3);
      expect(exited.stdout).toMatch(/MigrationLockLostError: Lost the session holding migration lock 104/);
      await Promise.all(waiters);
      expect(done).toBe(3);
      expect(await getLockStatus(session.url(), 104n)).toEqual({
        key: 104n,
        locked: false,
        holder: null,
        waiters: [],
        work: [],
        standby: false,
      });
      expect(await keyRows(104n)).toEqual([]);
    },
  );
});

// Transaction mode hands each transaction to whichever server connection is free, so a session lock outlives
// the statement that took it on a connection that other clients then use. Do not use it for the lock.
// These tests pin down today's behaviour, defects included (no exclusion, no warning, a leaked registry entry):
// when the core learns to detect a transaction-mode pooler, flip them to expect that detection.
describe(`PgBouncer, pool_mode = transaction (documents the limits)${skipped}`, () => {
  pgbouncerTest(
    'calls that share one server connection are refused instead of all "acquiring" (advisory locks are re-entrant)',
    async () => {
      let inside = 0;
      let most = 0;
      const outcomes = await Promise.allSettled(
        [1, 2, 3].map(() =>
          withMigrationLock(
            transaction.url('single'),
            201n,
            async () => {
              most = Math.max(most, ++inside);
              await sleep(300);
              inside--;
            },
            { logger: null },
          ),
        ),
      );
      // The first call holds the lock on the only server connection; the others find it already held there.
      expect(most).toBe(1);
      expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
      for (const outcome of outcomes.filter((o) => o.status === 'rejected')) {
        expect(outcome.reason).toBeInstanceOf(MigrationLockError);
        expect(String(outcome.reason)).toMatch(/already holds migration lock 201.*transaction-mode pooler/);
      }
      expect(await keyRows(201n)).toEqual([]);
    },
  );

  pgbouncerTest(
    'when the pooler moves the call to another server connection, the release warns and terminates the backend that kept the lock (and the transaction of whoever had it); no lock is left',
    async () => {
      const logger = recordingLogger();
      let lockBackend = 0;
      let clients: Awaited<ReturnType<typeof occupy>> | undefined;
      const result = await withMigrationLock(
        transaction.url(),
        202n,
        async () => {
          // Another client of the pooler takes the server connection holding the lock into a transaction,
          // so this call's next statements run elsewhere.
          clients = await occupy(transaction.url(), lockBackend);
          expect(await lockRows(url, 202n)).toEqual([{ pid: lockBackend, granted: true, objsubid: 1 }]);
          return 'migrated';
        },
        { logger, hooks: { onAcquired: ({ pid }) => (lockBackend = pid) } },
      );
      try {
        expect(result).toBe('migrated');
        expect(logger.warnings).toHaveLength(1);
        expect(logger.warnings[0]).toMatch(
          new RegExp(
            `taken on backend ${lockBackend} but released from backend \\d+.*backend ${lockBackend} was terminated.*PgBouncer pool_mode = session`,
          ),
        );
        // pg_terminate_backend only signals: the lock is gone once that backend has exited.
        await waitFor(async () => (await keyRows(202n)).length === 0, 5_000, 'no lock left');
        // Collateral: the unrelated client whose transaction was on that backend loses it.
        await expect(clients!.occupant.query('COMMIT')).rejects.toThrow();
        for (const other of clients!.others) await other.query('COMMIT');
        expect(await keyRows(202n)).toEqual([]);
      } finally {
        await Promise.all(clients?.all.map((c) => c.end().catch(() => {})) ?? []);
      }
    },
  );

  pgbouncerTest(
    'a waiter whose polls move to another server connection fails fast, naming the pooler; its registry entry may stay behind',
    async () => {
      let registryBackend = 0;
      await withClient(url, async (direct) => {
        await direct.query('SELECT pg_advisory_lock(203)');
        const waiter = withMigrationLock(transaction.url(), 203n, () => 'done', { logger: null, pollIntervalMs: 50 });
        const registry = (await waitFor(
          async () => (await keyRows(203n)).find((row) => row.objsubid === 2),
          10_000,
          'the waiter to register',
        ))!;
        registryBackend = registry.pid;
        // The server connection that carries the registry entry goes to another client's transaction.
        const clients = await occupy(transaction.url(), registryBackend);
        try {
          const error = await waiter.catch((err: unknown) => err);
          expect(error).toBeInstanceOf(MigrationLockError);
          expect(String(error)).toMatch(
            new RegExp(`moved from backend ${registryBackend} to \\d+.*transaction-mode pooler`),
          );
          for (const client of clients.all) await client.query('COMMIT');
        } finally {
          await Promise.all(clients.all.map((c) => c.end().catch(() => {})));
        }
        await direct.query('SELECT pg_advisory_unlock(203)');
      });
      // Only the session that holds a registry entry can drop it, and that pooled connection now serves others:
      // the entry stays until PgBouncer closes the connection (server_lifetime). It excludes nobody.
      expect((await keyRows(203n)).filter((row) => row.objsubid === 1)).toEqual([]);
      await withClient(url, (direct) => direct.query('SELECT pg_terminate_backend($1)', [registryBackend]));
      await waitFor(async () => (await keyRows(203n)).length === 0, 5_000, 'the entry to go');
    },
  );
});
