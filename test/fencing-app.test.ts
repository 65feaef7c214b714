// Fencing stops only a lost holding's work, never the app it protects: nothing of a holding survives on a
// connection that outlives it, a command reached through a pooler is not tagged, a role that cannot change the
// database is never fenced (a forged tag), a standby is refused, and bad options or connection strings are named.
// Real servers, real roles, real processes, a real PgBouncer and a real streaming standby.
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import { runner } from '../adapters/node-pg-migrate.js';
import {
  getLockStatus,
  type Logger,
  MigrationLockError,
  migrateEach,
  releaseLock,
  withMigrationLock,
} from '../src/index.js';
import { cli, fixture as cliFixture } from './cli/cli.js';
import { findPgbouncer, type Pgbouncer, startPgbouncer } from './fixtures/pooler/pgbouncer.mjs';
import { findPostgresBinaries, type Replicated, startPrimaryAndStandby } from './fixtures/standby.js';
import { createTestDatabase, skipUnlessRequired, sleep, waitFor, withClient } from './helpers.js';

const url = await createTestDatabase();
const admin = inject('adminUrl');
const database = new URL(url).pathname.slice(1);
const suffix = `${process.pid}_${Date.now() % 100_000}`;

function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    debug() {},
    info: (message) => lines.push(`info ${message}`),
    warn: (message) => lines.push(`warn ${message}`),
    error: (message) => lines.push(`error ${message}`),
  };
}

/**
 * An app querying on `query` every 50 ms until stopped: how many queries ran, and every error it saw. Fencing that
 * terminates the app's connection shows up here as an error.
 */
function appQuerying(query: () => Promise<unknown>) {
  const errors: string[] = [];
  let ran = 0;
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      try {
        await query();
        ran++;
      } catch (err) {
        errors.push((err as Error).message);
      }
      await sleep(50);
    }
  })();
  return {
    errors,
    ran: () => ran,
    stop: async () => {
      stopped = true;
      await loop;
    },
  };
}

/** What a connection carries that a holding changes: its name, its keepalive and its idle timeout. */
const SETTINGS_SQL = `SELECT current_setting('application_name') AS app, current_setting('tcp_keepalives_idle') AS keepalive,
  current_setting('idle_in_transaction_session_timeout') AS idle_tx, current_setting('statement_timeout') AS statement`;

describe('a transaction fn leaves open: rolled back at release, and nothing of the holding survives', () => {
  test("the app's own pg.Client: rolled back (warned), its name and settings intact, and a next holder leaves it alone while it keeps querying", async () => {
    const app = new pg.Client({ connectionString: url, application_name: 'app-own-client', statement_timeout: 30_000 });
    await app.connect();
    try {
      const before = (await app.query(SETTINGS_SQL)).rows[0];
      const logger = recordingLogger();
      await withMigrationLock(
        app,
        501n,
        async ({ client }) => {
          await client.query('BEGIN');
          await client.query('CREATE TABLE left_open_client (id int)');
        },
        { logger },
      );
      expect(
        logger.lines.some((line) => /warn fn left a transaction open on the lock session: rolling it back/.test(line)),
      ).toBe(true);
      expect(app.getTransactionStatus()).toBe('I');
      expect((await app.query(SETTINGS_SQL)).rows[0]).toEqual(before);
      expect((await app.query(`SELECT to_regclass('left_open_client') AS t`)).rows[0].t).toBeNull();
      // The next deploy's holder, while the app goes on querying on its client.
      const querying = appQuerying(() => app.query('SELECT 1'));
      await sleep(150);
      await withMigrationLock(url, 501n, () => sleep(200), { logger: null });
      await sleep(150);
      await querying.stop();
      expect(querying.errors).toEqual([]);
      expect(querying.ran()).toBeGreaterThan(0);
    } finally {
      await app.end();
    }
  });

  test("a pool's session and a postgres.js reserved one: rolled back, given back with the app's name", async () => {
    const pool = new pg.Pool({ connectionString: url, max: 1, application_name: 'app-pool' });
    const sql = postgres(url, { max: 1, connection: { application_name: 'app-pgjs' }, onnotice: () => {} });
    try {
      for (const [source, read] of [
        [pool, async () => (await pool.query(SETTINGS_SQL)).rows[0]],
        [sql, async () => (await sql.unsafe(SETTINGS_SQL))[0]],
      ] as const) {
        const before = await read();
        const logger = recordingLogger();
        await withMigrationLock(
          source as pg.Pool,
          502n,
          async ({ client }) => {
            const run = (text: string) =>
              typeof (client as pg.ClientBase).query === 'function'
                ? (client as pg.ClientBase).query(text)
                : (client as unknown as postgres.Sql).unsafe(text);
            await run('BEGIN');
            await run('CREATE TABLE left_open_pool (id int)');
          },
          { logger },
        );
        expect(logger.lines.some((line) => /rolling it back/.test(line))).toBe(true);
        expect(await read()).toEqual(before);
        const { rows } = await pool.query(`SELECT to_regclass('left_open_pool') AS t`);
        expect(rows[0].t).toBeNull();
      }
    } finally {
      await pool.end();
      await sql.end();
    }
  });
});

const roles = { intruder: `pgml_intruder_${suffix}`, app: `pgml_deploy_${suffix}`, ci: `pgml_ci_${suffix}` };
const roleUrl = (role: string) => {
  const u = new URL(url);
  u.username = role;
  u.password = 'pw';
  return u.toString();
};

describe('a forged tag stops no deploy: only a role that can change the database is fenced', () => {
  beforeAll(async () => {
    await withClient(admin, (c) =>
      c.query(`CREATE ROLE ${roles.intruder} LOGIN PASSWORD 'pw'; CREATE ROLE ${roles.app} LOGIN PASSWORD 'pw';
               CREATE ROLE ${roles.ci} LOGIN PASSWORD 'pw'`),
    );
    // The deploy role and the CI role may create (they migrate); the intruder may only read one table.
    await withClient(url, (c) =>
      c.query(`CREATE TABLE report (id int); GRANT SELECT ON report TO ${roles.intruder};
               GRANT CREATE ON SCHEMA public TO ${roles.app}, ${roles.ci};
               REVOKE CREATE ON SCHEMA public FROM PUBLIC`),
    );
  });
  afterAll(async () => {
    await withClient(url, (c) => c.query(`DROP OWNED BY ${roles.intruder}, ${roles.app}, ${roles.ci}`)).catch(() => {});
    await withClient(admin, (c) =>
      c.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename IN ('${roles.intruder}', '${roles.app}', '${roles.ci}');
               DROP ROLE IF EXISTS ${roles.intruder}; DROP ROLE IF EXISTS ${roles.app}; DROP ROLE IF EXISTS ${roles.ci}`),
    );
  });

  /** A session of `role` wearing a holding's tag of `key`, idle, and one running a long statement. */
  async function wearing(role: string, key: bigint) {
    const tag = `pg-migration-lock:${key}:abcdef.x`;
    const idle = new pg.Client({ connectionString: roleUrl(role), application_name: tag });
    const busy = new pg.Client({ connectionString: roleUrl(role), application_name: tag });
    const pids: number[] = [];
    for (const c of [idle, busy]) {
      c.on('error', () => {});
      await c.connect();
      pids.push((await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid);
    }
    const sleeping = busy.query('SELECT pg_sleep(60)').catch((err: Error) => err);
    await waitFor(() =>
      withClient(url, async (c) => {
        const { rows } = await c.query(`SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'`, [pids[1]]);
        return rows.length > 0;
      }),
    );
    const alive = () =>
      withClient(url, async (c) => {
        const { rows } = await c.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ANY($1)', [pids]);
        return rows[0].n as number;
      });
    return {
      tag,
      pids,
      alive,
      sleeping,
      end: async () => {
        for (const c of [idle, busy]) await c.end().catch(() => {});
      },
    };
  }

  test('a read-only role wearing the tag, idle and busy: run, migrate and withMigrationLock go on (with and without pg_signal_backend); it is never terminated, and status marks it', async () => {
    const key = 777n;
    const intruder = await wearing(roles.intruder, key);
    try {
      const env = { DATABASE_URL: roleUrl(roles.app) };
      const ran = await cli(['run', '--key', String(key), '--', process.execPath, '-e', 'console.log("ran")'], { env });
      expect([ran.code, ran.stdout]).toEqual([0, 'ran\n']);
      // Both named (in either order), each with its role and its tag.
      for (const pid of intruder.pids) {
        expect(ran.stderr).toMatch(
          new RegExp(`ignoring .*pid ${pid} of role "${roles.intruder}" \\([^)]*; ${intruder.tag}\\)`),
        );
      }
      expect(ran.stderr).toMatch(/they wear a holding's tag, but their roles cannot change this database/);
      const logger = recordingLogger();
      expect(await withMigrationLock(roleUrl(roles.app), key, () => 'migrated', { logger })).toBe('migrated');
      // A migrator through the CLI, on the key it locks by default (the intruder wears that key's tag too).
      const knex = await wearing(roles.intruder, -4853655304891776800n);
      try {
        const migrated = await cli(['migrate', 'knex', '--knexfile', 'knexfile.cjs'], {
          env: { DATABASE_URL: url },
          cwd: cliFixture('knex'),
        });
        expect(migrated.code).toBe(0);
        expect(await knex.alive()).toBe(2);
      } finally {
        await knex.end();
      }
      // status shows the tagged backends, marked as not a holding's work.
      const status = await getLockStatus(url, key);
      expect(status.work.map((w) => [w.pid, w.canMigrate]).sort()).toEqual(
        intruder.pids.map((pid) => [pid, false]).sort(),
      );
      const shown = await cli(['status', '--key', String(key)], { env: { DATABASE_URL: url } });
      expect(shown.stdout).toContain("not a holding's work: its role cannot change this database");
      // With the right to terminate anyone's backends, it still terminates no one who cannot have been migrating.
      await withClient(admin, (c) => c.query(`GRANT pg_signal_backend TO ${roles.app}`));
      const again = await cli(['run', '--key', String(key), '--', process.execPath, '-e', 'console.log("ran")'], {
        env,
      });
      expect(again.code).toBe(0);
      expect(await releaseLock(roleUrl(roles.app), key)).toMatchObject({ released: false, terminated: [] });
      expect(await intruder.alive()).toBe(2);
    } finally {
      await withClient(admin, (c) => c.query(`REVOKE pg_signal_backend FROM ${roles.app}`));
      await intruder.end();
    }
  }, 40_000);

  test("a real orphaned holding's work of another role that can migrate (CI and app roles taking turns) is still refused without pg_signal_backend (naming it, and that it is busy), and terminated with it", async () => {
    const key = 778n;
    const orphan = await wearing(roles.ci, key);
    try {
      const env = { DATABASE_URL: roleUrl(roles.app) };
      const refused = await cli(['run', '--key', String(key), '--', process.execPath, '-e', 'console.log("ran")'], {
        env,
      });
      expect(refused.code).toBe(1);
      expect(refused.stdout).toBe('');
      expect(refused.stderr).toMatch(/pg_signal_backend/);
      expect(refused.stderr).toMatch(
        new RegExp(`pid ${orphan.pids[1]} of role "${roles.ci}" \\((active|in a transaction)( for [\\d.]+m?s)?;`),
      );
      expect(refused.stderr).toMatch(
        new RegExp(`pid ${orphan.pids[0]} of role "${roles.ci}" \\(idle( for [\\d.]+m?s)?;`),
      );
      expect(await orphan.alive()).toBe(2);
      await withClient(admin, (c) => c.query(`GRANT pg_signal_backend TO ${roles.app}`));
      const fenced = await cli(['run', '--key', String(key), '--', process.execPath, '-e', 'console.log("ran")'], {
        env,
      });
      expect([fenced.code, fenced.stdout]).toEqual([0, 'ran\n']);
      expect(fenced.stderr).toMatch(/an earlier holder's work is still running on 2 backends/);
      expect(await orphan.alive()).toBe(0);
    } finally {
      await withClient(admin, (c) => c.query(`REVOKE pg_signal_backend FROM ${roles.app}`));
      await orphan.end();
    }
  }, 40_000);
});

const pgbouncer = findPgbouncer();
const noBouncer = skipUnlessRequired(
  pgbouncer ? undefined : 'fencing-app.test.ts needs pgbouncer (apt-get install -y pgbouncer) for its pooler tests',
);

describe.skipIf(noBouncer)(
  'run with CMD through a pooler: CMD is not tagged, the app behind the pooler is never terminated',
  () => {
    let bouncers: Pgbouncer[] = [];
    beforeAll(async () => {
      // Few server connections, as a small pool under load: the one CMD used goes on to serve the app.
      bouncers = await Promise.all(
        (['transaction', 'session'] as const).map((poolMode) =>
          startPgbouncer(pgbouncer!, {
            serverUrl: url,
            poolMode,
            databases: { db: { pool_size: poolMode === 'transaction' ? 1 : 2 } },
          }),
        ),
      );
    });
    afterAll(async () => {
      await Promise.all(bouncers.map((b) => b.stop()));
    });

    // CMD as a migrator runs it: a connection to DATABASE_URL (the pooler), a statement, a second one.
    const CMD = `const pg = require('pg'); const c = new pg.Client(process.env.DATABASE_URL);
    c.connect().then(() => c.query('SELECT pg_sleep(0.1)')).then(() => c.query("SELECT current_setting('application_name') AS app"))
      .then((r) => { console.log('cmd as', r.rows[0].app); return c.end(); })
      .catch((e) => { console.error('cmd failed', e.message); process.exit(1); })`;

    for (const mode of ['transaction', 'session'] as const) {
      test(`${mode} mode: an app querying through it across 4 deploys sees 0 errors, and no server connection is left tagged`, async () => {
        const bouncer = bouncers[mode === 'transaction' ? 0 : 1]!;
        // The app's clients come and go (a serverless function, a pool's churn): each is served on whichever server
        // connection is free, the one CMD used included.
        const querying = appQuerying(async () => {
          const client = new pg.Client({ connectionString: bouncer.url(), application_name: 'app-behind-pooler' });
          client.on('error', () => {});
          await client.connect();
          try {
            await client.query('SELECT pg_sleep(0.02)');
          } finally {
            await client.end();
          }
        });
        const key = mode === 'transaction' ? 801n : 802n;
        try {
          for (let deploy = 0; deploy < 4; deploy++) {
            const { code, stdout, stderr } = await cli(
              ['run', '--database-url', url, '--key', String(key), '--', process.execPath, '-e', CMD],
              { env: { DATABASE_URL: bouncer.url() } },
            );
            expect(code, stderr).toBe(0);
            expect(stdout).not.toMatch(/cmd as pg-migration-lock:/);
            expect(stderr.match(/CMD's connections are not tagged for fencing/g)).toHaveLength(1);
            expect(stderr).toMatch(/DATABASE_URL\) is reached through a pooler or proxy/);
          }
        } finally {
          await querying.stop();
        }
        expect(querying.errors).toEqual([]);
        expect(querying.ran()).toBeGreaterThan(0);
        const tagged = await withClient(url, async (c) => {
          const { rows } = await c.query(
            `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'pg-migration-lock:%:%'`,
            [database],
          );
          return rows[0].n;
        });
        expect(tagged).toBe(0);
      }, 60_000);
    }

    test('CMD reaching the server directly is still tagged (and fenced): no warning', async () => {
      const { code, stdout, stderr } = await cli(['run', '--key', '803', '--', process.execPath, '-e', CMD], {
        env: { DATABASE_URL: url },
      });
      expect(code).toBe(0);
      expect(stdout).toMatch(/^cmd as pg-migration-lock:803:[0-9a-z]{6}\./m);
      expect(stderr).not.toMatch(/not tagged/);
    });
  },
);

const bindir = findPostgresBinaries();
const noStandby = skipUnlessRequired(
  bindir
    ? undefined
    : 'fencing-app.test.ts needs PostgreSQL server binaries with pg_basebackup (apt-get install -y postgresql) for its standby test',
);

describe.skipIf(noStandby)('a hot standby is refused as a lock source', () => {
  let servers: Replicated | undefined;
  beforeAll(async () => {
    servers = await startPrimaryAndStandby(bindir!);
  }, 60_000);
  afterAll(async () => {
    await servers?.stop();
  });

  test('withMigrationLock: MigrationLockError naming the standby and the primary; fn never runs, nothing is held', async () => {
    let ran = false;
    const error = await withMigrationLock(
      servers!.standbyUrl,
      42n,
      () => {
        ran = true;
      },
      { logger: null },
    ).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(MigrationLockError);
    expect((error as Error).message).toMatch(/read-only standby .* migrate on the primary/);
    expect(ran).toBe(false);
    const status = await getLockStatus(servers!.standbyUrl, 42n);
    expect(status).toMatchObject({ locked: false, standby: true });
    expect((await getLockStatus(servers!.primaryUrl, 42n)).standby).toBe(false);
  });

  test('run exits 1 before CMD starts; status works there and says it is a standby', async () => {
    const run = await cli(['run', '--', process.execPath, '-e', 'console.log("ran")'], {
      env: { DATABASE_URL: servers!.standbyUrl },
    });
    expect(run.code).toBe(1);
    expect(run.stdout).toBe('');
    expect(run.stderr).toMatch(/error: The server is a read-only standby/);
    const status = await cli(['status'], { env: { DATABASE_URL: servers!.standbyUrl } });
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(/^UNLOCKED/);
    expect(status.stderr).toMatch(/This server is a read-only standby/);
  });
});

describe('every options object names an unknown key, before any connection', () => {
  // Nothing listens on port 1: a connection attempt would fail with ECONNREFUSED, not a TypeError.
  const nowhere = 'postgres://u:s3cret@127.0.0.1:1/app';
  test.each([
    [
      'a lock option',
      () => withMigrationLock(nowhere, 1n, () => {}, { timeOutMs: 100 } as never),
      /Unknown option timeOutMs; did you mean timeoutMs\?/,
    ],
    [
      'a hook',
      () => withMigrationLock(nowhere, 1n, () => {}, { hooks: { onAquired() {} } } as never),
      /Unknown hook onAquired; did you mean onAcquired\?/,
    ],
    ['releaseLock', () => releaseLock(nowhere, 1n, { pdi: 3 } as never), /Unknown option pdi; did you mean pid\?/],
    [
      'no near name',
      () => withMigrationLock(nowhere, 1n, () => {}, { retries: 3 } as never),
      /Unknown option retries \(known: wait, timeoutMs/,
    ],
    [
      "an adapter's lock",
      async () => runner({ databaseUrl: nowhere, dir: 'migrations', direction: 'up', lock: { kye: 1 } } as never),
      /Unknown lock option kye; did you mean key\?/,
    ],
    [
      'migrateEach',
      async () =>
        migrateEach([nowhere], { name: 'x', pending: async () => [], run: async () => [] }, { concurency: 2 } as never),
      /Unknown option of migrateEach concurency; did you mean concurrency\?/,
    ],
    [
      "migrateEach's lock",
      async () =>
        migrateEach([nowhere], { name: 'x', pending: async () => [], run: async () => [] }, {
          lock: { timeoutMS: 1 },
        } as never),
      /Unknown lock option of migrateEach timeoutMS; did you mean timeoutMs\?/,
    ],
  ])('%s', async (_, call, message) => {
    const error = await call().catch((err: unknown) => err);
    expect(error).toBeInstanceOf(TypeError);
    expect(String(error)).toMatch(message);
  });
});

describe('libpq keyword/value connection strings work wherever a URL does', () => {
  const role = `pgml_kv_${suffix}`;
  let conninfo = '';
  beforeAll(async () => {
    await withClient(admin, (c) => c.query(`CREATE ROLE ${role} LOGIN SUPERUSER PASSWORD 'it''s a s3cret'`));
    const u = new URL(url);
    conninfo = `host=${u.hostname} port = ${u.port} dbname=${database} user=${role} password='it\\'s a s3cret' application_name=kv-app`;
  });
  afterAll(async () => {
    await withClient(admin, (c) =>
      c.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '${role}'; DROP ROLE IF EXISTS ${role}`,
      ),
    );
  });

  test('the library: withMigrationLock, getLockStatus and releaseLock', async () => {
    const seen = await withMigrationLock(
      conninfo,
      601n,
      async ({ client }) => (await client.query('SELECT current_user AS me')).rows[0].me,
      { logger: null },
    );
    expect(seen).toBe(role);
    expect((await getLockStatus(conninfo, 601n)).locked).toBe(false);
    expect(await releaseLock(conninfo, 601n)).toMatchObject({ released: false, pid: null });
  });

  test('a fleet target: read as its URL, named without its password', async () => {
    const noop = { name: 'noop', pending: async () => [], run: async () => [] };
    const report = await migrateEach([conninfo], noop, { logger: null });
    expect(report.ok).toBe(true);
    const u = new URL(url);
    expect(report.results[0]?.target.name).toBe(`${u.hostname}:${u.port}/${database}`);
    expect(report.results[0]?.target.connection).toMatch(/^postgres:\/\//);
  });

  test('the CLI: DATABASE_URL and --database-url in keyword/value form, the password never shown', async () => {
    const ran = await cli(['run', '--key', '602', '--', process.execPath, '-e', 'console.log("ran")'], {
      env: { DATABASE_URL: conninfo },
    });
    expect([ran.code, ran.stdout]).toEqual([0, 'ran\n']);
    expect(ran.stderr).toMatch(/Database: postgres:\/\/pgml_kv_\w+:\*\*\*@/);
    const status = await cli(['status', '--database-url', conninfo, '--key', '602']);
    expect(status.code).toBe(0);
    for (const output of [ran.stdout, ran.stderr, status.stdout, status.stderr]) {
      expect(output).not.toContain('s3cret');
    }
  });

  test('a malformed one: a TypeError (library) or exit 2 (CLI), without the password', async () => {
    const bad = "host=db user=app password='s3cret";
    const error = await withMigrationLock(bad, 1n, () => {}).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(TypeError);
    expect(String(error)).toMatch(/not a valid libpq keyword\/value string \(expected the closing quote/);
    expect(String(error)).not.toContain('s3cret');
    const { code, stderr } = await cli(['status'], { env: { DATABASE_URL: bad } });
    expect(code).toBe(2);
    expect(stderr).toMatch(/Invalid connection string \(from DATABASE_URL\)/);
    expect(stderr).not.toContain('s3cret');
  });
});
