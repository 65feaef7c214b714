// The sections of `npm run bench`. Each one measures, then returns
//   { rows, headers, notes, targets: [{ what, target, measured, met }], data }
// for run.mjs to print (Markdown) and to write to the JSON file.
import pg from 'pg';
import { withMigrationLock } from 'pg-migration-lock';
import { bare } from './bare.mjs';
import { chaos } from './chaos.mjs';
import { fleet } from './fleet.mjs';
import { fleetScale } from './fleet-scale.mjs';
import { BENCH_KEY, fmtMs, fmtS, median, msBetween, now, percentile, sleep, startReplica, within } from './lib.mjs';
import { lockTimeout } from './lock-timeout.mjs';
import { MIGRATORS } from './migrators.mjs';

const slug = (name) => name.replaceAll(/[^a-z0-9]+/g, '_');
const met = (ok) => (ok ? 'met' : 'MISSED');

/** `url` with `application_name` set, so pg_stat_activity tells whose connection a backend is. */
function withAppName(url, name) {
  const next = new URL(url);
  next.searchParams.set('application_name', name);
  return next.toString();
}

/** A fresh database with the migrator's steady set applied (in this process, bare). */
async function migratedDatabase(ctx, migrator, name) {
  const url = await ctx.database(name);
  const { modes, close } = await MIGRATORS[migrator].open(url, ctx.sets[migrator].steady);
  try {
    await modes.bare();
  } finally {
    await close();
  }
  return url;
}

/** How many migrations the migrator recorded, and how many distinct ones. */
async function applied(url, migrator) {
  const { table } = MIGRATORS[migrator];
  const column = migrator === 'drizzle' ? 'hash' : 'name';
  return query(url, `SELECT count(*)::int AS total, count(DISTINCT ${column})::int AS distinct FROM ${table}`);
}

async function query(url, sql) {
  const client = new pg.Client(url);
  await client.connect();
  try {
    return (await client.query(sql)).rows[0];
  } finally {
    await client.end();
  }
}

/**
 * N replica processes of `migrator` in `mode`, all started on one `go`. Wall time is from `go` until
 * the parent has seen the last one exit. With `monitor`, pg_stat_activity is sampled every ~5 ms during
 * the run for the most connections each replica had open at once.
 */
async function race(ctx, { migrator, mode, n, url, dir, monitor = false, fromSpawn = false }) {
  // From spawn: start-up (Node, the migrator, the adapter) is timed too, as a deploy sees it.
  const spawnedAt = now();
  const replicas = Array.from({ length: n }, (_, i) =>
    startReplica([fromSpawn ? 'migrate-now' : 'migrate', migrator, mode, withAppName(url, `bench-r${i}`), dir]),
  );
  try {
    if (!fromSpawn) {
      await within(180_000, Promise.all(replicas.map((r) => r.next('ready'))), `${n} ${migrator} replicas starting`);
      await sleep(ctx.config.settleMs); // let the start-ups' last garbage collections settle
    }
    const sampler = monitor && !fromSpawn ? await connectionSampler(url, replicas) : undefined;
    const go = fromSpawn ? spawnedAt : now();
    if (!fromSpawn) for (const replica of replicas) replica.send('go');
    const exits = await within(300_000, Promise.all(replicas.map((r) => r.closed)), `${migrator} ${mode} race`);
    const connections = await sampler?.stop();
    const results = await Promise.all(replicas.map((r) => r.next('RESULT').catch(() => null)));
    const errors = {};
    exits.forEach((exit, i) => {
      if (exit.code === 0) return;
      const error = results[i]?.error ?? exit.stderr.trim().split('\n').at(-1) ?? `exit ${exit.code}`;
      errors[error] = (errors[error] ?? 0) + 1;
    });
    return {
      wallMs: Math.max(...exits.map((exit) => msBetween(go, exit.at))),
      failed: exits.filter((exit) => exit.code !== 0).length,
      errors,
      connections,
    };
  } finally {
    for (const replica of replicas) replica.kill();
  }
}

/** Samples pg_stat_activity until stopped: the most backends each replica had at once. */
async function connectionSampler(url, replicas) {
  const byPid = new Map(replicas.map((r, i) => [String(r.pid), i]));
  const client = new pg.Client(withAppName(url, 'bench-monitor'));
  await client.connect();
  const most = new Array(replicas.length).fill(0);
  let unknown = 0;
  let samples = 0;
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const { rows } = await client.query(
        `SELECT application_name AS name, count(*)::int AS n FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1`,
      );
      samples++;
      for (const { name, n } of rows) {
        // Ours carry `bench-r<i>`; a connection the library opens itself is named `…:<pid>`.
        const i = /^bench-r(\d+)$/.exec(name)?.[1] ?? byPid.get(/:(\d+)$/.exec(name)?.[1]);
        if (i === undefined) unknown = Math.max(unknown, n);
        else most[i] = Math.max(most[i], n);
      }
      await sleep(5);
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      await client.end();
      return { maxPerReplica: Math.max(...most), perReplica: most, unattributed: unknown, samples };
    },
  };
}

const describeErrors = (errors) =>
  Object.entries(errors)
    .map(([error, count]) => `${count}× ${error.length > 100 ? `${error.slice(0, 99)}…` : error}`)
    .join('; ');

// ───────────────────────── steady state ─────────────────────────

export async function steadyState(ctx) {
  const rows = [];
  const ratios = [];
  const data = [];
  const notes = [];
  for (const migrator of ctx.migrators) {
    const url = await migratedDatabase(ctx, migrator, `bench_steady_${slug(migrator)}`);
    const { baseline } = MIGRATORS[migrator];
    const modes = Object.keys((await openOnly(migrator, url, ctx.sets[migrator].steady)).modes);
    for (const n of ctx.config.replicas) {
      const runs = Object.fromEntries(modes.map((mode) => [mode, []]));
      for (let rep = 0; rep < ctx.config.repeats; rep++) {
        // Alternate the order, so a drift in the machine's load does not favour one mode.
        for (const mode of rep % 2 ? [...modes].reverse() : modes) {
          ctx.log(`steady state: ${migrator}, ${n} replicas, ${mode} (${rep + 1}/${ctx.config.repeats})`);
          runs[mode].push(await race(ctx, { migrator, mode, n, url, dir: ctx.sets[migrator].steady }));
        }
      }
      const wall = Object.fromEntries(modes.map((mode) => [mode, median(runs[mode].map((r) => r.wallMs))]));
      ctx.noopWall[`${migrator}/${n}`] = wall[baseline];
      for (const mode of modes) {
        const failed = runs[mode].map((r) => r.failed);
        const ratio = mode === 'wrapped' ? wall.wrapped / wall[baseline] : undefined;
        if (ratio !== undefined) ratios.push({ migrator, n, ratio });
        if (mode === 'wrapped' && failed.some(Boolean)) {
          ctx.problem(`steady state: wrapped ${migrator} replicas failed: ${describeErrors(mergeErrors(runs[mode]))}`);
        }
        const errors = mergeErrors(runs[mode]);
        if (Object.keys(errors).length) {
          notes.push(`${migrator} ${mode}, N=${n}, in ${runs[mode].length} runs: ${describeErrors(errors)}`);
        }
        rows.push([
          migrator,
          n,
          mode,
          fmtS(wall[mode]),
          `${failed.join(' / ')} of ${n}`,
          ratio === undefined ? '' : `${ratio.toFixed(2)} (vs ${baseline})`,
          ratio === undefined ? '' : met(ratio <= 1.1),
        ]);
        data.push({
          migrator,
          replicas: n,
          mode,
          wallMs: wall[mode],
          walls: runs[mode].map((r) => r.wallMs),
          failed,
          errors,
          ratio,
        });
      }
    }
    const count = await applied(url, migrator);
    if (count.total !== ctx.config.migrations || count.distinct !== count.total) {
      ctx.problem(
        `steady state: ${migrator} recorded ${count.total} migrations (${count.distinct} distinct), expected ${ctx.config.migrations}`,
      );
    }
    await ctx.drop(url);
  }
  const worst = ratios.reduce((a, b) => (b.ratio > a.ratio ? b : a), ratios[0]);
  return {
    headers: ['migrator', 'N', 'mode', 'wall (median)', 'replicas failed (per run)', 'wrapped / bare', 'target ≤ 1.1'],
    rows,
    notes,
    targets: [
      {
        what: 'steady state: wall, wrapped / bare',
        target: '≤ 1.1',
        measured: `${Math.min(...ratios.map((r) => r.ratio)).toFixed(2)}–${worst.ratio.toFixed(2)} (worst: ${worst.migrator}, N=${worst.n})`,
        met: `${ratios.filter((r) => r.ratio <= 1.1).length} of ${ratios.length}`,
        ok: ratios.every((r) => r.ratio <= 1.1),
      },
    ],
    data,
  };
}

async function openOnly(migrator, url, dir) {
  const opened = await MIGRATORS[migrator].open(url, dir);
  await opened.close();
  return opened;
}

function mergeErrors(runs) {
  const merged = {};
  for (const run of runs)
    for (const [error, count] of Object.entries(run.errors)) merged[error] = (merged[error] ?? 0) + count;
  return merged;
}

// ───────────────────────── convergence ─────────────────────────

export async function convergence(ctx) {
  const rows = [];
  const data = [];
  const notes = [];
  const slowMs = ctx.config.slowSeconds * 1000;
  for (const migrator of ctx.migrators) {
    const { baseline } = MIGRATORS[migrator];
    for (const n of ctx.config.replicas) {
      const url = await migratedDatabase(ctx, migrator, `bench_converge_${slug(migrator)}_${n}`);
      const dir = ctx.sets[migrator].converge;
      ctx.log(`convergence: ${migrator}, ${n} replicas, wrapped, one ${ctx.config.slowSeconds} s migration pending`);
      const run = await race(ctx, { migrator, mode: 'wrapped', n, url, dir, monitor: true });
      const count = await applied(url, migrator);
      if (count.total !== ctx.config.migrations + 1 || count.distinct !== count.total) {
        ctx.problem(
          `convergence: ${migrator} N=${n} recorded ${count.total} migrations (${count.distinct} distinct), expected ${ctx.config.migrations + 1}`,
        );
      }
      let noop = ctx.noopWall[`${migrator}/${n}`];
      if (noop === undefined) {
        // The steady-state section did not run: measure the bare no-op here, on the now up-to-date database.
        ctx.log(`convergence: ${migrator}, ${n} replicas, ${baseline} no-op (baseline)`);
        noop = (await race(ctx, { migrator, mode: baseline, n, url, dir })).wallMs;
      }
      await ctx.drop(url);
      // The same from spawn to the last exit (start-up included, as a deploy sees it), beside the bare no-op
      // timed the same way: a restart with the pending migrations must end within 1 s of an idle restart.
      // (A smoke run times it for the first migrator only: CI runs the smoke, and each race spawns its replicas.)
      let spawned = { wallMs: 0, failed: 0, errors: {} };
      let idle = { wallMs: 0 };
      if (!ctx.config.smoke || migrator === ctx.migrators[0]) {
        const spawnUrl = await migratedDatabase(ctx, migrator, `bench_converge_spawn_${slug(migrator)}_${n}`);
        ctx.log(`convergence: ${migrator}, ${n} replicas from spawn, wrapped, then ${baseline} no-op`);
        spawned = await race(ctx, { migrator, mode: 'wrapped', n, url: spawnUrl, dir, fromSpawn: true });
        idle = await race(ctx, { migrator, mode: baseline, n, url: spawnUrl, dir, fromSpawn: true });
        await ctx.drop(spawnUrl);
      }
      const bound = noop + slowMs + 300;
      if (run.failed) notes.push(`${migrator} N=${n}: ${describeErrors(run.errors)}`);
      if (run.connections.unattributed)
        notes.push(
          `${migrator} N=${n}: up to ${run.connections.unattributed} connections could not be attributed to a replica`,
        );
      const ok = run.wallMs <= bound && run.failed === 0 && run.connections.maxPerReplica <= 1;
      const overIdle = spawned.wallMs - idle.wallMs;
      if (spawned.failed) notes.push(`${migrator} N=${n} from spawn: ${describeErrors(spawned.errors)}`);
      rows.push([
        migrator,
        n,
        fmtS(run.wallMs),
        `${fmtS(noop)} + ${fmtS(slowMs)} + 0.30 s = ${fmtS(bound)}`,
        `${run.failed} of ${n}`,
        run.connections.maxPerReplica,
        met(ok),
        `${fmtS(spawned.wallMs)} vs ${fmtS(idle.wallMs)}: ${fmtSigned(overIdle)} s`,
        met(overIdle <= 1000 && spawned.failed === 0),
      ]);
      data.push({
        migrator,
        replicas: n,
        wallMs: run.wallMs,
        boundMs: bound,
        noopWallMs: noop,
        failed: run.failed,
        errors: run.errors,
        connections: run.connections,
        ok,
        fromSpawn: { wallMs: spawned.wallMs, idleWallMs: idle.wallMs, overIdleMs: overIdle, failed: spawned.failed },
      });
    }
  }
  const over = data.map((d) => d.wallMs - d.boundMs);
  return {
    headers: [
      'migrator',
      'N',
      'wrapped wall',
      'target: bare no-op + slow + 0.3 s',
      'failed (target 0)',
      'max conns / replica (target ≤ 1)',
      'all three',
      'from spawn: wrapped vs idle restart',
      'target ≤ +1 s',
    ],
    rows,
    notes: [
      ...notes,
      `Connections are sampled from pg_stat_activity every ~5 ms while the replicas run (a connection open for less than that can be missed).`,
    ],
    targets: [
      {
        what: 'convergence: wall − (bare no-op + slow + 0.3 s)',
        target: '≤ 0',
        measured: `${fmtSigned(Math.min(...over))} to ${fmtSigned(Math.max(...over))} s`,
        met: `${over.filter((o) => o <= 0).length} of ${over.length}`,
        ok: over.every((o) => o <= 0),
      },
      {
        what: 'convergence from spawn: wrapped − idle restart',
        target: '≤ +1 s',
        measured: data.map((d) => `${d.migrator} ${fmtSigned(d.fromSpawn.overIdleMs)} s`).join(', '),
        met: `${data.filter((d) => d.fromSpawn.overIdleMs <= 1000).length} of ${data.length}`,
        ok: data.every((d) => d.fromSpawn.overIdleMs <= 1000),
      },
      {
        what: 'convergence: replicas failed',
        target: '0',
        measured: String(data.reduce((sum, d) => sum + d.failed, 0)),
        met: `${data.filter((d) => d.failed === 0).length} of ${data.length}`,
        ok: data.every((d) => d.failed === 0),
      },
      {
        what: 'convergence: connections per replica',
        target: '≤ 1',
        measured: `max ${Math.max(...data.map((d) => d.connections.maxPerReplica))}`,
        met: `${data.filter((d) => d.connections.maxPerReplica <= 1).length} of ${data.length}`,
        ok: data.every((d) => d.connections.maxPerReplica <= 1),
      },
    ],
    data,
  };
}

const fmtSigned = (ms) => `${ms > 0 ? '+' : ''}${(ms / 1000).toFixed(2)}`;

// ───────────────────────── hand-off ─────────────────────────

const HOLD_MS = 5;

/** Holds the lock in this process, like the migrating replica; `release()` lets go and resolves after. */
async function holdLock(url, strategy) {
  if (strategy === 'library') {
    let release;
    const released = new Promise((resolve) => (release = resolve));
    let held;
    const holding = new Promise((resolve) => (held = resolve));
    const call = withMigrationLock(
      url,
      BENCH_KEY,
      () => {
        held();
        return released;
      },
      { logger: null },
    );
    await Promise.race([holding, call]);
    return {
      release: async () => {
        const at = now();
        release();
        await call;
        return at;
      },
    };
  }
  const client = new pg.Client(url);
  await client.connect();
  await client.query(`SELECT pg_advisory_lock(${BENCH_KEY})`);
  return {
    release: async () => {
      const at = now();
      await client.query(`SELECT pg_advisory_unlock(${BENCH_KEY})`);
      await client.end();
      return at;
    },
  };
}

/** The gaps between one replica's fn ending and the next one's starting, counting only waiters already waiting. */
function handOffGaps(results, label) {
  const sections = results
    .map((r) => ({ waitStart: BigInt(r.waitStart), start: BigInt(r.start), end: BigInt(r.end) }))
    .sort((a, b) => (a.start < b.start ? -1 : 1));
  const gaps = [];
  for (let i = 1; i < sections.length; i++) {
    const [prev, next] = [sections[i - 1], sections[i]];
    if (next.start < prev.end) throw new Error(`${label}: two critical sections overlapped`);
    if (next.waitStart < prev.end) gaps.push(Number(next.start - prev.end) / 1e6);
  }
  return gaps;
}

/** The hand-off target: a median of 2 ms with up to 8 waiters, 4 ms with more (64 in the full run). */
const handOffTarget = (waiters) => (waiters <= 8 ? 2 : 4);

export async function handOff(ctx) {
  const url = await ctx.database('bench_handoff');
  const rows = [];
  const data = [];
  const targets = [];
  for (const waiters of ctx.config.handoffWaiters) {
    const workers = Array.from({ length: waiters }, (_, i) => startReplica(['lock', withAppName(url, `bench-h${i}`)]));
    try {
      await within(180_000, Promise.all(workers.map((w) => w.next('ready'))), `${waiters} hand-off workers starting`);
      for (const strategy of ctx.config.strategies) {
        const interval = strategy.startsWith('poll:') ? Number(strategy.slice(5)) : 0;
        // About 60 hand-offs per strategy, fewer for the slow pollers (a 5 s poller's round takes ~interval × ln N).
        const rounds = Math.max(
          1,
          Math.min(ctx.config.handoffRounds, Math.ceil((interval >= 1000 ? 8 : 60) / (waiters - 1))),
        );
        const gaps = [];
        for (let round = 0; round < rounds; round++) {
          ctx.log(`hand-off: ${waiters} waiters, ${strategy}, round ${round + 1}/${rounds}`);
          const holder = await holdLock(
            url,
            strategy === 'library' || strategy === 'postgres-js' ? 'library' : 'plain',
          );
          for (const worker of workers) worker.send(`${strategy} ${HOLD_MS}`);
          await within(60_000, Promise.all(workers.map((w) => w.next('waiting'))), 'hand-off workers connecting');
          await sleep(500); // every replica is inside its wait now
          await holder.release();
          const results = await within(
            Math.max(120_000, interval * 10 + 60_000),
            Promise.all(workers.map((w) => w.next('RESULT'))),
            `hand-off ${strategy}`,
          );
          gaps.push(...handOffGaps(results, strategy));
        }
        const label = strategyLabel(strategy);
        const mid = median(gaps);
        const p99 = percentile(gaps, 99);
        rows.push([
          waiters,
          label,
          gaps.length,
          fmtMs(mid),
          fmtMs(p99),
          fmtMs(Math.max(...gaps)),
          strategy === 'library' ? met(mid <= handOffTarget(waiters)) : '',
        ]);
        data.push({
          waiters,
          strategy,
          handOffs: gaps.length,
          medianMs: mid,
          p99Ms: p99,
          maxMs: Math.max(...gaps),
          gapsMs: gaps,
        });
        if (strategy === 'library') {
          targets.push({
            what: `hand-off, ${waiters} waiters: median`,
            target: `≤ ${handOffTarget(waiters)} ms`,
            measured: `${fmtMs(mid)} ms (p99 ${fmtMs(p99)} ms)`,
            met: met(mid <= handOffTarget(waiters)),
            ok: mid <= handOffTarget(waiters),
          });
        }
      }
      for (const worker of workers) worker.send('exit');
      await within(30_000, Promise.all(workers.map((w) => w.closed)), 'hand-off workers exiting');
    } finally {
      for (const worker of workers) worker.kill();
    }
  }
  await ctx.drop(url);
  return {
    headers: [
      'waiters',
      'waiting strategy',
      'hand-offs',
      'median ms',
      'p99 ms',
      'max ms',
      'target median (≤ 2 ms; 4 ms past 8 waiters)',
    ],
    rows,
    notes: [
      `Each waiter is its own process and connection; each holds the lock ${HOLD_MS} ms. A hand-off is from one fn's end to the next one's start, counted only when the next was already waiting.`,
    ],
    targets,
    data,
  };
}

function strategyLabel(strategy) {
  if (strategy === 'library') return 'pg-migration-lock';
  if (strategy === 'postgres-js') return 'pg-migration-lock, waiting through postgres.js';
  if (strategy === 'blocking') return 'blocking pg_advisory_lock (unsafe with CIC)';
  const ms = Number(strategy.slice(5));
  const who = { 100: '', 1000: ' (Flyway, MSR retryDelay)', 5000: '' }[ms] ?? '';
  return `try-lock polling every ${ms >= 1000 ? `${ms / 1000} s` : `${ms} ms`}${who}`;
}

// ───────────────────────── server load, N sessions waiting ─────────────────────────

export async function serverLoad(ctx) {
  const url = await ctx.database('bench_load');
  const room = await query(
    url,
    `SELECT current_setting('max_connections')::int - (SELECT count(*) FROM pg_stat_activity)::int AS free`,
  );
  // Leave room for the bench's own connections and for whoever else uses the server.
  const total = Math.min(ctx.config.loadWaiters, room.free - 20);
  const processes = ctx.config.loadProcesses;
  const notes = [
    `${total} waiting sessions, ${processes} processes of ${Math.ceil(total / processes)} connections each (not ${total} processes: 2 cores).`,
    "Statements/s: the database's xact_commit + xact_rollback (pg_stat_database, every statement here is its own transaction) over the window, minus the bench's own; backends flush these counters at most once a second, so a window of several seconds is used.",
  ];
  if (total < ctx.config.loadWaiters)
    notes.push(`Only ${total} of ${ctx.config.loadWaiters} waiters: the server's max_connections leaves no more room.`);
  const rows = [];
  const data = [];
  const targets = [];
  for (const strategy of ['library', 'blocking']) {
    const holder = await holdLock(url, strategy === 'library' ? 'library' : 'plain');
    const sizes = Array.from(
      { length: processes },
      (_, i) => Math.floor(total / processes) + (i < total % processes ? 1 : 0),
    );
    const workers = sizes.map((size) => startReplica(['waiters', withAppName(url, 'bench-w'), String(size), strategy]));
    try {
      ctx.log(`server load: ${total} ${strategy} waiters`);
      await within(60_000, Promise.all(workers.map((w) => w.next('ready'))), 'waiter processes starting');
      for (const worker of workers) worker.send('go');
      await within(60_000, waitForConnections(url, 'bench-w', total), `${total} waiters connecting`);
      await sleep(ctx.config.loadSettleMs); // past the first try and the registration
      const counter = `SELECT (xact_commit + xact_rollback)::bigint AS n FROM pg_stat_database WHERE datname = current_database()`;
      const client = new pg.Client(url);
      await client.connect();
      const before = (await client.query(counter)).rows[0].n;
      const t0 = performance.now();
      await sleep(ctx.config.loadWindowMs);
      const after = (await client.query(counter)).rows[0].n;
      const seconds = (performance.now() - t0) / 1000;
      await client.end();
      // Our own: the second counter query (the first committed before `before` was read… or not yet
      // flushed; count both to stay on the safe side of the target).
      const statements = Math.max(0, Number(after) - Number(before) - 2);
      const perSecond = statements / seconds;
      const releasedAt = await holder.release();
      const results = await within(
        120_000,
        Promise.all(workers.map((w) => w.next('RESULT'))),
        `${total} ${strategy} holders passing the lock`,
      );
      const sections = results
        .flatMap((r) => r.sections)
        .map(([start, end]) => ({ start: BigInt(start), end: BigInt(end) }));
      sections.sort((a, b) => (a.start < b.start ? -1 : 1));
      for (let i = 1; i < sections.length; i++) {
        if (sections[i].start < sections[i - 1].end) throw new Error(`server load ${strategy}: two holders overlapped`);
      }
      const passMs = msBetween(releasedAt, sections.at(-1).end);
      await within(30_000, Promise.all(workers.map((w) => w.closed)), 'waiter processes exiting');
      const label = strategy === 'library' ? 'pg-migration-lock' : 'blocking pg_advisory_lock';
      rows.push([label, total, perSecond.toFixed(1), (perSecond / total).toFixed(3), fmtMs(passMs)]);
      data.push({
        strategy,
        waiters: total,
        windowS: seconds,
        statements,
        statementsPerS: perSecond,
        perWaiter: perSecond / total,
        passThroughMs: passMs,
      });
      if (strategy === 'library') {
        targets.push(
          {
            what: `server load, ${total} waiting: statements/s per waiter`,
            target: '≤ 1',
            measured: `${(perSecond / total).toFixed(3)} (${perSecond.toFixed(0)}/s in all)`,
            met: met(perSecond / total <= 1),
            ok: perSecond / total <= 1,
          },
          {
            what: `${total} zero-work holders pass the lock through`,
            target: '≤ 1 s',
            measured: fmtS(passMs),
            met: met(passMs <= 1000),
            ok: passMs <= 1000,
          },
        );
      }
    } finally {
      for (const worker of workers) worker.kill();
    }
  }
  await ctx.drop(url);
  return {
    headers: ['waiting strategy', 'waiters', 'statements/s (server)', 'per waiter', 'all passed through, ms'],
    rows,
    notes,
    targets,
    data,
  };
}

async function waitForConnections(url, name, count) {
  const client = new pg.Client(url);
  await client.connect();
  try {
    for (;;) {
      const { rows } = await client.query(
        'SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1',
        [name],
      );
      if (rows[0].n >= count) return;
      await sleep(100);
    }
  } finally {
    await client.end();
  }
}

// ───────────────────────── uncontended ─────────────────────────

export async function uncontended(ctx) {
  const url = await ctx.database('bench_uncontended');
  const iterations = ctx.config.iterations;
  const client = new pg.Client(url);
  await client.connect();
  const time = async (fn) => {
    for (let i = 0; i < Math.min(200, iterations); i++) await fn(); // warm-up
    const t0 = performance.now();
    for (let i = 0; i < iterations; i++) await fn();
    return (performance.now() - t0) / iterations;
  };
  const noop = () => {};
  ctx.log(`uncontended: ${iterations} calls`);
  // Counts the round trips a call makes on the caller's client (each query() call is one; a string of
  // several statements sent at once is one too).
  const query = client.query;
  let roundTrips = 0;
  client.query = function (...args) {
    roundTrips++;
    return query.apply(this, args);
  };
  await withMigrationLock(client, BENCH_KEY, noop, { logger: null });
  const perCall = roundTrips;
  const select1 = await time(() => client.query('SELECT 1'));
  const locked = await time(() => withMigrationLock(client, BENCH_KEY, noop, { logger: null }));
  const pool = new pg.Pool({ connectionString: url, max: 1 });
  const pooled = await time(() => withMigrationLock(pool, BENCH_KEY, noop, { logger: null }));
  const select1After = await time(() => client.query('SELECT 1'));
  await pool.end();
  await client.end();
  await ctx.drop(url);
  // SELECT 1 timed before and after: the ratio uses their mean, so a drift in load does not skew it.
  const unit = (select1 + select1After) / 2;
  const ratio = locked / unit;
  return {
    headers: ['call (fn does nothing)', 'mean ms', 'in SELECT 1 round trips', 'target ≤ 4'],
    rows: [
      ['SELECT 1', unit.toFixed(3), '1', ''],
      [`withMigrationLock(client, …): ${perCall} queries`, locked.toFixed(3), ratio.toFixed(2), met(ratio <= 4)],
      ['withMigrationLock(pool of max 1, …)', pooled.toFixed(3), (pooled / unit).toFixed(2), ''],
    ],
    notes: [`${iterations} calls each, one after the other, on one connection.`],
    targets: [
      {
        what: 'uncontended withMigrationLock(client)',
        target: '≤ 4 SELECT 1',
        measured: `${ratio.toFixed(2)} (${locked.toFixed(3)} ms)`,
        met: met(ratio <= 4),
        ok: ratio <= 4,
      },
    ],
    data: {
      iterations,
      select1Ms: unit,
      select1BeforeMs: select1,
      select1AfterMs: select1After,
      lockedMs: locked,
      pooledMs: pooled,
      ratio,
    },
  };
}

// ───────────────────────── adapter overhead, in-process ─────────────────────────

export async function adapterOverhead(ctx) {
  const rows = [];
  const data = [];
  for (const migrator of ctx.migrators) {
    const url = await migratedDatabase(ctx, migrator, `bench_overhead_${slug(migrator)}`);
    const { modes, close } = await MIGRATORS[migrator].open(url, ctx.sets[migrator].steady);
    const times = { bare: [], wrapped: [] };
    ctx.log(`adapter overhead: ${migrator}, ${ctx.config.overheadIterations} calls each`);
    try {
      for (let i = 0; i < 3; i++) for (const mode of ['bare', 'wrapped']) await modes[mode](); // warm-up
      for (let i = 0; i < ctx.config.overheadIterations; i++) {
        for (const mode of i % 2 ? ['wrapped', 'bare'] : ['bare', 'wrapped']) {
          const t0 = performance.now();
          await modes[mode]();
          times[mode].push(performance.now() - t0);
        }
      }
    } finally {
      await close();
    }
    await ctx.drop(url);
    const bare = median(times.bare);
    const wrapped = median(times.wrapped);
    const ratio = wrapped / bare;
    rows.push([migrator, fmtMs(bare), fmtMs(wrapped), ratio.toFixed(2), met(ratio <= 1.1)]);
    data.push({
      migrator,
      bareMs: bare,
      wrappedMs: wrapped,
      ratio,
      bareTimesMs: times.bare,
      wrappedTimesMs: times.wrapped,
    });
  }
  const worst = data.reduce((a, b) => (b.ratio > a.ratio ? b : a), data[0]);
  return {
    headers: ['migrator', 'bare ms (median)', 'wrapped ms (median)', 'wrapped / bare', 'target ≤ 1.1'],
    rows,
    notes: [
      `${ctx.config.overheadIterations} calls of each, alternating, one process, up-to-date database of ${ctx.config.migrations} migrations. Bare node-pg-migrate here is its default (its own lock, uncontended).`,
    ],
    targets: [
      {
        what: 'adapter overhead, up to date, in-process: wrapped / bare',
        target: '≤ 1.1',
        measured: `${Math.min(...data.map((d) => d.ratio)).toFixed(2)}–${worst.ratio.toFixed(2)} (worst: ${worst.migrator})`,
        met: `${data.filter((d) => d.ratio <= 1.1).length} of ${data.length}`,
        ok: data.every((d) => d.ratio <= 1.1),
      },
    ],
    data,
  };
}

export const SECTIONS = {
  steady: { title: 'Steady state: N replicas start together on an up-to-date database', run: steadyState },
  convergence: { title: 'Convergence: one slow migration pending, N replicas start together', run: convergence },
  handoff: { title: 'Hand-off under contention', run: handOff },
  load: { title: 'Server load while sessions wait, and passing the lock through them', run: serverLoad },
  uncontended: { title: 'Uncontended withMigrationLock on a connected client', run: uncontended },
  overhead: { title: 'Adapter overhead on an up-to-date database, in one process', run: adapterOverhead },
  fleet: { title: 'Fleets: two runs started together on a fleet of tenant schemas', run: fleet },
  fleetscale: {
    title: 'Fleets at scale: batched checks of thousands of schemas, migrating 10,000, a canary',
    run: fleetScale,
    optIn: true,
  },
  bare: {
    title: 'Bare: replicas racing without pg-migration-lock (a demonstration, reported, not asserted)',
    run: bare,
  },
  chaos: { title: 'Chaos: faults to the holder of `run` replicas, and whether their work ever overlapped', run: chaos },
  'lock-timeout': {
    title: "Lock timeouts: the app's worst query while a migration is blocked behind a long transaction",
    run: lockTimeout,
  },
};
