import { drizzle } from 'drizzle-orm/node-postgres';
import { migrate as bareMigrate } from 'drizzle-orm/node-postgres/migrator';
import pg from 'pg';
import { describe, expect, test } from 'vitest';
import { DEFAULT_LOCK_KEY, withMigrationLock } from '../../src/index.js';
import { createTestDatabase, lockRows, sleep, waitFor, withClient } from '../helpers.js';
import { cli, fixture, start } from './cli.js';

// `pg-migration-lock pending <migrator>`: what `migrate <migrator>` would apply, without the lock and
// without creating anything; `--wait` until none is pending, woken by the lock's release.

const MIGRATORS = [
  {
    name: 'knex',
    args: ['--knexfile', fixture('knex/knexfile.cjs')],
    names: ['001_create_gadgets.cjs', '002_slow_add_size.cjs'],
  },
  {
    name: 'node-pg-migrate',
    args: ['-m', fixture('node-pg-migrate')],
    names: ['1700000000001_create-widgets', '1700000000002_slow-backfill', '1700000000003_index-name'],
  },
  {
    name: 'drizzle',
    args: ['--migrations-folder', fixture('drizzle')],
    names: ['0000_create_gizmos', '0001_slow_add_size'],
  },
];

/**
 * Environment for a CLI process whose timers of 2 s or more wait an hour instead (a preload wrapping
 * setTimeout): its fallback poll of the pending check (every ~5 s) then never runs during a test, so
 * whatever wakes it can only be a release's notification, or its own --timeout.
 */
const WITHOUT_FALLBACK_POLL = {
  NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=data:text/javascript,${encodeURIComponent(
    'const t=globalThis.setTimeout;globalThis.setTimeout=(f,ms,...a)=>t(f,ms>=2000?3600000:ms,...a);',
  )}`.trim(),
};

/** `promise`'s value, or a failure naming `what` if it has not settled within `ms` (a bound, not a measure). */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let settled: { value: T } | undefined;
  void promise.then((value) => (settled = { value }));
  await waitFor(() => settled !== undefined, ms, what);
  return settled!.value;
}

/** The sessions in the lock's waiters' registry (objsubid 2), with their pg_stat_activity state. */
const registered = (url: string) =>
  withClient(url, async (client) => {
    const { rows } = await client.query(
      `SELECT a.state FROM pg_locks l JOIN pg_stat_activity a USING (pid)
       WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
         AND l.classid = (($1::bigint >> 32) & 4294967295)::oid AND l.objid = ($1::bigint & 4294967295)::oid
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
      [DEFAULT_LOCK_KEY.toString()],
    );
    return rows;
  });

const tables = (url: string) =>
  withClient(url, async (client) => {
    const { rows } = await client.query(
      `SELECT table_schema || '.' || table_name AS name FROM information_schema.tables
       WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`,
    );
    return rows.map((row) => row.name);
  });

describe.each(MIGRATORS)('$name', ({ name, args, names }) => {
  test('exit 3 with the names (one per line, or --json), creating nothing; exit 0 once migrate ran', async () => {
    const url = await createTestDatabase();
    const env = { DATABASE_URL: url };
    const listed = await cli(['pending', name, ...args], { env });
    expect(listed.code, listed.stderr).toBe(3);
    expect(listed.stdout).toBe(`${names.join('\n')}\n`);
    expect(listed.stderr).toMatch(new RegExp(`${name}: ${names.length} migrations pending`));
    const json = await cli(['pending', name, ...args, '--json', '-q'], { env });
    expect([json.code, JSON.parse(json.stdout), json.stderr]).toEqual([3, names, '']);
    expect(await tables(url)).toEqual([]);

    const migrated = await cli(['migrate', name, ...args], { env });
    expect(migrated.code, migrated.stderr).toBe(0);
    const none = await cli(['pending', name, ...args], { env });
    expect([none.code, none.stdout]).toEqual([0, '']);
    expect(none.stderr).toContain(`✔ ${name}: no pending migrations`);
    const noneJson = await cli(['pending', name, ...args, '--json'], { env });
    expect([noneJson.code, JSON.parse(noneJson.stdout)]).toEqual([0, []]);
  });
});

test('--wait: holds no lock while waiting, and exits 0 when the migration job releases the lock, woken by its notification', async () => {
  const url = await createTestDatabase();
  const env = { DATABASE_URL: url };
  const args = ['drizzle', '--migrations-folder', fixture('drizzle')];
  // Its fallback poll switched off: only the release's notification can wake it.
  const waiting = start(['pending', ...args, '--wait'], { env: { ...env, ...WITHOUT_FALLBACK_POLL } });
  await waiting.waitForOutput(/Waiting for 2 migrations to be applied \(0000_create_gizmos, 0001_slow_add_size\)/);
  // Registered among the waiters (so releases notify it), idle between checks: LISTENing, not polling.
  await waitFor(async () => (await registered(url)).length === 1, 5000, 'pending --wait to register');
  await sleep(300);
  expect(await registered(url), waiting.stderr()).toEqual([{ state: 'idle' }]);
  expect(await lockRows(url, DEFAULT_LOCK_KEY)).toEqual([]);

  const migrate = await cli(['migrate', ...args], { env });
  const migratedAt = performance.now();
  expect(migrate.code, migrate.stderr).toBe(0);
  const done = await within(waiting.exited, 30_000, 'pending --wait to exit after the release');
  console.info(
    `[pending --wait] exited ${Math.round(performance.now() - migratedAt)} ms after the migrate process exited`,
  );
  expect([done.code, done.stdout]).toEqual([0, '']);
  expect(done.stderr).toMatch(/✔ drizzle: no pending migrations/);
});

test('--wait also notices a migration applied without this lock (fallback poll, ~5 s)', async () => {
  const url = await createTestDatabase();
  const folder = fixture('drizzle');
  const waiting = start(['pending', 'drizzle', '--migrations-folder', folder, '--wait'], {
    env: { DATABASE_URL: url },
  });
  await waiting.waitForOutput(/Waiting for 2 migrations/);
  const pool = new pg.Pool({ connectionString: url });
  try {
    await bareMigrate(drizzle({ client: pool }), { migrationsFolder: folder });
  } finally {
    await pool.end();
  }
  // No lock was taken, so no release notifies it: its fallback poll notices.
  const done = await within(waiting.exited, 30_000, 'pending --wait to notice by its fallback poll');
  expect(done.code, done.stderr).toBe(0);
  expect(done.stderr).toMatch(/✔ drizzle: no pending migrations/);
});

test('--wait --timeout: exit 75 with what is still pending; --timeout without --wait is a usage error', async () => {
  const url = await createTestDatabase();
  const env = { DATABASE_URL: url };
  const args = ['pending', 'knex', '--knexfile', fixture('knex/knexfile.cjs')];
  // Its fallback poll (~5 s) switched off: exiting at all shows --timeout cuts the wait short.
  const waiting = start([...args, '--wait', '--timeout', '1s'], { env: { ...env, ...WITHOUT_FALLBACK_POLL } });
  const timedOut = await within(waiting.exited, 30_000, 'pending --wait --timeout 1s to exit');
  expect(timedOut.code, timedOut.stderr).toBe(75);
  expect(timedOut.stderr).toMatch(
    /error: Timed out after [\d.]+s: 2 migrations still pending \(001_create_gadgets\.cjs, 002_slow_add_size\.cjs\)/,
  );
  // It waited the full second it was given.
  expect(Number(/Timed out after ([\d.]+)s/.exec(timedOut.stderr)?.[1])).toBeGreaterThanOrEqual(1);
  expect(timedOut.stdout).toBe('');

  const usage = await cli([...args, '--timeout', '5s'], { env });
  expect([usage.code, usage.stderr]).toEqual([2, expect.stringContaining('--timeout needs --wait')]);
  expect((await cli(['pending', 'flyway'], { env })).code).toBe(2);
  expect((await cli(['pending', 'knex', '--knexfile', fixture('knex/knexfile.cjs')], { env: {} })).code).toBe(2);
});

test('SIGTERM while waiting: stops at once, exit 143', async () => {
  const url = await createTestDatabase();
  const waiting = start(['pending', 'drizzle', '--migrations-folder', fixture('drizzle'), '--wait'], {
    env: { DATABASE_URL: url },
  });
  await waiting.waitForOutput(/Waiting for 2 migrations/);
  waiting.child.kill('SIGTERM');
  const { code } = await waiting.exited;
  expect(code).toBe(143);
  await waitFor(async () => (await registered(url)).length === 0, 5000, 'the listener to disconnect');
});

test('a lock waiter keeps its prompt wake-up when a release picks a `pending --wait` session instead', async () => {
  const url = await createTestDatabase();
  const waiting = start(['pending', 'drizzle', '--migrations-folder', fixture('drizzle'), '--wait'], {
    env: { DATABASE_URL: url },
  });
  await waiting.waitForOutput(/Waiting for 2 migrations/);
  await waitFor(async () => (await registered(url)).length === 1, 5000, 'pending --wait to register');
  // Each release wakes one registered session at random: the lock waiter or the pending --wait session,
  // which must pass the wake-up on. The waiter never polls (once an hour), so either way only a wake-up
  // lets it take the lock.
  const latencies: number[] = [];
  for (let round = 0; round < 4; round++) {
    let release = () => {};
    const held = new Promise<void>((resolve) => (release = resolve));
    let acquiredHolder = () => {};
    const holding = new Promise<void>((resolve) => (acquiredHolder = resolve));
    const holder = withMigrationLock(url, DEFAULT_LOCK_KEY, async () => {
      acquiredHolder();
      await held;
    });
    await holding;
    let releasedAt = 0;
    const waiter = withMigrationLock(url, DEFAULT_LOCK_KEY, () => latencies.push(performance.now() - releasedAt), {
      pollIntervalMs: 3_600_000,
      logger: null,
    });
    await waitFor(async () => (await registered(url)).length === 2, 5000, 'the lock waiter to register');
    releasedAt = performance.now();
    release();
    await within(Promise.all([holder, waiter]), 30_000, `round ${round + 1}: the waiter to be woken and take the lock`);
  }
  console.info(`[pending --wait] lock waiter's hand-off latencies: ${latencies.map(Math.round).join(', ')} ms`);
  expect(latencies).toHaveLength(4);
  waiting.child.kill('SIGTERM');
  await waiting.exited;
});
