import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { runner } from '../../adapters/node-pg-migrate.js';
import { DEFAULT_LOCK_KEY } from '../../src/index.js';
import { createTestDatabase, lockRows, sleep, waitFor, withClient } from '../helpers.js';
import { CHILD, CLI, cli, fixture, holdLock, start } from './cli.js';

/** node-pg-migrate's own key: its adapter's default, and the CLI's for `migrate node-pg-migrate`. */
const PG_MIGRATE_LOCK_ID = 7241865325823964n;
const url = await createTestDatabase();
const env = { DATABASE_URL: url };

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('migrate node-pg-migrate and the adapter share node-pg-migrate’s key', () => {
  test('while the adapter’s runner() migrates, the CLI waits, then finds nothing pending', async () => {
    const dir = fixture('node-pg-migrate-3s');
    const adapter = runner({ databaseUrl: url, dir, direction: 'up', migrationsTable: 'pgm_shared', log: () => {} });
    await waitFor(async () => (await lockRows(url, PG_MIGRATE_LOCK_ID)).some((row) => row.granted), 10_000, 'runner()');
    const waiting = start(['migrate', 'node-pg-migrate', '-m', dir, '-t', 'pgm_shared'], { env });
    await waiting.waitForOutput(/Waiting for migration lock 7241865325823964 \(node-pg-migrate's own key\)/);
    expect((await adapter).map((migration) => migration.name)).toEqual(['1700000000001_three-seconds']);
    const { code, stdout, stderr } = await waiting.exited;
    expect(code, stderr).toBe(0);
    expect(stdout).toBe('✔ node-pg-migrate: already up to date, no pending migrations\n');
  });

  test('--name still chooses another key', async () => {
    const holder = await holdLock(url, PG_MIGRATE_LOCK_ID);
    try {
      const { code, stderr } = await cli(
        // A table of its own, so its migration is pending (with nothing pending it would not lock at all).
        ['migrate', 'node-pg-migrate', '-m', fixture('node-pg-migrate-3s'), '-t', 'pgm_mine', '--name', 'mine'],
        { env },
      );
      // Our lock is free; node-pg-migrate's own (taken inside, in its 'fail' mode) is not: it says so.
      expect(code).toBe(1);
      expect(stderr).toMatch(/Acquired migration lock "mine"/);
    } finally {
      await holder.release();
    }
  });
});

describe('run: a CMD that cannot be run exits like a shell, without the lock', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgml-run-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const notExecutable = join(dir, 'script.sh');
  writeFileSync(notExecutable, '#!/bin/sh\necho never\n');
  chmodSync(notExecutable, 0o644);

  test.each([
    ['not found in PATH', ['pgml-no-such-command-x'], 127, /error: Command not found: pgml-no-such-command-x/],
    ['a missing path', [join(dir, 'missing')], 127, /error: Command not found: /],
    ['a file that is not executable', [notExecutable], 126, /error: Permission denied: .*script\.sh/],
    ['a directory', [dir], 126, /error: Permission denied: /],
  ])('%s → %i', async (_what, cmd, exitCode, message) => {
    const { code, stderr } = await cli(['run', '--', ...cmd], { env });
    expect(code).toBe(exitCode);
    expect(stderr).toMatch(message);
    // Refused before connecting: the lock was never taken.
    expect(stderr).not.toContain('Acquired');
    expect(await lockRows(url, 0n)).toEqual([]);
  });

  test('not found even where the lock is held by another: 127 at once, not a wait', async () => {
    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    try {
      const { code, stderr } = await cli(['run', '--', 'pgml-no-such-command-x'], { env });
      expect(code).toBe(127);
      // Refused before connecting: it never waited behind the holder.
      expect(stderr).not.toMatch(/Waiting for migration lock/);
      expect((await lockRows(url, DEFAULT_LOCK_KEY)).map((row) => row.pid)).toEqual([holder.pid]);
    } finally {
      await holder.release();
    }
  });
});

describe('the process that started the CLI goes away: a wait stops, what runs under the lock finishes', () => {
  // A failed test leaves nothing running.
  const started: number[] = [];
  afterAll(() => {
    for (const pid of started) if (alive(pid)) process.kill(pid, 'SIGKILL');
  });

  /** Starts the CLI under an intermediate parent (fixtures/cli/parent.mjs); resolves the CLI's pid. */
  async function underParent(args: string[], databaseUrl = url) {
    const child = spawn(process.execPath, [fixture('parent.mjs'), CLI, ...args], {
      env: { ...process.env, NO_COLOR: '1', DATABASE_URL: databaseUrl },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    const cliPid = Number((await waitFor(() => /cli pid (\d+)/.exec(output), 10_000, 'the CLI to start'))?.[1]);
    started.push(child.pid!, cliPid);
    return { parent: child, cliPid, output: () => output };
  }

  test('parent SIGKILLed while CMD runs: CMD finishes, the CLI says its parent is gone and exits with its code', async () => {
    const key = 4242n;
    const done = join(tmpdir(), `pgml-until-${process.pid}`);
    rmSync(done, { force: true });
    try {
      const { parent, cliPid, output } = await underParent([
        'run',
        '--key',
        String(key),
        '--',
        process.execPath,
        CHILD,
        'until',
        done,
      ]);
      await waitFor(() => output().includes('ready'), 10_000, 'CMD to start');
      expect((await lockRows(url, key)).filter((row) => row.granted)).toHaveLength(1);
      parent.kill('SIGKILL');
      await waitFor(
        () => output().includes('The process that started pg-migration-lock is gone'),
        10_000,
        'the CLI to notice',
      );
      // CMD runs on, under the lock, until it is done.
      expect(alive(cliPid)).toBe(true);
      expect((await lockRows(url, key)).filter((row) => row.granted)).toHaveLength(1);
      writeFileSync(done, '');
      await waitFor(() => !alive(cliPid), 15_000, 'the CLI to exit');
      expect(output()).toContain('finished');
      expect(output()).not.toContain('got SIGTERM');
      expect(output()).toMatch(/The process that started pg-migration-lock is gone .*: exiting with code 7/);
      expect(await lockRows(url, key)).toEqual([]);
    } finally {
      rmSync(done, { force: true });
    }
  });

  test('parent SIGKILLed while waiting for the lock: the CLI stops waiting and CMD never starts', async () => {
    const key = 4244n;
    const holder = await holdLock(url, key);
    try {
      const { parent, cliPid, output } = await underParent([
        'run',
        '--key',
        String(key),
        '--',
        process.execPath,
        CHILD,
        'hold',
      ]);
      await waitFor(() => output().includes('Waiting for migration lock'), 15_000, 'the CLI to wait');
      parent.kill('SIGKILL');
      await waitFor(() => !alive(cliPid), 5_000, 'the CLI to exit');
      await sleep(200);
      expect(output()).not.toContain('ready');
      const rows = await lockRows(url, key);
      expect(rows.map((row) => row.pid)).toEqual([holder.pid]);
    } finally {
      await holder.release();
    }
  });

  test('parent SIGKILLed during `pending --wait`: the CLI stops waiting', async () => {
    // A database of its own, where the migration is pending.
    const db = await createTestDatabase();
    const { parent, cliPid, output } = await underParent(
      ['pending', 'node-pg-migrate', '-m', fixture('node-pg-migrate-3s'), '--wait'],
      db,
    );
    await waitFor(() => output().includes('Waiting for 1 migration'), 15_000, 'the CLI to wait');
    parent.kill('SIGKILL');
    await waitFor(() => !alive(cliPid), 5_000, 'the CLI to exit');
  });

  test('parent SIGKILLed during `migrate`: the migration finishes, is recorded once, and the CLI exits 0', async () => {
    // A database of its own: the first test of this file applied the same migration in the shared one.
    const db = await createTestDatabase();
    const { parent, cliPid, output } = await underParent(
      ['migrate', 'node-pg-migrate', '-m', fixture('node-pg-migrate-3s')],
      db,
    );
    await waitFor(async () => (await lockRows(db, PG_MIGRATE_LOCK_ID)).some((row) => row.granted), 10_000, 'the lock');
    parent.kill('SIGKILL');
    await waitFor(() => !alive(cliPid), 20_000, 'the CLI to exit');
    expect(output()).toMatch(
      /The process that started pg-migration-lock is gone .*: letting what runs under the lock finish/,
    );
    expect(output()).toMatch(/✔ node-pg-migrate: applied 1 migration/);
    expect(output()).toMatch(/The process that started pg-migration-lock is gone .*: exiting with code 0/);
    expect(output()).not.toContain('Interrupted');
    expect(await lockRows(db, PG_MIGRATE_LOCK_ID)).toEqual([]);
    const { rows } = await withClient(db, (client) =>
      client.query("SELECT to_regclass('three_seconds_done') AS t, (SELECT count(*)::int FROM pgmigrations) AS n"),
    );
    expect(rows[0]).toEqual({ t: 'three_seconds_done', n: 1 });
  });
});

describe("kysely: a config whose dialect 'pg' or 'postgres' has no dialectConfig", () => {
  const cwd = fixture('kysely-no-dialect-config');
  const cases = [
    ['pg', [], 'pool'],
    ['postgres', ['-e', 'postgres'], 'postgres'],
  ] as const;

  test.each(cases)("dialect '%s': the database URL is used, like --database-url", async (_dialect, flags) => {
    const db = await createTestDatabase();
    const before = await cli(['pending', 'kysely', ...flags], { cwd, env: { DATABASE_URL: db } });
    expect(before.code, before.stderr).toBe(3);
    expect(before.stdout).toBe('001_create_gizmos\n002_slow_add_size\n');
    const migrated = await cli(['migrate', 'kysely', ...flags], { cwd, env: { DATABASE_URL: db } });
    expect(migrated.code, migrated.stderr).toBe(0);
    expect(migrated.stdout).toBe('✔ kysely: applied 2 migrations\n  001_create_gizmos\n  002_slow_add_size\n');
    const { rows } = await withClient(db, (client) => client.query('SELECT name FROM kysely_migration ORDER BY name'));
    expect(rows.map((row) => row.name)).toEqual(['001_create_gizmos', '002_slow_add_size']);
  });

  test.each(cases)("dialect '%s' and no database URL: exit 2, saying what to add", async (dialect, flags, setting) => {
    for (const command of ['migrate', 'pending']) {
      const { code, stderr } = await cli([command, 'kysely', ...flags], { cwd });
      expect(code, stderr).toBe(2);
      expect(stderr).toContain(
        `error: kysely.config.mjs has dialect '${dialect}' but no dialectConfig.${setting}, and no database URL is given\n`,
      );
      expect(stderr).toContain(`Set DATABASE_URL (or pass --database-url), or add dialectConfig: { ${setting}: `);
    }
  });
});

describe('typeorm: a CommonJS data source file', () => {
  test('`exports.default = new DataSource(…)` (what tsc emits for `export default`) is found, as TypeORM’s CLI finds it', async () => {
    const db = await createTestDatabase();
    const dataSource = fixture('typeorm-cjs/data-source.js');
    const before = await cli(['pending', 'typeorm', '-d', dataSource], { env: { DATABASE_URL: db } });
    expect(before.code, before.stderr).toBe(3);
    expect(before.stdout).toBe('CreateWidgets1700000000001\n');
    const migrated = await cli(['migrate', 'typeorm', '-d', dataSource], { env: { DATABASE_URL: db } });
    expect(migrated.code, migrated.stderr).toBe(0);
    expect(migrated.stdout).toBe('✔ typeorm: applied 1 migration\n  CreateWidgets1700000000001\n');
    const { rows } = await withClient(db, (client) => client.query("SELECT to_regclass('cjs_widgets') AS t"));
    expect(rows[0].t).toBe('cjs_widgets');
  });
});

describe('knex: the Database line says when the knexfile reads DATABASE_URL', () => {
  test.each([
    ['connection: { connectionString: process.env.DATABASE_URL }', 'knex-connection-string/knexfile.cjs'],
    ['connection: process.env.DATABASE_URL', 'knex/knexfile.cjs'],
  ])('%s', async (_form, knexfile) => {
    const db = await createTestDatabase();
    const { code, stderr } = await cli(['pending', 'knex', '--knexfile', fixture(knexfile)], {
      env: { DATABASE_URL: db },
    });
    expect(code, stderr).toBe(3);
    expect(stderr).toMatch(
      /^\[pg-migration-lock\] Database: postgres:\/\/\S+ \(from knexfile\.cjs, environment "development", which reads DATABASE_URL\)$/m,
    );
    expect(stderr).not.toContain('not used');
  });
});

describe('-v', () => {
  test.each(['-v', '-V', '--version'])('%s prints the version and exits 0', async (flag) => {
    const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8'));
    const { code, stdout, stderr } = await cli([flag]);
    expect(code, stderr).toBe(0);
    expect(stdout).toBe(`${version}\n`);
    expect(stderr).toBe('');
  });
});
