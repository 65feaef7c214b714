import { hostname } from 'node:os';
import pg from 'pg';
import { describe, expect, test } from 'vitest';
import { DEFAULT_LOCK_KEY, lockKey } from '../../src/index.js';
import { createTestDatabase, lockRows, waitFor, withClient } from '../helpers.js';
import { CHILD, cli, hasScript, holdLock, start, startOnTerminal } from './cli.js';

const url = await createTestDatabase();
const env = { DATABASE_URL: url };

const isAlive = (pid: number) =>
  withClient(
    url,
    async (client) => (await client.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid])).rowCount === 1,
  );

describe('status', () => {
  test("a pg-migration-lock holder: its OS process and host, from its holding's tag", async () => {
    const key = 4711n;
    const holding = start(['run', '--key', String(key), '--', process.execPath, CHILD, 'hold'], { env });
    try {
      await holding.waitForOutput(/ready/, 15_000);
      const { code, stdout } = await cli(['status', '--key', String(key)], { env });
      expect(code).toBe(0);
      const host = hostname()
        .slice(0, 20)
        .replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      expect(stdout).toMatch(new RegExp(`^ {2}process {6}pid ${holding.child.pid} on ${host}`, 'm'));
    } finally {
      holding.child.kill('SIGTERM');
      await holding.exited;
    }
  });

  test('UNLOCKED, exit 0', async () => {
    const { code, stdout } = await cli(['status'], { env });
    expect(code).toBe(0);
    expect(stdout).toMatch(/^UNLOCKED {2}migration lock -?\d+ \(default key\)\n {2}waiters +none\n$/);
  });

  test('--json when unlocked: getLockStatus, the key as a string', async () => {
    const { code, stdout } = await cli(['status', '--json'], { env });
    expect(code).toBe(0);
    // Without --key or --name, `others` lists the other migration locks held: none here.
    expect(JSON.parse(stdout)).toEqual({
      key: DEFAULT_LOCK_KEY.toString(),
      locked: false,
      holder: null,
      waiters: [],
      work: [],
      standby: false,
      others: [],
    });
  });

  test("no key asked for: other migration locks held are shown too (node-pg-migrate's own key), with the flag to see them", async () => {
    const holder = await holdLock(url, 7241865325823964n);
    try {
      const { stdout } = await cli(['status'], { env });
      expect(stdout).toMatch(/^UNLOCKED {2}migration lock -?\d+ \(default key\)$/m);
      // What is held comes first: the stuck deploy's lock is the first thing read.
      expect(stdout).toMatch(
        /^LOCKED {2}migration lock 7241865325823964 \(node-pg-migrate's own key\) {2}\(pg-migration-lock status --key 7241865325823964\)\n {2}holder {7}pid \d+/,
      );
      expect(stdout.indexOf('UNLOCKED')).toBeGreaterThan(stdout.indexOf('LOCKED'));
      const json = JSON.parse((await cli(['status', '--json'], { env })).stdout);
      expect(json.others).toHaveLength(1);
      expect(json.others[0]).toMatchObject({ key: '7241865325823964', locked: true, holder: { pid: holder.pid } });
      // release --force on the default key releases nothing, names the one that is held and the exact command,
      // and fails: a stuck deploy is not "nothing to release".
      const release = await cli(['release', '--force', '--yes'], { env });
      expect(release.code).toBe(1);
      expect(release.stderr).not.toContain('✔');
      expect(release.stderr).toMatch(
        /error: Migration lock -?\d+ \(default key\) is not held, so nothing was released; but migration lock 7241865325823964 \(node-pg-migrate's own key\) is held by backend pid \d+/,
      );
      expect(release.stderr).toContain('To release it: pg-migration-lock release --force --key 7241865325823964');
      expect(await isAlive(holder.pid)).toBe(true);
    } finally {
      await holder.release();
    }
  });

  test("a password in the holder's query is redacted, and --json stays valid JSON", async () => {
    const key = lockKey('status-redaction');
    await withClient(url, async (holder) => {
      await holder.query(`DROP ROLE IF EXISTS pgml_app; CREATE ROLE pgml_app; SELECT pg_advisory_lock(${key})`);
      // The holder's last query is what status shows.
      for (const sql of [`ALTER ROLE pgml_app PASSWORD 'hunter2'`, `SELECT 1 /* password = "hunter2" */`]) {
        await holder.query(sql);
        for (const args of [['status'], ['status', '--json']]) {
          const { code, stdout } = await cli([...args, '--name', 'status-redaction'], { env });
          expect(code).toBe(0);
          expect(stdout).toContain('***');
          expect(stdout).not.toContain('hunter2');
          if (args.includes('--json')) expect(JSON.parse(stdout).holder.pid).toBeTypeOf('number');
        }
      }
      await holder.query('DROP ROLE pgml_app');
    });
  });

  test('LOCKED: the holder (pid, application_name, client address, since when, query) and the waiters', async () => {
    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    const waiter = start(['run', '--', 'true'], { env });
    try {
      await waiter.waitForOutput(/Waiting for migration lock/);
      const { code, stdout } = await cli(['status'], { env });
      expect(code).toBe(0);
      const lines = stdout.split('\n');
      expect(lines[0]).toBe(`LOCKED  migration lock ${DEFAULT_LOCK_KEY} (default key)`);
      expect(stdout).toContain(`  holder       pid ${holder.pid}\n  application  cli-test-holder\n`);
      expect(stdout).toMatch(/^ {2}client {7}(127\.0\.0\.1|::1|local socket)/m);
      expect(stdout).toMatch(/^ {2}connected {4}\d{4}-\d\d-\d\dT[\d:.]+Z \(.+ ago\)$/m);
      expect(stdout).toMatch(/^ {2}state {8}idle$/m);
      expect(stdout).toMatch(/^ {2}last query {3}SELECT pg_backend_pid\(\) AS pid$/m);
      expect(stdout).toMatch(
        /^ {2}waiters {6}1\n {4}backend pid \d+ \(application_name pg-migration-lock:.+:\d+\) from .+, connected .+ ago, waiting \d+/m,
      );

      const json = JSON.parse((await cli(['status', '--json'], { env })).stdout);
      expect(json).toMatchObject({
        key: DEFAULT_LOCK_KEY.toString(),
        locked: true,
        holder: {
          pid: holder.pid,
          applicationName: 'cli-test-holder',
          state: 'idle',
          query: 'SELECT pg_backend_pid() AS pid',
        },
      });
      expect(Object.keys(json.holder).sort()).toEqual([
        'applicationName',
        'backendStart',
        'clientAddr',
        'pid',
        'query',
        'queryStart',
        'state',
      ]);
      expect(new Date(json.holder.backendStart).toISOString()).toBe(json.holder.backendStart);
      expect(new Date(json.holder.queryStart).toISOString()).toBe(json.holder.queryStart);
      expect(json.waiters).toHaveLength(1);
      expect(json.waiters[0].applicationName).toMatch(/^pg-migration-lock:/);
      expect(json.waiters[0].waitingMs).toBeTypeOf('number');
    } finally {
      await holder.release();
      await waiter.exited;
    }
  });

  test('a holder that is this CLI: its last query is the lock itself, said so', async () => {
    // A session of another database wearing a tag of the same key (as the other test files' holders do) makes the
    // take look for stale work, and end with one more statement of its own: that must read as taking the lock too.
    const other = new URL(url);
    other.pathname = '/postgres';
    const decoy = new pg.Client({
      connectionString: other.href,
      application_name: `pg-migration-lock:${DEFAULT_LOCK_KEY}:decoy0.1@elsewhere`,
    });
    decoy.on('error', () => {}); // the server may end it after the test; the suite's process lives on
    await decoy.connect();
    const holder = start(['run', '--', process.execPath, '-e', 'setTimeout(() => {}, 30000); console.log("ready")'], {
      env,
    });
    try {
      await holder.waitForOutput(/ready/);
      const { stdout } = await cli(['status'], { env });
      // Its holding's tag: the key, a token, then the CLI's pid and host.
      expect(stdout).toMatch(/^ {2}application {2}pg-migration-lock:-?\d+:[0-9a-z]{6}\.\d+@.+$/m);
      expect(stdout).toMatch(/^ {2}last query {3}taking this lock \(pg_try_advisory_lock\)$/m);
    } finally {
      holder.child.kill('SIGTERM');
      await holder.exited;
      await decoy.end();
    }
  });

  test('--name and --key choose the lock', async () => {
    const holder = await holdLock(url, lockKey('billing'));
    try {
      const byName = await cli(['status', '--name', 'billing', '--json'], { env });
      expect(JSON.parse(byName.stdout)).toMatchObject({ key: lockKey('billing').toString(), locked: true });
      const byKey = await cli(['status', '--key', lockKey('billing').toString()], { env });
      expect(byKey.stdout).toMatch(/^LOCKED {2}migration lock -?\d+\n/);
      const other = await cli(['--name', 'search', 'status'], { env });
      expect(other.stdout).toMatch(/^UNLOCKED {2}migration lock "search" \(key -?\d+\)/);
    } finally {
      await holder.release();
    }
  });

  test('hints name the exact lock: the same --name or --key as the command that hit it', async () => {
    const holder = await holdLock(url, lockKey('billing'));
    try {
      const busy = await cli(['run', '--name', 'billing', '--no-wait', '--', 'true'], { env });
      expect(busy.code).toBe(75);
      expect(busy.stderr).toContain('See who holds it: pg-migration-lock status --name billing');
      const timedOut = await cli(['run', '--name', 'billing', '--timeout', '200ms', '--', 'true'], { env });
      expect(timedOut.stderr).toContain(
        'pg-migration-lock status --name billing; a stale holder: pg-migration-lock release --force --name billing',
      );
    } finally {
      await holder.release();
    }
  });

  test('colors: off when not a terminal, on with FORCE_COLOR, never with NO_COLOR', async () => {
    expect((await cli(['status'], { env: { ...env, NO_COLOR: undefined } })).stdout).not.toContain('\x1b[');
    const forced = await cli(['status'], { env: { ...env, NO_COLOR: undefined, FORCE_COLOR: '1' } });
    expect(forced.stdout).toContain('\x1b[1m\x1b[32mUNLOCKED');
    expect((await cli(['status'], { env: { ...env, NO_COLOR: '1', FORCE_COLOR: '1' } })).stdout).not.toContain('\x1b[');
  });

  test('--quiet still prints the status (it is what was asked for)', async () => {
    const { code, stdout } = await cli(['status', '--quiet'], { env });
    expect(code).toBe(0);
    expect(stdout).toMatch(/^UNLOCKED/);
  });
});

describe('release', () => {
  test('nothing held anywhere: nothing to release, exit 0, and no ✔', async () => {
    const { code, stderr } = await cli(['release', '--force', '--yes'], { env });
    expect(code).toBe(0);
    expect(stderr).toContain('Nothing to release: migration lock');
    expect(stderr).not.toContain('✔');
  });

  test('without --force: refuses (exit 2), the holder keeps the lock', async () => {
    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    try {
      const { code, stderr } = await cli(['release', '--yes'], { env });
      expect(code).toBe(2);
      expect(stderr).toContain('pass --force');
      expect(await isAlive(holder.pid)).toBe(true);
    } finally {
      await holder.release();
    }
  });

  test('no terminal and no --yes: shows the holder and the warning, refuses (exit 2)', async () => {
    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    try {
      const { code, stderr } = await cli(['release', '--force'], { env, input: 'y\n' });
      expect(code).toBe(2);
      expect(stderr).toContain(`holder       pid ${holder.pid}`);
      expect(stderr).toMatch(/warning: Releasing terminates that PostgreSQL session/);
      expect(stderr).toContain('error: Not releasing: there is no terminal to confirm on. Add --yes to confirm.');
      expect(await isAlive(holder.pid)).toBe(true);
    } finally {
      await holder.release();
    }
  });

  test('--force --yes: terminates the holder, exit 0', async () => {
    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    const { code, stderr } = await cli(['release', '--force', '--yes'], { env });
    expect(code).toBe(0);
    expect(stderr).toContain(`Released migration lock ${DEFAULT_LOCK_KEY} (default key): terminated pid ${holder.pid}`);
    expect(await lockRows(url, DEFAULT_LOCK_KEY)).toEqual([]);
    expect(await isAlive(holder.pid)).toBe(false);
    await holder.release();
  });

  test('only the chosen key: another lock is left alone', async () => {
    const other = await holdLock(url, lockKey('other'));
    try {
      const { code, stderr } = await cli(['release', '--force', '--yes', '--name', 'billing'], { env });
      expect(code).toBe(0);
      expect(stderr).toContain('Nothing to release');
      expect(await isAlive(other.pid)).toBe(true);
    } finally {
      await other.release();
    }
  });

  describe.skipIf(!hasScript)('on a terminal it asks y/N', () => {
    const answer = async (reply: string) => {
      const holder = await holdLock(url, DEFAULT_LOCK_KEY);
      try {
        const release = startOnTerminal(['release', '--force'], { env });
        await release.waitForOutput(/\[y\/N\]/);
        release.child.stdin?.write(reply);
        const result = await release.exited;
        return { ...result, alive: await isAlive(holder.pid), pid: holder.pid };
      } finally {
        await holder.release();
      }
    };

    test('y: terminates the holder, exit 0', async () => {
      const { code, stdout, alive, pid } = await answer('y\r');
      expect(stdout).toContain(`Terminate pid ${pid} and release the lock? [y/N]`);
      expect(code).toBe(0);
      expect(stdout).toContain(`terminated pid ${pid}`);
      expect(alive).toBe(false);
    });

    test('Enter (the default, N): nothing terminated, exit 1', async () => {
      const { code, stdout, alive } = await answer('\r');
      expect(code).toBe(1);
      expect(stdout).toContain('error: Not released: nothing was terminated');
      expect(alive).toBe(true);
    });

    test('Ctrl-C: nothing terminated, exit 1', async () => {
      const { code, alive } = await answer('\x03');
      expect(code).toBe(1);
      expect(alive).toBe(true);
    });
  });
});

test('a holder that goes away while the CLI waits is not an error: the wait ends', async () => {
  const holder = await holdLock(url, DEFAULT_LOCK_KEY);
  const waiter = start(['run', '--', 'true'], { env });
  await waiter.waitForOutput(/Waiting for migration lock/);
  expect((await cli(['release', '--force', '--yes'], { env })).code).toBe(0);
  expect((await waiter.exited).code).toBe(0);
  await holder.release();
  await waitFor(async () => (await lockRows(url, DEFAULT_LOCK_KEY)).length === 0);
});
