// The fleetscale section of `npm run bench`: fleets of thousands of tenant schemas on one database.
// - Checks: every migrator, its fleet run (an OS process, end to end) on N up-to-date schemas, N = 200, 2,000,
//   10,000 of one database of 10,000 (batched checks: the per-schema cost must stay flat), beside one
//   single-database run; RSS and connections (pg_stat_activity) watched.
// - Migrating: knex, 10,000 schemas with one new migration at concurrency C, beside a hand-written loop (knex per
//   schema, no lock); two fleet runs at once on 10,000 (each schema migrated once); a failing canary's stop time.
// The schemas are cloned from one the migrator made (its tables and rows), 200 schemas a statement.
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { fmtMs, fmtS, within } from './lib.mjs';
import { MIGRATORS, migrationSet } from './migrators.mjs';

const RUN = fileURLToPath(new URL('fleet-scale-run.mjs', import.meta.url));
const slug = (name) => name.replaceAll(/[^a-z0-9]+/g, '_');

async function withClient(url, fn) {
  const client = new pg.Client(url);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/**
 * `count` schemas `<prefix>_00000…`, each a copy of the migrator's tables in `template` (and their rows; not the
 * tables its migrations made, which no check reads), in statements of 200 schemas.
 */
async function cloneSchemas(url, template, prefix, count) {
  await withClient(url, async (client) => {
    for (let from = 0; from < count; from += 200) {
      const to = Math.min(count, from + 200) - 1;
      await client.query(`DO $$
        DECLARE s text; t record;
        BEGIN
          FOR i IN ${from}..${to} LOOP
            s := '${prefix}_' || lpad(i::text, 5, '0');
            EXECUTE format('CREATE SCHEMA %I', s);
            FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = '${template}' AND tablename NOT LIKE 'bench_%' LOOP
              EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING ALL)', s, t.tablename, '${template}', t.tablename);
              EXECUTE format('INSERT INTO %I.%I OVERRIDING SYSTEM VALUE SELECT * FROM %I.%I', s, t.tablename, '${template}', t.tablename);
            END LOOP;
          END LOOP;
        END $$`);
    }
  });
  return Array.from({ length: count }, (_, i) => `${prefix}_${String(i).padStart(5, '0')}`);
}

/**
 * Runs fleet-scale-run.mjs once; resolves to its RESULT, the wall time from spawn to exit, and the most
 * connections to `url`'s database it saw (pg_stat_activity, the watcher's own excluded).
 */
async function runOnce(ctx, url, args, label) {
  const file = join(ctx.tmp, `targets-${Math.random().toString(36).slice(2)}.json`);
  await writeFile(file, JSON.stringify(args.targets));
  const watcher = new pg.Client(url);
  await watcher.connect();
  let most = 0;
  let watching = true;
  const watch = (async () => {
    while (watching) {
      const { rows } = await watcher.query(
        'SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()',
      );
      most = Math.max(most, rows[0].n);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })();
  const startedAt = performance.now();
  const runs = (args.copies ?? 1) > 1 ? args.copies : 1;
  try {
    const results = await within(
      900_000,
      Promise.all(
        Array.from({ length: runs }, () => {
          const child = spawn(
            process.execPath,
            [RUN, args.migrator, args.dir, file, String(args.concurrency), String(args.canary ?? '')],
            { stdio: ['ignore', 'pipe', 'pipe'] },
          );
          let stderr = '';
          child.stderr.on('data', (chunk) => (stderr = (stderr + chunk).slice(-4000)));
          const result = new Promise((resolve) =>
            createInterface({ input: child.stdout }).on(
              'line',
              (line) => line.startsWith('RESULT ') && resolve(JSON.parse(line.slice(7))),
            ),
          );
          return new Promise((resolve, reject) =>
            child.on('close', async (code) =>
              code === 0
                ? resolve({ ...(await result), wallMs: performance.now() - startedAt })
                : reject(new Error(`${label}: exit ${code}: ${stderr}`)),
            ),
          );
        }),
      ),
      label,
    );
    return { results, wallMs: performance.now() - startedAt, connections: most };
  } finally {
    watching = false;
    await watch.catch(() => {});
    await watcher.end();
  }
}

/** Checks: a database of `max(sizes)` up-to-date schemas; fleet runs on the first N of them, and one single-database run. */
async function checks(ctx, migrator, { sizes, checkConcurrency }) {
  const dir = join(ctx.tmp, migrator, 'scale-v1');
  await MIGRATORS[migrator].write(dir, migrationSet(2));
  const url = await ctx.database(`bench_scale_${slug(migrator)}`);
  // The template schema, and a database target: both migrated by the migrator itself.
  const single = await runOnce(
    ctx,
    url,
    { migrator, dir, targets: [url, { url, schema: 'tmpl' }], concurrency: 1 },
    'template',
  );
  if (single.results[0].counts.failed > 0) throw new Error(`${migrator}: the template failed`);
  const largest = Math.max(...sizes);
  ctx.log(`fleetscale: ${migrator}: cloning ${largest} schemas`);
  const cloneStart = performance.now();
  const schemas = await cloneSchemas(url, 'tmpl', 's', largest);
  const cloneMs = performance.now() - cloneStart;
  const one = await runOnce(ctx, url, { migrator, dir, targets: [url], concurrency: 1 }, 'single database');
  const rows = [];
  for (const n of sizes) {
    ctx.log(`fleetscale: ${migrator}: checking ${n} up-to-date schemas`);
    const targets = schemas.slice(0, n).map((schema) => ({ url, schema }));
    const run = await runOnce(ctx, url, { migrator, dir, targets, concurrency: checkConcurrency }, `check ${n}`);
    const [r] = run.results;
    if (r.counts.upToDate !== n) ctx.problem(`fleetscale: ${migrator}: ${n} schemas: ${JSON.stringify(r.counts)}`);
    ctx.log(
      `fleetscale: ${migrator}: ${n} schemas: ${(r.wallMs / 1000).toFixed(2)} s end to end (run ${(r.runMs / 1000).toFixed(2)} s), ${Math.round(r.rssMaxMiB)} MiB, ${run.connections} connections; single database ${(one.results[0].wallMs / 1000).toFixed(2)} s`,
    );
    rows.push({
      n,
      wallMs: r.wallMs,
      runMs: r.runMs,
      perSchemaMs: (r.wallMs - one.results[0].wallMs) / n,
      rssMiB: r.rssMaxMiB,
      connections: run.connections,
    });
  }
  await ctx.drop(url);
  return { singleWallMs: one.results[0].wallMs, singleRunMs: one.results[0].runMs, cloneMs, rows };
}

/** knex: migrating `n` schemas with one new migration, the fleet and a hand-written loop; two runs at once; a canary. */
async function migrating(ctx, migrator, { migrateSchemas: n, migrateConcurrency: c }) {
  const v1 = join(ctx.tmp, migrator, 'scale-m1');
  const v2 = join(ctx.tmp, migrator, 'scale-m2');
  const bad = join(ctx.tmp, migrator, 'scale-m3');
  await MIGRATORS[migrator].write(v1, migrationSet(2));
  await MIGRATORS[migrator].write(v2, migrationSet(3));
  await MIGRATORS[migrator].write(bad, [...migrationSet(3), { name: 'bench_003_fails', sql: 'SELECT 1/0' }]);
  const url = await ctx.database(`bench_scale_migrate_${slug(migrator)}`);
  await runOnce(ctx, url, { migrator, dir: v1, targets: [{ url, schema: 'tmpl' }], concurrency: 1 }, 'template');
  ctx.log(`fleetscale: ${migrator}: cloning 3 × ${n} schemas`);
  const sets = [];
  for (const prefix of ['f', 'b', 'p']) sets.push(await cloneSchemas(url, 'tmpl', prefix, n));
  const [fleetSet, bareSet, pairSet] = sets.map((schemas) => schemas.map((schema) => ({ url, schema })));

  ctx.log(`fleetscale: ${migrator}: migrating ${n} schemas, one new migration, concurrency ${c}`);
  const fleetRun = await runOnce(ctx, url, { migrator, dir: v2, targets: fleetSet, concurrency: c }, 'fleet');
  ctx.log(`fleetscale: ${migrator}: the same with a hand-written loop`);
  const bareRun = await runOnce(ctx, url, { migrator: 'bare-knex', dir: v2, targets: bareSet, concurrency: c }, 'bare');
  ctx.log(`fleetscale: ${migrator}: two fleet runs at once on ${n} schemas`);
  const pair = await runOnce(ctx, url, { migrator, dir: v2, targets: pairSet, concurrency: c, copies: 2 }, 'pair');
  const appliedBy = new Map();
  for (const r of pair.results) for (const s of r.applied) appliedBy.set(s, (appliedBy.get(s) ?? 0) + 1);
  const twice = [...appliedBy.values()].filter((k) => k > 1).length;
  if (appliedBy.size !== n || twice > 0) {
    ctx.problem(`fleetscale: two runs at once: ${appliedBy.size} of ${n} schemas applied, ${twice} by both runs`);
  }
  for (const [name, run] of [
    ['fleet', fleetRun],
    ['bare', bareRun],
  ]) {
    const k = run.results[0].counts;
    if (k.applied !== n || k.failed > 0) ctx.problem(`fleetscale: ${name} run: ${JSON.stringify(k)}`);
  }
  ctx.log(`fleetscale: ${migrator}: a failing migration, --canary 1, on ${n} schemas`);
  const canary = await runOnce(
    ctx,
    url,
    { migrator, dir: bad, targets: fleetSet, concurrency: c, canary: 1 },
    'canary',
  );
  const ck = canary.results[0].counts;
  if (ck.failed !== 1 || ck.notRun !== n - 1) ctx.problem(`fleetscale: canary: ${JSON.stringify(ck)}`);
  await ctx.drop(url);
  return { fleetRun, bareRun, pair, canary };
}

export async function fleetScale(ctx) {
  const config = ctx.config.fleetScale;
  const rows = [];
  const data = { checks: {}, migrating: {} };
  const targets = [];
  for (const migrator of ctx.migrators) {
    const result = await checks(ctx, migrator, config);
    data.checks[migrator] = result;
    for (const r of result.rows) {
      rows.push([
        migrator,
        `check ${r.n} up to date`,
        fmtS(r.wallMs),
        `${fmtMs(r.perSchemaMs)} ms`,
        `${Math.round(r.rssMiB)} MiB`,
        `${r.connections} (c ${config.checkConcurrency})`,
        `single database ${fmtS(result.singleWallMs)}`,
      ]);
    }
    const largest = result.rows.at(-1);
    const flat = result.rows.filter((r) => r.n >= 1000).length > 0 ? result.rows.filter((r) => r.n >= 1000) : [largest];
    targets.push(
      {
        what: `fleetscale: ${migrator}: ${largest.n} up-to-date schemas checked, end to end`,
        target: '≤ 5 s',
        measured: fmtS(largest.wallMs),
        met: largest.wallMs <= 5000 ? 'met' : 'MISSED',
        ok: largest.wallMs <= 5000,
      },
      {
        // Below a thousand schemas the per-schema figure is the noise of two process starts divided by N.
        what: `fleetscale: ${migrator}: per schema beyond one single-database run (worst of ${flat.map((r) => r.n).join(', ')})`,
        target: '≤ 0.5 ms',
        measured: `${fmtMs(Math.max(...flat.map((r) => r.perSchemaMs)))} ms`,
        met: flat.every((r) => r.perSchemaMs <= 0.5) ? 'met' : 'MISSED',
        ok: flat.every((r) => r.perSchemaMs <= 0.5),
      },
      {
        what: `fleetscale: ${migrator}: RSS at ${largest.n}, connections`,
        target: `≤ 200 MiB, ≤ ${config.checkConcurrency + 1}`,
        measured: `${Math.round(largest.rssMiB)} MiB, ${Math.max(...result.rows.map((r) => r.connections))}`,
        met:
          largest.rssMiB <= 200 && result.rows.every((r) => r.connections <= config.checkConcurrency + 1)
            ? 'met'
            : 'MISSED',
        ok: largest.rssMiB <= 200,
      },
    );
  }
  // BENCH_FLEETSCALE_MIGRATE=0: the checks alone (migrating 10,000 schemas three times takes most of the section).
  const migrators = process.env.BENCH_FLEETSCALE_MIGRATE === '0' ? [] : config.migrateMigrators;
  for (const migrator of migrators.filter((m) => ctx.migrators.includes(m))) {
    const m = await migrating(ctx, migrator, config);
    data.migrating[migrator] = m;
    const n = config.migrateSchemas;
    const c = config.migrateConcurrency;
    const [fleetR] = m.fleetRun.results;
    const [bareR] = m.bareRun.results;
    rows.push(
      [
        migrator,
        `migrate ${n}, 1 new migration, c ${c}`,
        fmtS(fleetR.wallMs),
        `${fmtMs(fleetR.wallMs / n)} ms`,
        `${Math.round(fleetR.rssMaxMiB)} MiB`,
        `${m.fleetRun.connections}`,
        `bare loop ${fmtS(bareR.wallMs)} (${fmtMs(bareR.wallMs / n)} ms, ${Math.round(bareR.rssMaxMiB)} MiB)`,
      ],
      [
        migrator,
        `two runs at once on ${n}`,
        fmtS(m.pair.wallMs),
        `${fmtMs(m.pair.wallMs / n)} ms`,
        `${Math.round(Math.max(...m.pair.results.map((r) => r.rssMaxMiB)))} MiB`,
        `${m.pair.connections}`,
        m.pair.results.map((r) => `${r.counts.applied}/${r.counts.skipped}/${r.counts.upToDate}`).join(' + '),
      ],
      [
        migrator,
        `failing canary (1) on ${n}`,
        fmtS(m.canary.results[0].wallMs),
        '',
        `${Math.round(m.canary.results[0].rssMaxMiB)} MiB`,
        `${m.canary.connections}`,
        `${m.canary.results[0].counts.failed} failed, ${m.canary.results[0].counts.notRun} not run`,
      ],
    );
  }
  return {
    headers: ['migrator', 'run', 'wall (process, end to end)', 'per schema', 'RSS', 'connections', 'beside'],
    rows,
    notes: [
      `Checks: one database of ${Math.max(...config.sizes)} schemas, each a copy of the migrator's own tables (and rows) in a schema it migrated (2 migrations); a fleet run (an OS process: start, imports, migrateEach, exit) on the first N, all up to date, concurrency ${config.checkConcurrency}. "per schema" is (wall − one single-database run's wall) / N. Migrating: ${config.migrateSchemas} schemas with one new migration; the bare loop is knex per schema (searchPath, schemaName), ${config.migrateConcurrency} at a time, no lock; two runs: applied/skipped/up to date per run.`,
    ],
    targets,
    data,
  };
}
