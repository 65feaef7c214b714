// Bun (the `bun` devDependency: its binary comes from npm): the library with pg and with Bun's own SQL, in
// Bun processes, and the CLI run by Bun. See test/runtimes.ts for the tests every runtime and driver gets.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { expect, test } from 'vitest';
import { DEFAULT_LOCK_KEY } from '../src/index.js';
import { expectMigratedOnLockSession } from './adapters/race-report.js';
import { appliedMigrations } from './fixtures/adapters/race.mjs';
import {
  createTestDatabase,
  fixture,
  lockRows,
  skipUnlessRequired,
  spawnProcess,
  waitFor,
  withClient,
} from './helpers.js';
import { runtimeTests, WORKER } from './runtimes.js';

const BUN = fileURLToPath(new URL('../node_modules/.bin/bun', import.meta.url));
const CLI = fileURLToPath(new URL('../dist/cli/index.js', import.meta.url));
const version = existsSync(BUN) ? spawnSync(BUN, ['--version'], { encoding: 'utf8' }).stdout?.trim() : undefined;
const skip = skipUnlessRequired(
  version ? undefined : 'bun.test.ts needs bun (node_modules/.bin/bun, from the bun devDependency: run npm ci)',
);
// No colours (CI sets CI=true, which turns them on): the assertions read plain text.
const bun = (args: string[], env: Record<string, string> = {}) => spawnProcess(BUN, args, { NO_COLOR: '1', ...env });

test.skipIf(skip)(`bun ${version} runs`, () => expect(version).toMatch(/^\d+\.\d+\.\d+/));

runtimeTests(
  {
    spawn: (args, env) => bun([WORKER, ...args], env),
    race: ['bun-sql', 'bun-sql', 'pg', 'pg', 'bun-reserved'],
    restartForms: ['bun-sql', 'pg'],
  },
  skip,
);

test.skipIf(skip)(
  'a Bun SQL transaction (inside sql.begin) and a MySQL one are refused with a TypeError, before any query',
  async () => {
    const url = await createTestDatabase();
    const script = `
    import { SQL } from 'bun';
    import { withMigrationLock } from 'pg-migration-lock';
    const sql = new SQL(${JSON.stringify(url)});
    const tried = (client) => withMigrationLock(client, 1, () => 'ran').then((v) => v, (e) => e.name + ': ' + e.message);
    console.log(await sql.begin((tx) => tried(tx)));
    console.log(await tried(new SQL({ adapter: 'mysql', hostname: '127.0.0.1' })));
    await sql.close();`;
    const { stdout, stderr } = spawnSync(BUN, ['--eval', script], {
      encoding: 'utf8',
      cwd: fileURLToPath(new URL('.', import.meta.url)),
    });
    expect(stderr).toBe('');
    expect(stdout.split('\n')).toEqual([
      'TypeError: Expected a Bun SQL from `new SQL(url)` or a reserved one from `await sql.reserve()`, got a transaction sql (inside sql.begin): pass the SQL itself',
      'TypeError: Expected a Bun SQL for PostgreSQL, got one for mysql: a PostgreSQL advisory lock needs a PostgreSQL server',
      '',
    ]);
  },
);

test.skipIf(skip)(
  "the CLI under Bun: two `bun dist/cli/index.js run -- CMD` take turns, `status` shows the holder, CMD's exit code is kept",
  async () => {
    const url = await createTestDatabase();
    await withClient(url, (c) => c.query('CREATE TABLE ran (app text, at timestamptz)'));
    // CMD records the application_name it connected with (the holding's tag, from PGAPPNAME), then works 1 s.
    const step = `import pg from 'pg'; const c = new pg.Client(process.env.DATABASE_URL); await c.connect();
    await c.query('INSERT INTO ran SELECT current_setting($1), now()', ['application_name']); await c.end();
    await new Promise((r) => setTimeout(r, 1000)); process.exit(Number(process.argv.at(-1)));`;
    const run = (code: number) =>
      bun([CLI, 'run', '--key', '21', '--', process.execPath, '--input-type=module', '-e', step, String(code)], {
        DATABASE_URL: url,
      });
    const first = run(0);
    let logged = '';
    first.child.stderr?.on('data', (chunk) => (logged += chunk));
    await waitFor(() => /Acquired migration lock 21/.test(logged), 15_000, 'the first run');
    const second = run(4);
    const status = await bun([CLI, 'status', '--key', '21'], { DATABASE_URL: url }).exited;
    expect(status.stdout).toMatch(/^LOCKED/m);
    const [a, b] = await Promise.all([first.exited, second.exited]);
    expect([a.code, b.code]).toEqual([0, 4]);
    expect(b.stderr).toMatch(/Waiting for migration lock 21/);
    const apps = await withClient(url, async (c) => (await c.query('SELECT app FROM ran ORDER BY at')).rows);
    expect(apps).toHaveLength(2);
    for (const { app } of apps) expect(app).toMatch(/^pg-migration-lock:21:/);
    const after = await bun([CLI, 'status', '--key', '21'], { DATABASE_URL: url }).exited;
    expect([after.code, after.stdout]).toEqual([0, expect.stringMatching(/^UNLOCKED/)]);
  },
);

test.skipIf(skip)('the CLI under Bun killed by SIGKILL: its reaper kills CMD, and the lock is freed', async () => {
  const url = await createTestDatabase();
  const cli = bun([CLI, 'run', '--key', '22', '--', 'sh', '-c', 'echo cmd $$; exec sleep 600'], { DATABASE_URL: url });
  const cmd = Number((await waitFor(() => /cmd (\d+)/.exec(cli.output()), 15_000, 'CMD'))![1]);
  expect(await lockRows(url, 22n)).toHaveLength(1);
  cli.child.kill('SIGKILL');
  await cli.exited;
  const gone = () => {
    try {
      process.kill(cmd, 0);
      return false;
    } catch {
      return true;
    }
  };
  await waitFor(gone, 10_000, 'CMD to be killed');
  await waitFor(async () => (await lockRows(url, 22n)).length === 0, 10_000, 'the lock to be freed');
});

test.skipIf(skip)(
  "drizzle's bun-sql migrator through pg-migration-lock/drizzle: 4 Bun processes apply each migration once, on the lock session",
  async () => {
    const url = await createTestDatabase();
    const replicas = Array.from({ length: 4 }, () => bun([fixture('drizzle/race-bun-sql.mjs')], { DATABASE_URL: url }));
    const exits = await Promise.all(replicas.map((replica) => replica.exited));
    expect(exits.map((e) => [e.code, e.stderr])).toEqual(exits.map(() => [0, '']));
    const results = exits.map((e) => JSON.parse(/^RESULT (.*)$/m.exec(e.stdout)![1]!) as { locked: boolean });
    // The first holder applies all three; the others find nothing left, before or after waiting.
    expect(results.filter((r) => r.locked).length).toBeGreaterThanOrEqual(1);
    expect(await appliedMigrations(url, 'drizzle')).toEqual({ total: 3, distinct: 3 });
    await expectMigratedOnLockSession(url, DEFAULT_LOCK_KEY);
  },
);
