// The tests every runtime and driver gets (test/bun.test.ts, test/neon.test.ts): real OS processes of
// test/fixtures/runtimes/worker.mjs taking turns, a lock session terminated while holding and while waiting,
// the server restarted under waiters, and a new holder fencing an orphaned holding's tagged work.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { getLockStatus, withMigrationLock } from '../src/index.js';
import {
  createTestDatabase,
  type Exited,
  expectSerialSections,
  fixture,
  lockRows,
  resetSectionTables,
  waitFor,
  withClient,
} from './helpers.js';
import { type Postgres, startPostgres } from './postgres.mjs';

export const WORKER = fixture('runtimes/worker.mjs');

export interface Worker {
  child: import('node:child_process').ChildProcess;
  exited: Promise<Exited>;
  output: () => string;
}

export interface Runtime {
  /** How this runtime runs `worker.mjs <mode> <form> <url> <key>`, with extra environment. */
  spawn(args: string[], env?: Record<string, string>): Worker;
  /** The forms (see worker.mjs) the race runs, one process each; the first one is used for the faults. */
  race: string[];
  /** The forms that wait, one process each, while the server restarts. */
  restartForms: string[];
}

const terminate = (url: string, pid: number) =>
  withClient(url, (client) => client.query('SELECT pg_terminate_backend($1)', [pid]));
const acquiredPid = async (worker: Worker) =>
  Number((await waitFor(() => /acquired (\d+)/.exec(worker.output()), 15_000, 'the holder'))![1]);

export function runtimeTests(runtime: Runtime, skip: boolean) {
  const form = runtime.race[0]!;
  let url = '';
  beforeAll(async () => {
    if (!skip) url = await createTestDatabase();
  });
  const spawn = (mode: string, which: string, key: string, env?: Record<string, string>, at = url) =>
    runtime.spawn([mode, which, at, key], env);

  test.skipIf(skip)(
    `${runtime.race.length} OS processes (${runtime.race.join(', ')}) take turns: no overlap, no update lost`,
    async () => {
      await resetSectionTables(url);
      const workers = runtime.race.map((which) => spawn('section', which, '11'));
      const exits = await Promise.all(workers.map((worker) => worker.exited));
      expect(exits.map((e) => [e.code, e.stderr, e.stdout.trim().split('\n').at(-1)])).toEqual(
        exits.map(() => [0, '', 'settled ran']),
      );
      await expectSerialSections(url, runtime.race.length);
    },
  );

  test.skipIf(skip)(
    `${form}: pg_terminate_backend of the holding session is a lost lock (MigrationLockLostError), freed on the server`,
    async () => {
      const holder = spawn('hold', form, '12');
      await terminate(url, await acquiredPid(holder));
      const exited = await holder.exited;
      expect(exited.stdout).toMatch(
        /settled MigrationLockLostError: Lost the session holding migration lock 12 .*terminating connection/,
      );
      expect(exited.code).toBe(3);
      expect(await lockRows(url, 12n)).toEqual([]);
    },
  );

  /** Holds key `key` in this process until the returned function is called (and resolves when released). */
  const holdHere = async (key: bigint) => {
    let release = () => {};
    const released = new Promise<void>((resolve) => (release = resolve));
    const holding = withMigrationLock(url, key, () => released, { logger: null });
    await waitFor(async () => (await lockRows(url, key)).length === 1);
    return () => {
      release();
      return holding;
    };
  };
  const waiterPid = (key: bigint, what: string) =>
    waitFor(async () => (await getLockStatus(url, key)).waiters[0]?.pid, 15_000, what);

  test.skipIf(skip)(
    `${form}: a waiter whose session is terminated reconnects, waits on, and runs after the release`,
    async () => {
      const release = await holdHere(13n);
      await resetSectionTables(url);
      const waiter = spawn('section', form, '13');
      const first = await waiterPid(13n, 'the waiter');
      await terminate(url, first!);
      const reconnect = /warn Lost the connection while waiting for migration lock 13 .*reconnecting in/;
      await waitFor(() => reconnect.test(waiter.output()), 15_000, 'the reconnect');
      expect(await waiterPid(13n, 'the waiter again')).not.toBe(first);
      await release();
      expect((await waiter.exited).stdout.trim().split('\n').at(-1)).toBe('settled ran');
      await expectSerialSections(url, 1);
    },
  );

  test.skipIf(skip)(`${form}: LISTEN wakes a waiter at the release (it polls only every 60 s)`, async () => {
    const release = await holdHere(16n);
    await resetSectionTables(url);
    const waiter = spawn('section', form, '16', { PGML_POLL_MS: '60000' });
    const pid = await waiterPid(16n, 'the waiter');
    // Released once the waiter has tried and sleeps (its session idle after a try), not before its first try.
    await waitFor(
      () =>
        withClient(url, async (c) => {
          const sql = `SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'idle' AND query LIKE '%pg_try_advisory_lock(%'`;
          return (await c.query(sql, [pid])).rows.length === 1;
        }),
      15_000,
      'the waiter to sleep',
    );
    await release();
    // Far sooner than its next try: the release's NOTIFY reached it.
    const exited = await Promise.race([
      waiter.exited,
      new Promise<undefined>((r) => setTimeout(() => r(undefined), 20_000)),
    ]);
    if (!exited) waiter.child.kill();
    expect(exited?.stdout.trim().split('\n').at(-1)).toBe('settled ran');
  });

  test.skipIf(skip)(
    `${form}: a new holder terminates the tagged work an orphaned (SIGKILLed) holding left running`,
    async () => {
      const orphan = spawn('orphan', form, '14');
      const work = Number((await waitFor(() => /work (\d+)/.exec(orphan.output()), 15_000, 'the tagged work'))![1]);
      const sleeping = () =>
        withClient(url, async (c) => {
          const sql = "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'";
          return (await c.query(sql, [work])).rows.length;
        });
      // Killed once the work's statement runs (an idle backend would end with its client's socket).
      await waitFor(sleeping, 10_000, 'the work to sleep');
      orphan.child.kill('SIGKILL');
      await orphan.exited;
      // The work goes on sleeping after its process died: only fencing ends it.
      expect(await sleeping(), orphan.output()).toBe(1);
      const next = spawn('hold', form, '14');
      await acquiredPid(next);
      expect(next.output()).toMatch(new RegExp(`terminated pid ${work}; starting`));
      expect(await sleeping()).toBe(0);
      next.child.stdin?.write('end\n');
      expect((await next.exited).stdout).toMatch(/settled value/);
    },
  );

  describe.skipIf(skip)('the server restarts (immediate shutdown, down 1 s) while sessions wait', () => {
    let server: Postgres;
    beforeAll(async () => {
      server = await startPostgres({ durable: false });
    });
    afterAll(() => server?.stop());

    test(`the ${form} holder loses the lock; ${runtime.restartForms.join(', ')} waiters reconnect and take turns`, async () => {
      await resetSectionTables(server.url);
      const holder = spawn('hold', form, '15', {}, server.url);
      await acquiredPid(holder);
      const waiters = runtime.restartForms.map((which) => spawn('section', which, '15', {}, server.url));
      await waitFor(
        async () => (await getLockStatus(server.url, 15n)).waiters.length === waiters.length,
        15_000,
        'the waiters',
      );
      await server.restart!('immediate', 1_000);
      const [held, ...waited] = await Promise.all([holder.exited, ...waiters.map((w) => w.exited)]);
      expect(held.stdout).toMatch(/settled MigrationLockLostError/);
      for (const exited of waited) {
        expect(exited.stdout).toMatch(/warn Lost the connection while waiting for migration lock 15 .*reconnecting in/);
        expect(exited.stdout.trim().split('\n').at(-1)).toBe('settled ran');
      }
      await expectSerialSections(server.url, waiters.length);
      expect(await lockRows(server.url, 15n)).toEqual([]);
    });
  });
}
