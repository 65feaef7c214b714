// Runs once, even when the lock is lost: the lock session outlives the server's timeouts, work under the lock
// carries the holding's tag, and whatever an earlier holding left running is terminated before the next one
// starts. Real processes (the CLI's `run`, a migration step as its CMD) against a real server.
import pg from 'pg';
import { afterAll, beforeEach, describe, expect, inject, test } from 'vitest';
import { getLockStatus, lockKey, MigrationLockError, MigrationLockLostError, withMigrationLock } from '../src/index.js';
import { cli, hasScript, start, startOnTerminal } from './cli/cli.js';
import { createTestDatabase, fixture, lockRows, sleep, waitFor, withClient } from './helpers.js';

const url = await createTestDatabase();
const database = new URL(url).pathname.slice(1);
const env = { DATABASE_URL: url };
const STEP = fixture('fencing/step.mjs');
const CHILD = fixture('cli/child.mjs');
const quiet = { logger: null };
const serverVersion = await withClient(url, async (c) =>
  Number((await c.query('SHOW server_version_num')).rows[0].server_version_num),
);

/** The step's tables: three balances at 1, nothing applied. */
beforeEach(() =>
  withClient(url, (c) =>
    c.query(`CREATE TABLE IF NOT EXISTS balances (id int PRIMARY KEY, v bigint NOT NULL);
             CREATE TABLE IF NOT EXISTS applied (by_pid int, at timestamptz);
             TRUNCATE balances, applied; INSERT INTO balances SELECT g, 1 FROM generate_series(1, 3) g`),
  ),
);

/** What the step did to the data: every balance's value, and how many times it was recorded. */
const outcome = () =>
  withClient(url, async (c) => {
    const { rows } = await c.query<{ values: string[]; applied: number }>(
      `SELECT (SELECT array_agg(DISTINCT v::text) FROM balances) AS values, (SELECT count(*)::int FROM applied) AS applied`,
    );
    return rows[0]!;
  });
const ONCE = { values: ['100'], applied: 1 };

/**
 * Two replicas of `run -- node step.mjs SECONDS`: the first holds the lock and is in its step, the second waits.
 * A test that cuts the first step short gives it far longer than the test needs (a loaded machine can take
 * seconds to start the second replica and the command that cuts it), and the second a short one.
 */
async function twoReplicas(seconds: number, secondSeconds = seconds) {
  const first = start(['run', '--', process.execPath, STEP, String(seconds)], { env });
  await first.waitForOutput(/^step \d+ on backend \d+ as .*$/m);
  const second = start(['run', '--', process.execPath, STEP, String(secondSeconds)], { env });
  await second.waitForOutput(/Waiting for migration lock/);
  const [, stepPid, backend, app] = /^step (\d+) on backend (\d+) as (.*)$/m.exec(first.stdout())!;
  return { first, second, stepPid: Number(stepPid), backend: Number(backend), app: app! };
}

describe('the lock session cannot time out', () => {
  test.skipIf(serverVersion < 140000)(
    "a database's idle_session_timeout (2s) does not end the lock session while fn works 4 s elsewhere",
    async () => {
      await withClient(url, (c) => c.query(`ALTER DATABASE ${database} SET idle_session_timeout = '2s'`));
      try {
        let seen = '';
        const value = await withMigrationLock(
          url,
          71n,
          async ({ client }) => {
            seen = (await client.query('SHOW idle_session_timeout')).rows[0].idle_session_timeout;
            await sleep(4_000);
            return 'done';
          },
          quiet,
        );
        expect(value).toBe('done');
        expect(seen).toBe('0');
      } finally {
        await withClient(url, (c) => c.query(`ALTER DATABASE ${database} RESET idle_session_timeout`));
      }
    },
  );

  test.skipIf(serverVersion < 140000)(
    "run: with idle_session_timeout = '3s', a CMD working 8 s on its own connection runs once, and the waiter after it",
    async () => {
      await withClient(url, (c) => c.query(`ALTER DATABASE ${database} SET idle_session_timeout = '3s'`));
      try {
        const { first, second } = await twoReplicas(8);
        const [a, b] = await Promise.all([first.exited, second.exited]);
        expect(a.stderr).not.toMatch(/Lost/);
        expect([a.code, b.code]).toEqual([0, 0]);
        expect(await outcome()).toEqual(ONCE);
      } finally {
        await withClient(url, (c) => c.query(`ALTER DATABASE ${database} RESET idle_session_timeout`));
      }
    },
    40_000,
  );

  test("a role's statement_timeout of 1ms cancels none of our statements: 4 waiting processes all finish", async () => {
    const role = `pgml_timeout_${process.pid}`;
    const admin = inject('adminUrl');
    await withClient(admin, (c) =>
      c.query(`CREATE ROLE ${role} LOGIN PASSWORD 'pw'; ALTER ROLE ${role} SET statement_timeout = '1ms'`),
    );
    try {
      const roleUrl = new URL(url);
      roleUrl.username = role;
      roleUrl.password = 'pw';
      const held = withMigrationLock(url, 72n, () => sleep(1_000), quiet);
      await waitFor(async () => (await lockRows(url, 72n)).length === 1);
      const waiters = [1, 2, 3, 4].map(() =>
        cli(['run', '--key', '72', '--', process.execPath, '-e', 'console.log("ran")'], {
          env: { DATABASE_URL: roleUrl.toString() },
        }),
      );
      await held;
      for (const { code, stdout, stderr } of await Promise.all(waiters)) {
        expect(stderr).not.toMatch(/error|statement timeout/i);
        expect([code, stdout]).toEqual([0, 'ran\n']);
      }
    } finally {
      await withClient(admin, (c) => c.query(`DROP ROLE IF EXISTS ${role}`));
    }
  }, 30_000);
});

describe('fencing: an earlier holding’s work never runs beside the next holder', () => {
  test('run gives CMD the holding’s tag: PGAPPNAME and application_name in DATABASE_URL', async () => {
    const { code, stdout } = await cli(
      [
        'run',
        '--',
        process.execPath,
        '-e',
        'console.log(process.env.PGAPPNAME, new URL(process.env.DATABASE_URL).searchParams.get("application_name"))',
      ],
      { env },
    );
    expect(code).toBe(0);
    const [pgappname, fromUrl] = stdout.trim().split(' ');
    expect(pgappname).toMatch(new RegExp(`^pg-migration-lock:${lockKey('pg-migration-lock')}:[0-9a-z]{6}\\.\\d+@`));
    expect(fromUrl).toBe(pgappname);
  });

  test('lock lost mid-step (its session terminated): the step’s statement is terminated too, and the next holder applies it once', async () => {
    const { first, second, backend } = await twoReplicas(20, 1);
    const holder = (await getLockStatus(url, lockKey('pg-migration-lock'))).holder!;
    await withClient(url, (c) => c.query('SELECT pg_terminate_backend($1)', [holder.pid]));
    const [a, b] = await Promise.all([first.exited, second.exited]);
    expect(a.code).toBe(1);
    expect(a.stderr).toMatch(/error: Lost the migration lock/);
    expect(a.stdout).toMatch(/step failed: terminating connection/);
    expect(b.code).toBe(0);
    expect(await outcome()).toEqual(ONCE);
    // The first step's backend was gone before the second step started.
    const [{ by_pid }] = (await withClient(url, (c) => c.query('SELECT by_pid FROM applied'))).rows;
    expect(b.stdout).toContain(`step ${by_pid} on backend`);
    expect(
      await withClient(
        url,
        async (c) => (await c.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [backend])).rowCount,
      ),
    ).toBe(0);
  }, 30_000);

  test('SIGKILL of the CLI alone: CMD dies with it, and its statement still running on the server is terminated by the next holder', async () => {
    const { first, second, stepPid, backend } = await twoReplicas(20, 1);
    first.child.kill('SIGKILL');
    const b = await second.exited;
    expect(b.code).toBe(0);
    // The next holder said what it terminated: the step's backend, with the first holding's tag.
    expect(b.stderr).toMatch(
      new RegExp(`earlier holder's work is still running on 1 backend: pid ${backend} .*; pg-migration-lock:`),
    );
    expect(await outcome()).toEqual(ONCE);
    // The orphaned step process is gone too.
    await waitFor(() => !isAlive(stepPid), 5_000, 'the orphaned step to die');
  }, 30_000);

  test('release --force during a step: the holder and its tagged statement are terminated; no double run', async () => {
    const { first, second, backend } = await twoReplicas(20, 1);
    const release = await cli(['release', '--force', '--yes'], { env });
    // On failure, what each replica said: which one held the lock when release --force came.
    const said = () => `first:\n${first.stdout()}${first.stderr()}\nsecond:\n${second.stdout()}${second.stderr()}`;
    expect(release.code).toBe(0);
    expect(release.stderr, said()).toMatch(new RegExp(`terminated pid \\d+ .*and its holding's work: pid ${backend}`));
    const [a, b] = await Promise.all([first.exited, second.exited]);
    expect([a.code, b.code]).toEqual([1, 0]);
    expect(await outcome()).toEqual(ONCE);
  }, 30_000);

  test('the library: the next holder terminates an earlier holding’s tagged backend before fn starts, and logs it', async () => {
    const key = 73n;
    const stale = new pg.Client({
      connectionString: url,
      application_name: `pg-migration-lock:${key}:abc123.4242@gone`,
    });
    const untouched = [
      new pg.Client({ connectionString: url, application_name: `pg-migration-lock:${key + 1n}:abc123.4242@gone` }),
      new pg.Client({ connectionString: url, application_name: 'pg-migration-lock:73:4242' }),
    ];
    for (const c of [stale, ...untouched]) {
      c.on('error', () => {});
      await c.connect();
    }
    const staleQuery = stale.query('SELECT pg_sleep(30)').catch((err: Error) => err);
    const stalePid = (stale as unknown as { processID: number }).processID;
    const lines: string[] = [];
    const logger = { info: (m: string) => lines.push(m), warn: (m: string) => lines.push(m), error: () => {} };
    const seen = await withMigrationLock(
      url,
      key,
      async ({ client }) =>
        (
          await client.query('SELECT pid, application_name FROM pg_stat_activity WHERE pid = ANY($1)', [
            [stalePid, ...untouched.map((c) => (c as unknown as { processID: number }).processID)],
          ])
        ).rows,
      { logger },
    );
    expect(((await staleQuery) as Error).message).toMatch(/terminating connection/);
    expect(seen.map((row) => row.pid)).not.toContain(stalePid);
    expect(seen).toHaveLength(2);
    expect(lines.join('\n')).toMatch(
      new RegExp(
        `still running on 1 backend: pid ${stalePid} of role "\\w+" \\([a-z ]+ for [\\d.]+m?s; pg-migration-lock:73:abc123\\.4242@gone\\)`,
      ),
    );
    for (const c of untouched) await c.end();
  });

  test('a holder refuses to start beside tagged work it may not terminate, naming pg_signal_backend, and leaves the lock free', async () => {
    const key = 74n;
    const role = `pgml_weak_${process.pid}`;
    const admin = inject('adminUrl');
    await withClient(admin, (c) => c.query(`CREATE ROLE ${role} LOGIN PASSWORD 'pw'`));
    const stale = new pg.Client({
      connectionString: url,
      application_name: `pg-migration-lock:${key}:abc123.superuser`,
    });
    stale.on('error', () => {});
    await stale.connect();
    const staleQuery = stale.query('SELECT pg_sleep(30)').catch((err: Error) => err);
    try {
      const weakUrl = new URL(url);
      weakUrl.username = role;
      weakUrl.password = 'pw';
      let ran = false;
      const error = await withMigrationLock(weakUrl.toString(), key, () => (ran = true), quiet).catch(
        (err: unknown) => err,
      );
      expect(ran).toBe(false);
      expect(error).toBeInstanceOf(MigrationLockError);
      expect((error as Error).message).toMatch(/may not terminate it .*GRANT pg_signal_backend TO "pgml_weak_\d+"/);
      expect(await lockRows(url, key)).toEqual([]);
      // A superuser may: it fences the stale work off and runs.
      expect(await withMigrationLock(url, key, () => 'ran', quiet)).toBe('ran');
      expect(((await staleQuery) as Error).message).toMatch(/terminating connection/);
    } finally {
      await stale.end().catch(() => {});
      await withClient(admin, (c) => c.query(`DROP ROLE IF EXISTS ${role}`));
    }
  });

  test('a holding that loses its session terminates its own tagged work at once', async () => {
    const extra = new pg.Client(url);
    extra.on('error', () => {});
    let workOutcome: unknown;
    const error = await withMigrationLock(
      url,
      75n,
      async ({ client, tag, signal }) => {
        await extra.connect();
        await extra.query(`SET application_name = '${tag}'`);
        const work = extra.query('SELECT pg_sleep(30)').then(
          () => 'slept 30 s',
          (err: Error) => err,
        );
        void work.then((outcome) => (workOutcome = outcome));
        const { pid } = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0];
        await withClient(url, (c) => c.query('SELECT pg_terminate_backend($1)', [pid]));
        // fn goes on with its work, which the lost holding terminates at once.
        return {
          aborted: await new Promise((resolve) =>
            signal.aborted ? resolve(true) : signal.addEventListener('abort', () => resolve(true)),
          ),
          work: await work,
        };
      },
      quiet,
    ).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(MigrationLockLostError);
    // Cut by the lost holding, not run to its end: a 30 s statement ended by its termination.
    await waitFor(() => workOutcome !== undefined, 10_000, 'the tagged work to end');
    expect((workOutcome as Error).message).toMatch(/terminating connection/);
    await extra.end().catch(() => {});
  });
});

describe('a terminal', () => {
  test.skipIf(!hasScript)('Ctrl-C reaches CMD once: CMD runs in a process group of its own', async () => {
    const cmd = startOnTerminal(['run', '--', process.execPath, CHILD, 'count-sigint'], { env });
    await cmd.waitForOutput(/ready/);
    cmd.child.stdin!.write('\x03');
    const { stdout } = await cmd.exited;
    expect(stdout).toContain('sigints 1');
    expect(stdout).not.toContain('sigints 2');
  });
});

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

afterAll(async () => {
  await withClient(url, (c) => c.query(`ALTER DATABASE ${database} RESET ALL`)).catch(() => {});
});
