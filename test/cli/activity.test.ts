// What the holder runs, where a user looks: the waiting line (plain and live), `status` (text and --json), and
// `pending --wait`: its statement, since when, and the progress of a CREATE INDEX CONCURRENTLY.
import { expect, test } from 'vitest';
import { DEFAULT_LOCK_KEY, getLockStatus, withMigrationLock } from '../../src/index.js';
import { createTestDatabase, waitFor, withClient } from '../helpers.js';
import { cli, fixture, hasScript, start, startOnTerminal } from './cli.js';

const url = await createTestDatabase();
const env = { DATABASE_URL: url };

/** Holds the default key in this process while `sql` runs on the lock's session; `stop()` cancels it. */
async function holdRunning(sql: string, until: (status: Awaited<ReturnType<typeof getLockStatus>>) => boolean) {
  let pid = 0;
  const held = withMigrationLock(
    url,
    DEFAULT_LOCK_KEY,
    async ({ client }) => {
      pid = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      await client.query(sql).catch((error: { code?: string }) => {
        if (error.code !== '57014') throw error; // canceled by stop()
      });
    },
    { logger: null },
  );
  await waitFor(async () => pid > 0 && until(await getLockStatus(url, DEFAULT_LOCK_KEY)), 15_000, sql);
  return {
    pid,
    stop: async () => {
      await withClient(url, (c) => c.query('SELECT pg_cancel_backend($1)', [pid]));
      await held;
    },
  };
}

const sleeping = (status: Awaited<ReturnType<typeof getLockStatus>>) => status.holder?.query === 'SELECT pg_sleep(60)';

test('the waiting line (plain) and status name the running statement and since when', async () => {
  const holder = await holdRunning('SELECT pg_sleep(60)', sleeping);
  try {
    const waited = await cli(['run', '--timeout', '1s', '--', 'true'], { env });
    expect(waited.code, waited.stderr).toBe(75);
    expect(waited.stderr).toMatch(
      new RegExp(
        `^\\[pg-migration-lock\\] Waiting for migration lock .*, held by backend pid ${holder.pid} .* for \\d+(\\.\\d)?m?s: SELECT pg_sleep\\(60\\) \\(waited`,
        'm',
      ),
    );
    const status = await cli(['status'], { env });
    expect(status.stdout).toMatch(/^ {2}query {8}SELECT pg_sleep\(60\)$/m);
    expect(status.stdout).toMatch(/^ {2}since {8}\d{4}-\d\d-\d\dT[\d:.]+Z \(.+ ago\)$/m);
    const json = JSON.parse((await cli(['status', '--json'], { env })).stdout);
    expect(new Date(json.holder.queryStart).toISOString()).toBe(json.holder.queryStart);
    expect(json.holder.progress).toBeUndefined();
  } finally {
    await holder.stop();
  }
});

test.skipIf(!hasScript)(
  'the live line: the holder, then its statement cut so that the waiting clock shows',
  async () => {
    const holder = await holdRunning('SELECT pg_sleep(60)', sleeping);
    try {
      for (const columns of [200, 100]) {
        const waiter = startOnTerminal(['run', '--timeout', '1500ms', '--', 'true'], { env, columns });
        const { code, stdout } = await waiter.exited;
        expect(code).toBe(75);
        const live = stdout
          .split('\r\x1b[2K')
          .map((part) => part.split(/\r?\n/)[0]!)
          .filter((line) => line.startsWith('⏳'))
          .at(-1);
        expect(live).toBeDefined();
        expect(live!.length).toBeLessThanOrEqual(columns);
        expect(live).toMatch(
          /^⏳ Held by .* for \d+(\.\d)?m?s(: SELECT pg_sl.*)?: waiting \ds of 1\.5s for the migration lock$/,
        );
        if (columns === 200) expect(live).toContain(': SELECT pg_sleep(60): waiting');
      }
    } finally {
      await holder.stop();
    }
  },
);

test('a CREATE INDEX CONCURRENTLY: its phase and progress in status, status --json and the waiting line', async () => {
  await withClient(url, async (c) => {
    // Slowed per row, so that the build is seen under way: 400 rows of 25 ms.
    await c.query(`CREATE FUNCTION slow(i int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS
                   $$ BEGIN PERFORM pg_sleep(0.025); RETURN i; END $$`);
    await c.query('CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 400) g');
  });
  const sql = 'CREATE INDEX CONCURRENTLY orders_slow ON orders (slow(id))';
  const holder = await holdRunning(sql, (status) => /^building index/.test(status.holder?.progress?.phase ?? ''));
  try {
    const status = await cli(['status'], { env });
    expect(status.stdout).toContain(`  query        ${sql}\n`);
    expect(status.stdout).toMatch(
      /^ {2}progress {5}CREATE INDEX CONCURRENTLY \(building index[^)]*, \d+ %\) \[\d+ of \d+\]$/m,
    );
    const json = JSON.parse((await cli(['status', '--json'], { env })).stdout);
    expect(json.holder.progress).toEqual({
      command: 'CREATE INDEX CONCURRENTLY',
      phase: expect.stringMatching(/^building index/),
      done: expect.any(Number),
      total: expect.any(Number),
    });
    const waited = await cli(['run', '--timeout', '1s', '--', 'true'], { env });
    expect(waited.stderr).toMatch(
      /held by .* for \S+: CREATE INDEX CONCURRENTLY orders_slow ON orders \(slow\(id\)\) \(building index[^)]*, \d+ %\) \(waited/,
    );
  } finally {
    await holder.stop();
  }
});

test('pending --wait says what the holder runs', async () => {
  const holder = await holdRunning('SELECT pg_sleep(60)', sleeping);
  const waiting = start(['pending', 'drizzle', '--migrations-folder', fixture('drizzle'), '--wait'], { env });
  try {
    await waiting.waitForOutput(
      new RegExp(`Migration lock .* held by .*\\(backend pid ${holder.pid}\\) for \\S+: SELECT pg_sleep\\(60\\)`),
    );
  } finally {
    waiting.child.kill('SIGTERM');
    await waiting.exited;
    await holder.stop();
  }
});

test("run: the holder idle, its CMD's statement shows as its work's, in the waiting line and pending --wait", async () => {
  const script =
    "const pg=require('pg');const c=new pg.Client(process.env.DATABASE_URL);" +
    "c.connect().then(()=>{console.log('ready');return c.query('SELECT pg_sleep(60)')}).catch(()=>{})";
  const holder = start(['run', '--', process.execPath, '-e', script], { env });
  try {
    await holder.waitForOutput(/ready/);
    await waitFor(
      async () => (await getLockStatus(url, DEFAULT_LOCK_KEY)).work.some((w) => w.query === 'SELECT pg_sleep(60)'),
      10_000,
      "CMD's statement",
    );
    const waited = await cli(['run', '--timeout', '1s', '--', 'true'], { env });
    expect(waited.stderr).toMatch(/, its work \(backend pid \d+\), running for \S+: SELECT pg_sleep\(60\) \(waited/);
    const waiting = start(['pending', 'drizzle', '--migrations-folder', fixture('drizzle'), '--wait'], { env });
    try {
      await waiting.waitForOutput(/held by .*, its work \(backend pid \d+\) for \S+: SELECT pg_sleep\(60\)/);
    } finally {
      waiting.child.kill('SIGTERM');
      await waiting.exited;
    }
  } finally {
    holder.child.kill('SIGTERM');
    await holder.exited;
  }
});
