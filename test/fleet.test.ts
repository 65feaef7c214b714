// migrateEach with knex: runs started together as OS processes, a failing tenant, stopOnError, a SIGKILLed run
// resumed, async iterable targets, database targets, keys, progress, abort, and bad input.
import knexFactory from 'knex';
import pg from 'pg';
import { expect, test } from 'vitest';
import { fleet } from '../adapters/knex.js';
import {
  DEFAULT_LOCK_KEY,
  type FleetMigrator,
  type FleetProgressEvent,
  type FleetTargetInput,
  fleetKey,
  lockKey,
  migrateEach,
  withMigrationLock,
} from '../src/index.js';
import {
  eventCounts,
  expectMigratedOnce,
  NAMES,
  prepareTenants,
  schemaTargets,
  startFleet,
} from './fixtures/fleet/tenants.js';
import { createTestDatabase, fixture, lockRows, silentKnexLog, sleep, waitFor, withClient } from './helpers.js';

const [pairUrl, failUrl, stopUrl, killUrl, iterUrl, keyUrl, abortUrl, db1, db2, db3, meetUrl] = (await Promise.all(
  Array.from({ length: 11 }, () => createTestDatabase()),
)) as [string, string, string, string, string, string, string, string, string, string, string];
const knexFleet = () => fleet({ migrations: { directory: fixture('fleet/knex') }, log: silentKnexLog });
const names = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}_${i + 1}`);
const KNEX = NAMES.knex;

test('two fleet runs started together as OS processes migrate every tenant once, sharing the work', async () => {
  const schemas = names('tenant', 16);
  await prepareTenants(pairUrl);
  const runs = [0, 1].map(() => startFleet('knex', schemaTargets(pairUrl, schemas), ['--concurrency', '3', '--go']));
  await waitFor(() => runs.every((run) => run.output().includes('ready')), 30_000, 'both runs ready');
  for (const run of runs) run.child.stdin?.write('go\n');
  const [a, b] = await Promise.all(runs.map((run) => run.report()));

  for (const report of [a!, b!]) {
    expect(report.ok).toBe(true);
    expect(report.counts.failed).toBe(0);
  }
  // Each tenant was applied by exactly one run; the other found it up to date, or skipped it (it held the lock).
  for (const [i, schema] of schemas.entries()) {
    const pair = [a!.results[i]!, b!.results[i]!];
    expect(pair.map((r) => r.schema)).toEqual([schema, schema]);
    expect(pair.filter((r) => r.status === 'applied').map((r) => r.applied)).toEqual([KNEX]);
    expect(pair.filter((r) => r.status !== 'applied').map((r) => r.status)).toEqual([
      expect.stringMatching(/^(skipped|up-to-date)$/),
    ]);
  }
  // Both did part of the work.
  expect(a!.counts.applied).toBeGreaterThan(0);
  expect(b!.counts.applied).toBeGreaterThan(0);
  expect(a!.counts.applied + b!.counts.applied).toBe(16);
  await expectMigratedOnce(pairUrl, schemas);
  await withClient(pairUrl, async (client) => {
    for (const schema of schemas) {
      const { rows } = await client.query(`SELECT name FROM "${schema}".knex_migrations ORDER BY id`);
      expect(rows.map((r) => r.name)).toEqual(KNEX);
    }
  });
});

test('the schemas of a fleet migrate in parallel, each under its own lock: their holdings overlap in pg_locks', async () => {
  const schemas = names('meet', 4);
  const keys = new Map(schemas.map((schema) => [fleetKey('knex', schema), schema]));
  const migrator = fleet({ migrations: { directory: fixture('fleet/knex-meet') }, log: silentKnexLog });
  // pg_locks, sampled from a session of the test's own while the fleet runs: which targets' keys are held at once.
  const heldTogether: string[][] = [];
  let running = true;
  const sampling = withClient(meetUrl, async (client) => {
    while (running) {
      const { rows } = await client.query<{ key: string }>(
        `SELECT ((classid::bigint << 32) | objid::bigint)::text AS key FROM pg_catalog.pg_locks
         WHERE locktype = 'advisory' AND objsubid = 1 AND granted
           AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())`,
      );
      heldTogether.push(rows.map((row) => keys.get(BigInt.asIntN(64, BigInt(row.key))) ?? `other ${row.key}`));
      await sleep(10);
    }
  });
  const report = await migrateEach(schemaTargets(meetUrl, schemas), migrator, { concurrency: 4, logger: null });
  running = false;
  await sampling;
  expect(report.counts).toMatchObject({ applied: 4, failed: 0 });
  // Every target under a key of its own, as fleetKey computes it.
  expect(new Set(report.results.map((r) => r.key)).size).toBe(4);
  expect(report.results.map((r) => keys.get(r.key))).toEqual(schemas);
  // Compared: which holdings were seen at the same moment, not how long anything took. One key for every
  // target, or one target at a time, never shows two.
  const most = heldTogether.reduce((best, seen) => (seen.length > best.length ? seen : best), [] as string[]);
  expect(most.length, `the most holdings seen at once: ${most.join(', ')}`).toBeGreaterThanOrEqual(2);
  expect(most.every((name) => schemas.includes(name))).toBe(true);
});

test('a tenant whose migration fails is reported with its error, and the rest finish', async () => {
  const schemas = names('shop', 5);
  await prepareTenants(failUrl, ['shop_3']);
  const report = await migrateEach(schemaTargets(failUrl, schemas), knexFleet(), { concurrency: 2, logger: null });
  expect(report.ok).toBe(false);
  expect(report.counts).toMatchObject({ total: 5, done: 5, applied: 4, failed: 1, notRun: 0 });
  const failed = report.results[2]!;
  expect(failed.status).toBe('failed');
  expect(failed.target.schema).toBe('shop_3');
  expect(String((failed as { error: Error }).error.message)).toContain('this tenant is poisoned');
  expect(report.results.filter((r) => r.status === 'applied').map((r) => r.target.schema)).toEqual([
    'shop_1',
    'shop_2',
    'shop_4',
    'shop_5',
  ]);
  // knex runs a batch in one transaction: the poisoned tenant kept nothing.
  const counts = await eventCounts(failUrl);
  expect(Object.keys(counts).filter((at) => at.startsWith('shop_3/'))).toEqual([]);
});

test('stopOnError starts no further target after a failure; the ones left are not-run', async () => {
  const schemas = names('stop', 4);
  await prepareTenants(stopUrl, ['stop_2']);
  const report = await migrateEach(schemaTargets(stopUrl, schemas), knexFleet(), {
    concurrency: 1,
    stopOnError: true,
    logger: null,
  });
  expect(report.results.map((r) => r.status)).toEqual(['applied', 'failed', 'not-run', 'not-run']);
  expect(report.counts).toMatchObject({ done: 4, applied: 1, failed: 1, notRun: 2 });
  expect(report.ok).toBe(false);
});

test('a fleet run killed with SIGKILL resumes where it stopped when run again', async () => {
  const schemas = names('kill', 8);
  await prepareTenants(killUrl);
  const first = startFleet('knex', schemaTargets(killUrl, schemas), ['--concurrency', '2']);
  await waitFor(() => first.progress().filter(([type]) => type === 'finished').length >= 3, 30_000, '3 tenants');
  first.child.kill('SIGKILL');
  expect((await first.exited).signal).toBe('SIGKILL');
  // What the killed run finished is committed; what it was migrating rolled back with its connection.
  const before = await eventCounts(killUrl);
  const finished = schemas.filter((s) => before[`${s}/002`] === 1);
  expect(finished.length).toBeGreaterThanOrEqual(3);
  expect(finished.length).toBeLessThan(8);
  for (const schema of schemas) expect(before[`${schema}/001`] ?? 0).toBe(before[`${schema}/002`] ?? 0);

  const again = await migrateEach(schemaTargets(killUrl, schemas), knexFleet(), { concurrency: 2, logger: null });
  expect(again.ok).toBe(true);
  for (const result of again.results) {
    expect(result.status).toBe(finished.includes(result.target.schema!) ? 'up-to-date' : 'applied');
  }
  await expectMigratedOnce(killUrl, schemas);
});

test('targets from an async iterable (a tenants table) are read as slots free up, and reported in order', async () => {
  await prepareTenants(iterUrl);
  await withClient(iterUrl, (client) =>
    client.query(`CREATE TABLE tenants (id serial PRIMARY KEY, slug text NOT NULL);
                  INSERT INTO tenants (slug) VALUES ('acme'), ('globex'), ('initech'), ('umbrella')`),
  );
  async function* tenants(): AsyncGenerator<FleetTargetInput> {
    const client = new pg.Client(iterUrl);
    await client.connect();
    try {
      const { rows } = await client.query<{ slug: string }>('SELECT slug FROM tenants ORDER BY id');
      for (const { slug } of rows) yield { url: iterUrl, schema: `t_${slug}`, name: slug };
    } finally {
      await client.end();
    }
  }
  const totals: (number | undefined)[] = [];
  const report = await migrateEach(tenants(), knexFleet(), {
    concurrency: 2,
    logger: null,
    onProgress: (event) => totals.push(event.counts.total),
  });
  expect(report.ok).toBe(true);
  expect(report.results.map((r) => [r.target.name, r.status])).toEqual([
    ['acme', 'applied'],
    ['globex', 'applied'],
    ['initech', 'applied'],
    ['umbrella', 'applied'],
  ]);
  // The total is unknown until the iterable ends.
  expect(totals[0]).toBeUndefined();
  expect(totals.at(-1)).toBe(4);
  expect(report.counts.total).toBe(4);
  await expectMigratedOnce(iterUrl, ['t_acme', 't_globex', 't_initech', 't_umbrella']);

  // An iterable that throws: the targets running finish, then the call rejects with its error.
  async function* broken(): AsyncGenerator<FleetTargetInput> {
    yield { url: iterUrl, schema: 't_acme' };
    throw new Error('the tenants table is gone');
  }
  await expect(migrateEach(broken(), knexFleet(), { logger: null })).rejects.toThrow('the tenants table is gone');
});

test('database targets: a single run’s key, a target another run holds is skipped, an up-to-date one costs one connection and no lock', async () => {
  for (const url of [db1, db2, db3]) await prepareTenants(url);
  const knexOf = (url: string) =>
    knexFactory({ client: 'pg', connection: url, migrations: { directory: fixture('fleet/knex') } });
  // db1 is up to date already.
  const db = knexOf(db1);
  await db.migrate.latest();
  await db.destroy();
  // Sessions ever opened on db1 (pg_stat_database.sessions), read on one session that counted itself first.
  const counter = new pg.Client(db1);
  await counter.connect();
  await counter.query('SELECT pg_stat_force_next_flush()');
  const sessions = async () => {
    await counter.query('SELECT pg_stat_clear_snapshot()');
    const { rows } = await counter.query('SELECT sessions FROM pg_stat_database WHERE datname = current_database()');
    return Number(rows[0].sessions);
  };
  const sessionsBefore = await sessions();

  // Another run migrates db2 while the fleet starts: it holds db2's key, the default key of knex.
  let deferred: () => void = () => {};
  const wasDeferred = new Promise<void>((resolve) => (deferred = resolve));
  const events: string[] = [];
  const acquired: bigint[] = [];
  const other = withMigrationLock(db2, DEFAULT_LOCK_KEY, async () => {
    await wasDeferred;
    const migrating = knexOf(db2);
    await migrating.migrate.latest();
    await migrating.destroy();
  });
  await waitFor(async () => (await lockRows(db2, DEFAULT_LOCK_KEY)).length > 0, 10_000, 'the other run to hold db2');
  const report = await migrateEach([db1, db2, db3], knexFleet(), {
    concurrency: 3,
    logger: null,
    lock: { hooks: { onAcquired: ({ key }) => acquired.push(key) } },
    onProgress: (event: FleetProgressEvent) => {
      events.push(`${event.type} ${new URL(`postgres://${event.target.name}`).pathname}`);
      if (event.type === 'deferred') deferred();
    },
  });
  await other;
  const path = (url: string) => new URL(url).pathname;
  expect(report.results.map((r) => [path(`postgres://${r.target.name}`), r.status, r.key])).toEqual([
    [path(db1), 'up-to-date', DEFAULT_LOCK_KEY],
    [path(db2), 'skipped', DEFAULT_LOCK_KEY],
    [path(db3), 'applied', DEFAULT_LOCK_KEY],
  ]);
  expect(events).toContain(`deferred ${path(db2)}`);
  expect(events).toContain(`resumed ${path(db2)}`);
  // Only db3 took the lock: db1 was up to date, db2 was finished by the other run.
  expect(acquired).toEqual([DEFAULT_LOCK_KEY]);
  // db1: the one connection its pending check ran on.
  await waitFor(async () => (await sessions()) > sessionsBefore, 5_000, 'the session count');
  expect((await sessions()) - sessionsBefore).toBe(1);
  await counter.end();
  for (const url of [db1, db2, db3]) await expectMigratedOnce(url, ['public']);
});

test('keys: one per schema and migrator, as psql computes it; the migrator’s own key on a database', async () => {
  await prepareTenants(keyUrl);
  expect(fleetKey('knex')).toBe(DEFAULT_LOCK_KEY);
  expect(fleetKey('node-pg-migrate')).toBe(7241865325823964n);
  expect(fleetKey('kysely')).toBe(3853314791062309107n);
  expect(fleetKey({ name: 'node-pg-migrate', key: 42 })).toBe(42n);
  expect(fleetKey('knex', 'k_1')).toBe(lockKey('pg-migration-lock:knex:k_1'));
  const fromSql = await withClient(keyUrl, async (client) => {
    const { rows } = await client.query(
      "SELECT ('x' || left(md5('pg-migration-lock:knex:k_1'), 16))::bit(64)::bigint::text AS key",
    );
    return BigInt(rows[0].key);
  });
  expect(fleetKey('knex', 'k_1')).toBe(fromSql);
  expect(fleetKey('knex', 'k_1')).not.toBe(fleetKey('drizzle', 'k_1'));

  // The key each target was locked with, while it migrated, and keyOf's own.
  const held: bigint[] = [];
  const report = await migrateEach(schemaTargets(keyUrl, ['k_1', 'k_2']), knexFleet(), {
    logger: null,
    lock: { hooks: { onAcquired: ({ key }) => held.push(key) } },
  });
  expect(report.results.map((r) => r.key)).toEqual([fleetKey('knex', 'k_1'), fleetKey('knex', 'k_2')]);
  expect(held.sort()).toEqual([fleetKey('knex', 'k_1'), fleetKey('knex', 'k_2')].sort());
  const custom = await migrateEach(schemaTargets(keyUrl, ['k_3']), knexFleet(), {
    logger: null,
    keyOf: (target, migrator) => lockKey(`billing:${migrator.name}:${target.schema}`),
  });
  expect(custom.results[0]!.key).toBe(lockKey('billing:knex:k_3'));
});

test('the schemas of a database share the run’s connections, and nothing one tenant set reaches the next', async () => {
  const url = await createTestDatabase();
  await prepareTenants(url);
  // One slot: the three tenants migrate one after the other, on one connection of the run's pool.
  const report = await migrateEach(schemaTargets(url, ['c_1', 'c_2', 'c_3']), knexFleet(), {
    concurrency: 1,
    logger: null,
  });
  expect(report.ok).toBe(true);
  const pids = await withClient(url, async (client) => {
    const { rows } = await client.query('SELECT DISTINCT pid FROM public.fleet_events');
    return rows.map((row) => row.pid);
  });
  expect(pids).toHaveLength(1);

  // A migrator of its own, on the shared pool: the first tenant leaves settings, a role and a temporary table.
  const seen: Record<string, unknown>[] = [];
  const role = `fleet_leak_${Math.random().toString(36).slice(2, 8)}`;
  const leaky: FleetMigrator = {
    name: 'leaky',
    pending: async () => [],
    run: (target, lock, pool) =>
      withMigrationLock(
        pool ?? target.connection,
        lock.key,
        async ({ client }) => {
          const { rows } = await client.query(
            `SELECT pg_backend_pid() AS pid, current_setting('statement_timeout') AS timeout, current_user AS who,
                    current_setting('search_path') AS path, to_regclass('pg_temp.leftover') IS NOT NULL AS temp`,
          );
          seen.push(rows[0]);
          await client.query(`SET statement_timeout = '1234ms'; SET search_path = "${target.schema}";
                              CREATE TEMP TABLE leftover (); CREATE ROLE ${role}_${seen.length} NOLOGIN;
                              SET ROLE ${role}_${seen.length}`);
          return ['leaky'];
        },
        lock,
      ),
  };
  try {
    await migrateEach(schemaTargets(url, ['l_1', 'l_2']), leaky, { concurrency: 1, logger: null });
  } finally {
    await withClient(url, (client) => client.query(`DROP ROLE IF EXISTS ${role}_1; DROP ROLE IF EXISTS ${role}_2`));
  }
  expect(seen[1]!.pid).toBe(seen[0]!.pid);
  expect(seen[1]).toEqual(seen[0]);
  expect(seen[1]).toMatchObject({ temp: false });
});

test('progress events: started and finished for each target, with the counts', async () => {
  const url = await createTestDatabase();
  await prepareTenants(url);
  const events: FleetProgressEvent[] = [];
  await migrateEach(schemaTargets(url, ['p_1', 'p_2']), knexFleet(), {
    concurrency: 1,
    logger: null,
    onProgress: (event) => {
      events.push(event);
      throw new Error('a progress callback that throws does not fail the run');
    },
  });
  expect(events.map((e) => `${e.type} ${e.target.schema} done=${e.counts.done} running=${e.counts.running}`)).toEqual([
    'started p_1 done=0 running=1',
    'finished p_1 done=1 running=0',
    'started p_2 done=1 running=1',
    'finished p_2 done=2 running=0',
  ]);
  const last = events.at(-1)!;
  expect(last.type === 'finished' && last.result.status).toBe('applied');
  expect(last.counts).toEqual({
    total: 2,
    done: 2,
    running: 0,
    deferred: 0,
    applied: 2,
    upToDate: 0,
    skipped: 0,
    failed: 0,
    notRun: 0,
  });
});

test('signal: an aborted run starts no further target; the ones left are not-run', async () => {
  await prepareTenants(abortUrl);
  const controller = new AbortController();
  const report = await migrateEach(schemaTargets(abortUrl, ['a_1', 'a_2', 'a_3']), knexFleet(), {
    concurrency: 1,
    logger: null,
    signal: controller.signal,
    onProgress: (event) => {
      if (event.type === 'finished') controller.abort(new Error('deploy cancelled'));
    },
  });
  expect(report.results.map((r) => r.status)).toEqual(['applied', 'not-run', 'not-run']);
  expect(report.ok).toBe(false);
});

test('bad input is a TypeError (or RangeError) before any connection', async () => {
  // Nothing listens there: a connection attempt would fail with ECONNREFUSED, not a TypeError.
  const nowhere = 'postgres://user@127.0.0.1:1/db';
  const migrator = knexFleet();
  const bad: [string, () => Promise<unknown>, RegExp][] = [
    ['a single string', () => migrateEach(nowhere as never, migrator), /wrap a single connection string/],
    ['not iterable', () => migrateEach({} as never, migrator), /array or an \(async\) iterable/],
    ['an empty target', () => migrateEach([''], migrator), /targets\[0\]: .*empty string/],
    ['a URL that is not postgres', () => migrateEach(['http://x/y'], migrator), /targets\[0\]: .*PostgreSQL/],
    ['an empty schema', () => migrateEach([{ url: nowhere, schema: '' }], migrator), /targets\[0\]: .*schema/],
    ['a 64-byte schema', () => migrateEach([{ url: nowhere, schema: 'x'.repeat(64) }], migrator), /63 bytes/],
    ['a misspelt key', () => migrateEach([{ url: nowhere, schemaName: 's' } as never], migrator), /`schemaName`/],
    ['a pool', () => migrateEach([new pg.Pool()] as never, migrator), /not a pool or a client/],
    ['a second bad target', () => migrateEach([nowhere, 42] as never, migrator), /targets\[1\]/],
    ['no migrator', () => migrateEach([nowhere], {} as never), /migrator\.name/],
    ['a migrator without run', () => migrateEach([nowhere], { name: 'x', pending: async () => [] } as never), /run/],
    ['concurrency 0', () => migrateEach([nowhere], migrator, { concurrency: 0 }), /concurrency.*whole number/],
    ['concurrency 1.5', () => migrateEach([nowhere], migrator, { concurrency: 1.5 }), /concurrency/],
    ['keyOf not a function', () => migrateEach([nowhere], migrator, { keyOf: 1 as never }), /keyOf/],
    ['onProgress not a function', () => migrateEach([nowhere], migrator, { onProgress: 'x' as never }), /onProgress/],
    [
      'stopOnError not a boolean',
      () => migrateEach([nowhere], migrator, { stopOnError: 'yes' as never }),
      /stopOnError/,
    ],
    ['signal', () => migrateEach([nowhere], migrator, { signal: {} as never }), /AbortSignal/],
    [
      'an unknown option',
      () => migrateEach([nowhere], migrator, { concurency: 2 } as never),
      /concurency; did you mean concurrency\?/,
    ],
    ['wait in lock', () => migrateEach([nowhere], migrator, { lock: { wait: false } as never }), /`wait`/],
    ['a bad timeoutMs', () => migrateEach([nowhere], migrator, { lock: { timeoutMs: -1 } }), /timeoutMs/],
    ['a logger without methods', () => migrateEach([nowhere], migrator, { logger: {} as never }), /logger/],
  ];
  for (const [what, call, message] of bad) {
    await expect(call(), what).rejects.toThrow(message);
    await call().catch((err) => expect(err, what).toBeInstanceOf(TypeError));
  }
  await expect(migrateEach([nowhere], migrator, { keyOf: () => 2n ** 64n })).rejects.toThrow(RangeError);
  // The factories check their config up front too.
  expect(() => fleet({ client: 'mysql2' })).toThrow(TypeError);
  expect(() => fleet(null as never)).toThrow(TypeError);
  expect(() => fleetKey('knex', '')).toThrow(TypeError);
});
