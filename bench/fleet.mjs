// The fleet section of `npm run bench`: N tenant schemas on one server, two fleet runs (OS processes) started
// together with concurrency C each. Checked: every tenant migrated once, 0 failures. Measured: the pair's wall
// time against the fastest possible, Σ per-tenant migration time / (2 × C) (target ≤ 1.2), and against one run
// with concurrency 2 × C on a fleet of its own, side by side in the same bench run.
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { fmtMs, fmtS, msBetween, now, sleep, within } from './lib.mjs';
import { MIGRATORS } from './migrators.mjs';

const REPLICA = fileURLToPath(new URL('fleet-replica.mjs', import.meta.url));
const slug = (name) => name.replaceAll(/[^a-z0-9]+/g, '_');
const met = (ok) => (ok ? 'met' : 'MISSED');

/**
 * What each tenant migrates: its table, `sleepSeconds` of work (a backfill, an index build), a row a second
 * application would fail to insert (primary key), and an event in public.fleet_events that counts applications.
 */
function tenantSet(sleepSeconds) {
  return [
    { name: 'fleet_000_widgets', sql: 'CREATE TABLE fleet_widgets (id integer PRIMARY KEY, tenant text NOT NULL)' },
    { name: 'fleet_001_work', sql: `SELECT pg_sleep(${sleepSeconds})` },
    { name: 'fleet_002_first_widget', sql: 'INSERT INTO fleet_widgets (id, tenant) VALUES (1, current_schema())' },
    { name: 'fleet_003_event', sql: 'INSERT INTO public.fleet_events (tenant) VALUES (current_schema())' },
  ];
}

async function query(url, sql) {
  const client = new pg.Client(url);
  await client.connect();
  try {
    return (await client.query(sql)).rows;
  } finally {
    await client.end();
  }
}

/** A database of `n` tenant schemas (made by the fleet itself), and its targets file. */
async function tenants(ctx, name, n, prefix) {
  const url = await ctx.database(name);
  await query(url, 'CREATE TABLE public.fleet_events (tenant text NOT NULL, at timestamptz DEFAULT clock_timestamp())');
  const schemas = Array.from({ length: n }, (_, i) => `${prefix}_${String(i).padStart(3, '0')}`);
  const file = join(ctx.tmp, `${name}.json`);
  await writeFile(file, JSON.stringify(schemas.map((schema) => ({ url, schema }))));
  return { url, file, schemas };
}

/** Starts fleet replicas on one `go`; resolves to their RESULTs and the wall time from `go` to the last one's end. */
async function runTogether(ctx, runs) {
  const replicas = runs.map(({ migrator, dir, file, concurrency }) => {
    const child = spawn(process.execPath, [REPLICA, migrator, dir, file, String(concurrency)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk) => (stderr = (stderr + chunk).slice(-4000)));
    const lines = createInterface({ input: child.stdout });
    const ready = new Promise((resolve) => lines.on('line', (line) => line === 'ready' && resolve()));
    const result = new Promise((resolve) =>
      lines.on('line', (line) => line.startsWith('RESULT ') && resolve(JSON.parse(line.slice(7)))),
    );
    const closed = new Promise((resolve) => child.on('close', (code) => resolve({ code, stderr })));
    return { child, ready, result, closed };
  });
  try {
    await within(120_000, Promise.all(replicas.map((r) => r.ready)), 'fleet replicas starting');
    await sleep(ctx.config.settleMs);
    const go = now();
    for (const { child } of replicas) child.stdin.write('go\n');
    const exits = await within(600_000, Promise.all(replicas.map((r) => r.closed)), 'fleet runs');
    for (const exit of exits) if (exit.code !== 0) throw new Error(`a fleet run exited ${exit.code}: ${exit.stderr}`);
    const results = await Promise.all(replicas.map((r) => r.result));
    return { results, wallMs: Math.max(...results.map((r) => msBetween(go, r.end))) };
  } finally {
    for (const { child } of replicas) child.kill('SIGKILL');
  }
}

/** Problems with a fleet: a failed target, a tenant applied by no run or by two, an event count not 1. */
async function check(url, schemas, results) {
  const problems = [];
  const failed = results.flatMap((r) => r.results.filter((t) => t.status === 'failed'));
  if (failed.length) problems.push(`${failed.length} targets failed (${failed[0].error})`);
  const appliedBy = new Map(schemas.map((schema) => [schema, 0]));
  for (const run of results)
    for (const t of run.results) if (t.status === 'applied') appliedBy.set(t.schema, appliedBy.get(t.schema) + 1);
  const wrong = [...appliedBy].filter(([, n]) => n !== 1);
  if (wrong.length) problems.push(`${wrong.length} tenants applied by ${wrong[0][1]} runs (e.g. ${wrong[0][0]})`);
  const [events] = await query(
    url,
    'SELECT count(*)::int AS tenants, coalesce(max(n), 0)::int AS most FROM (SELECT tenant, count(*) AS n FROM public.fleet_events GROUP BY 1) t',
  );
  if (events.tenants !== schemas.length || events.most !== 1) {
    problems.push(
      `events: ${events.tenants} tenants, up to ${events.most} applications each (expected ${schemas.length}, 1)`,
    );
  }
  return problems;
}

export async function fleet(ctx) {
  const { fleetTenants: n, fleetConcurrency: c, fleetSleepSeconds, fleetSerialSample } = ctx.config;
  const rows = [];
  const data = [];
  const notes = [];
  for (const migrator of ctx.migrators) {
    const dir = join(ctx.tmp, migrator, 'fleet');
    await MIGRATORS[migrator].write(dir, tenantSet(fleetSleepSeconds));
    const pair = await tenants(ctx, `bench_fleet_${slug(migrator)}_pair`, n, 'p');
    const solo = await tenants(ctx, `bench_fleet_${slug(migrator)}_solo`, n, 's');
    const serial = await tenants(ctx, `bench_fleet_${slug(migrator)}_serial`, fleetSerialSample, 'q');

    ctx.log(`fleet: ${migrator}, ${n} tenant schemas, two runs of concurrency ${c} started together`);
    const together = await runTogether(
      ctx,
      [0, 1].map(() => ({ migrator, dir, file: pair.file, concurrency: c })),
    );
    ctx.log(`fleet: ${migrator}, ${n} tenant schemas, one run of concurrency ${2 * c}`);
    const one = await runTogether(ctx, [{ migrator, dir, file: solo.file, concurrency: 2 * c }]);
    ctx.log(`fleet: ${migrator}, ${fleetSerialSample} tenants one at a time (per-tenant time, uncontended)`);
    const alone = await runTogether(ctx, [{ migrator, dir, file: serial.file, concurrency: 1 }]);

    const problems = [
      ...(await check(pair.url, pair.schemas, together.results)),
      ...(await check(solo.url, solo.schemas, one.results)).map((p) => `one run: ${p}`),
    ];
    for (const p of problems) ctx.problem(`fleet: ${migrator}: ${p}`);
    for (const db of [pair, solo, serial]) await ctx.drop(db.url);

    // Σ of the time each migrated tenant took, in the runs that migrated it: the work the pair shared.
    const applied = together.results.flatMap((r) => r.results.filter((t) => t.status === 'applied'));
    const sumMs = applied.reduce((sum, t) => sum + t.durationMs, 0);
    const idealMs = sumMs / (2 * c);
    const ratio = together.wallMs / idealMs;
    const perTenantMs = alone.results[0].results.reduce((sum, t) => sum + t.durationMs, 0) / fleetSerialSample;
    const versusOne = together.wallMs / one.wallMs;
    // The single run's own ratio: what scheduling alone costs on this machine, without a second run.
    const oneSumMs = one.results[0].results.reduce((sum, t) => sum + t.durationMs, 0);
    const oneRatio = one.wallMs / (oneSumMs / (2 * c));
    // Where each run of the pair spent its slots: Σ durationMs by status.
    const spent = together.results.map(({ results }) =>
      Object.fromEntries(
        ['applied', 'skipped', 'up-to-date'].map((status) => [
          status,
          Math.round(results.filter((t) => t.status === status).reduce((sum, t) => sum + t.durationMs, 0)),
        ]),
      ),
    );
    const counts = together.results.map(({ counts: k }) => `${k.applied}/${k.skipped}/${k.upToDate}`).join(' + ');
    rows.push([
      migrator,
      `${n} × ${fleetSleepSeconds} s`,
      fmtS(together.wallMs),
      `${fmtS(sumMs)} / ${2 * c} = ${fmtS(idealMs)}`,
      ratio.toFixed(2),
      met(ratio <= 1.2 && problems.length === 0),
      `${fmtS(one.wallMs)} (${versusOne.toFixed(2)}; its ratio ${oneRatio.toFixed(2)})`,
      `${fmtMs(perTenantMs)} ms → ${fmtS((n * perTenantMs) / (2 * c))}`,
      counts,
    ]);
    data.push({
      migrator,
      tenants: n,
      concurrency: c,
      sleepSeconds: fleetSleepSeconds,
      pairWallMs: together.wallMs,
      sumAppliedMs: sumMs,
      idealMs,
      ratio,
      oneRunWallMs: one.wallMs,
      oneRunRatio: oneRatio,
      pairVersusOneRun: versusOne,
      spentMsByStatus: spent,
      serialPerTenantMs: perTenantMs,
      counts: together.results.map((r) => r.counts),
      problems,
    });
  }
  notes.push(
    `Each tenant is a schema of one database, made by the fleet; it migrates 4 migrations, one of them \`pg_sleep(${fleetSleepSeconds})\`. Two fleet runs (OS processes) of concurrency ${c} start on one signal; the fastest possible is Σ of the migrated tenants' times (as each run measured them) / ${2 * c} slots. "one run of ${2 * c}" is a single run with twice the concurrency on a fleet of its own: its wall, the pair's wall / its wall, and its own wall / (Σ per-tenant time / ${2 * c}) (what scheduling costs without a second run). "alone" is the mean per-tenant time of ${fleetSerialSample} tenants migrated one at a time, and what ${n} of them would take on ${2 * c} slots with no contention at all. Counts per run: applied / skipped (the other run held it) / up to date.`,
  );
  const worst = Math.max(...data.map((d) => d.ratio));
  return {
    headers: [
      'migrator',
      'tenants × work',
      'pair wall',
      'Σ per tenant / slots',
      'ratio',
      'target ≤ 1.2',
      `one run of ${2 * c} (pair / one; its own ratio)`,
      'alone → ideal',
      'applied/skipped/up to date',
    ],
    rows,
    notes,
    targets: [
      {
        what: `fleet: two runs of concurrency ${c} on ${n} tenants, wall / (Σ per-tenant time / ${2 * c})`,
        target: '≤ 1.2',
        measured: `${Math.min(...data.map((d) => d.ratio)).toFixed(2)}–${worst.toFixed(2)}`,
        met: `${data.filter((d) => d.ratio <= 1.2).length} of ${data.length}`,
        ok: data.every((d) => d.ratio <= 1.2),
      },
      {
        what: 'fleet: tenants migrated once, 0 failures',
        target: 'all',
        measured: `${data.filter((d) => d.problems.length === 0).length} of ${data.length} migrators`,
        met: `${data.filter((d) => d.problems.length === 0).length} of ${data.length}`,
        ok: data.every((d) => d.problems.length === 0),
      },
    ],
    data,
  };
}
