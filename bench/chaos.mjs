// Chaos: rounds of N `pg-migration-lock run` replicas of a stepwise migration, each round with one random
// fault to whoever holds the lock (its CLI SIGKILLed, its lock session terminated, `release --force`, the
// server restarted fast or immediately, or nothing). The check: no two replicas' steps ever overlap on the
// server (each step records the server's clock as it commits), and no replica hangs.
//
// Throughout the rounds an app process (chaos-app.mjs) queries the same database every 50 ms on long-lived
// connections of its own, one direct and one through a PgBouncer in transaction mode; and in every second round
// the replicas' CMD reaches the database through that PgBouncer (DATABASE_URL = the pooler, `--database-url` =
// the server), as Neon and Supabase users set it up. The check: fencing never terminates an app connection
// (errors a server restart caused are counted apart), while it still stops orphans of direct CMDs.
// BENCH_CHAOS_ROUNDS=N overrides the number of rounds (e.g. a short full-size run); BENCH_CHAOS_FAULTS=a,b draws
// the faults from those only (e.g. sigkill-cli,terminate-lock,release-force: the ones that leave orphans to fence).
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { lockKey } from 'pg-migration-lock';
import { findPgbouncer, startPgbouncer } from '../test/fixtures/pooler/pgbouncer.mjs';
import { startPostgres } from '../test/postgres.mjs';
import { fmtS, sleep, within } from './lib.mjs';

// BENCH_CLI: another build's CLI to put through the same rounds (e.g. an older release, to compare).
const CLI = process.env.BENCH_CLI ?? fileURLToPath(new URL('../dist/cli/index.js', import.meta.url));
const STEP = fileURLToPath(new URL('chaos-step.mjs', import.meta.url));
const APP = fileURLToPath(new URL('chaos-app.mjs', import.meta.url));
const NAME = 'chaos';
const KEY = lockKey(NAME);
const FAULTS = ['none', 'sigkill-cli', 'terminate-lock', 'release-force', 'restart-fast', 'restart-immediate'];
// Every replica must be done this long after its round started: a fault may cost a keepalive-free restart
// and a reconnect, never a hang.
const ROUND_BOUND_MS = 120_000;

/** The server's boot time, as the app records it with each backend that served it. */
const boot = (url) =>
  query(url, 'SELECT pg_postmaster_start_time()::text AS boot')
    .then(([row]) => row.boot)
    .catch(() => undefined);

/**
 * The backend pids fencing terminated, from a replica's output: a new holder's (`an earlier holder's work is still
 * running on 2 backends: pid 4242 …`, `terminated pid 4242, pid 4243; starting`) and a lost holding's own
 * (`Terminated the work still running under this holding's tag …: pid 4242`).
 */
function fencedPids(output) {
  const lines = output
    .split('\n')
    .filter((line) =>
      /an earlier holder's work is still running on|Terminated the work still running under|: terminated pid \d+/.test(
        line,
      ),
    );
  return [...new Set(lines.flatMap((line) => [...line.matchAll(/\bpid (\d+)/g)].map(([, pid]) => Number(pid))))];
}

/** Runs one CLI process; resolves its exit code and output. */
function cli(args, env) {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, NO_COLOR: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, output })));
  return { child, exited };
}

async function query(url, sql, params) {
  const client = new pg.Client(url);
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query(sql, params)).rows;
  } finally {
    await client.end().catch(() => {});
  }
}

/** The holder of the chaos key: its backend pid, and the CLI's pid from its holding's tag. */
async function holder(url) {
  const [row] = await query(
    url,
    `SELECT l.pid, a.application_name AS tag FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
       AND l.classid = (($1::bigint >> 32) & 4294967295)::oid AND l.objid = ($1::bigint & 4294967295)::oid`,
    [KEY.toString()],
  ).catch(() => []);
  if (!row) return undefined;
  // The CLI's pid: in the holding's tag (`…:<token>.<pid>@<host>`), or an older build's `pg-migration-lock:<host>:<pid>`.
  const pid =
    /^pg-migration-lock:-?\d+:[0-9a-z]{6}\.(\d+)@/.exec(row.tag ?? '')?.[1] ?? /:(\d+)$/.exec(row.tag ?? '')?.[1];
  return { backend: row.pid, cli: Number(pid) };
}

/** The span of each replica's committed steps (first start to last commit), and the pairs that overlap. */
function overlaps(beats) {
  const spans = new Map();
  for (const { replica, started, at } of beats) {
    const [from, to] = [new Date(started).getTime(), new Date(at).getTime()];
    const span = spans.get(replica) ?? { from, to };
    spans.set(replica, { from: Math.min(span.from, from), to: Math.max(span.to, to) });
  }
  const sorted = [...spans.entries()].sort((a, b) => a[1].from - b[1].from);
  const found = [];
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i][1].from <= sorted[i - 1][1].to) found.push([sorted[i - 1][0], sorted[i][0]]);
  }
  return { replicasThatRan: spans.size, found };
}

/**
 * Starts the app process on `paths` (`{ direct: url, pooled: url }`) and resolves once it queried on each;
 * `stop()` resolves to its RESULT, `errors` are the ERROR lines seen so far.
 */
async function startApp(paths) {
  const child = spawn(process.execPath, [APP, ...Object.entries(paths).map(([path, url]) => `${path}=${url}`)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  let result;
  const errors = [];
  let onReady;
  const ready = new Promise((resolve) => (onReady = resolve));
  child.stdout.on('data', (chunk) => {
    stdout += chunk;
    let at = stdout.indexOf('\n');
    for (; at >= 0; at = stdout.indexOf('\n')) {
      const line = stdout.slice(0, at);
      stdout = stdout.slice(at + 1);
      if (line === 'ready') onReady();
      else if (line.startsWith('ERROR ')) errors.push(JSON.parse(line.slice(6)));
      else if (line.startsWith('RESULT ')) result = JSON.parse(line.slice(7));
    }
  });
  child.stderr.on('data', (chunk) => (stderr = (stderr + chunk).slice(-4000)));
  const closed = new Promise((resolve) => child.on('close', (code, signal) => resolve(code ?? signal)));
  await within(
    15_000,
    Promise.race([ready, closed.then((code) => Promise.reject(new Error(`exited (${code}): ${stderr.trim()}`)))]),
    'the chaos app to answer on every path',
  );
  return {
    errors,
    async stop() {
      child.kill('SIGTERM');
      const code = await within(10_000, closed, 'the chaos app to stop').catch((error) => {
        child.kill('SIGKILL');
        throw error;
      });
      if (!result) throw new Error(`the chaos app exited (${code}) without a result: ${stderr.trim()}`);
      return result;
    },
  };
}

/** The pooler for the app and the pooled rounds, or why there is none. */
async function startPooler(url, ctx) {
  const binary = findPgbouncer();
  if (!binary) {
    const reason =
      'pgbouncer is not installed (apt-get install -y pgbouncer, or PGBOUNCER=path): the chaos app and CMD go direct only';
    if (process.env.PGML_REQUIRE_FAULT_TOOLS === '1') {
      throw new Error(`${reason}, and PGML_REQUIRE_FAULT_TOOLS=1 says this run must not skip it`);
    }
    ctx.log(`chaos: skipped the pooler: ${reason}`);
    return { skipped: reason };
  }
  // Transaction mode with 2 server connections: the one a pooled CMD's step used goes on to serve the app.
  return {
    bouncer: await startPgbouncer(binary, {
      serverUrl: url,
      poolMode: 'transaction',
      databases: { db: { pool_size: 2 } },
    }),
  };
}

export async function chaos(ctx) {
  const { chaosReplicas: replicas, chaosSteps: steps } = ctx.config;
  const rounds = Number(process.env.BENCH_CHAOS_ROUNDS ?? ctx.config.chaosRounds);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`BENCH_CHAOS_ROUNDS must be a whole number ≥ 1`);
  const faults = process.env.BENCH_CHAOS_FAULTS?.split(',').map((f) => f.trim()) ?? FAULTS;
  const unknownFault = faults.find((f) => !FAULTS.includes(f));
  if (unknownFault) throw new Error(`BENCH_CHAOS_FAULTS: unknown fault ${unknownFault} (known: ${FAULTS.join(', ')})`);
  // A server of its own: the chaos restarts it.
  const server = await startPostgres({ durable: false });
  const url = server.url;
  await query(
    url,
    'CREATE TABLE beats (replica int NOT NULL, round int NOT NULL, started timestamptz NOT NULL, at timestamptz NOT NULL)',
  );
  const rows = [];
  let overlapping = 0;
  let overlappingPooled = 0;
  let fenced = 0;
  let fencedPooled = 0;
  let fencedOwn = 0;
  let fencedOwnPooled = 0;
  let untaggedNotice = 0;
  const fencedBackends = [];
  let slowest = 0;
  let pooler;
  let app;
  let appResult;
  try {
    pooler = await startPooler(url, ctx);
    app = await startApp({ direct: url, ...(pooler.bouncer ? { pooled: pooler.bouncer.url() } : {}) });
    for (let round = 1; round <= rounds; round++) {
      // Every second round, CMD goes through the pooler (the lock is taken direct), with the fault of the round
      // before: each fault strikes both paths alike.
      const pooled = Boolean(pooler.bouncer) && round % 2 === 0;
      const fault = pooled ? rows.at(-1).fault : faults[Math.floor(Math.random() * faults.length)];
      const env = { DATABASE_URL: pooled ? pooler.bouncer.url() : url };
      const lockUrl = pooled ? ['--database-url', url] : [];
      const started = performance.now();
      const boots = new Set([await boot(url)]);
      const runs = Array.from({ length: replicas }, (_, i) =>
        cli(
          [
            'run',
            '--name',
            NAME,
            ...lockUrl,
            '--',
            process.execPath,
            STEP,
            String(round * 100 + i),
            String(round),
            String(steps),
          ],
          env,
        ),
      );
      // Strike while a holder is in its steps.
      const strikeAt = await within(
        60_000,
        (async () => {
          for (;;) {
            const [{ n }] = await query(url, 'SELECT count(*)::int AS n FROM beats WHERE round = $1', [round]).catch(
              () => [{ n: 0 }],
            );
            if (n > 0) return holder(url);
            await sleep(20);
          }
        })(),
        `round ${round}: a first step`,
      );
      await sleep(Math.random() * steps * 500);
      const target = (await holder(url)) ?? strikeAt;
      if (fault === 'sigkill-cli' && target?.cli) process.kill(target.cli, 'SIGKILL');
      else if (fault === 'terminate-lock' && target)
        await query(url, 'SELECT pg_terminate_backend($1)', [target.backend]).catch(() => {});
      else if (fault === 'release-force')
        await cli(['release', '--force', '--yes', '--name', NAME], { DATABASE_URL: url }).exited;
      else if (fault.startsWith('restart'))
        await server.restart(fault === 'restart-fast' ? 'fast' : 'immediate', Math.random() * 1000);
      const exits = await within(
        ROUND_BOUND_MS,
        Promise.all(runs.map((r) => r.exited)),
        `round ${round}: every replica to exit`,
      ).catch((error) => {
        for (const r of runs) r.child.kill('SIGKILL');
        ctx.problem(`chaos round ${round} (${fault}): ${error.message}`);
        return [];
      });
      const seconds = (performance.now() - started) / 1000;
      boots.add(await boot(url));
      // Every backend fencing terminated this round, with the server boots it may belong to (pids are reused).
      for (const e of exits) {
        for (const pid of fencedPids(e.output)) fencedBackends.push({ round, fault, boots: [...boots], pid });
      }
      slowest = Math.max(slowest, seconds);
      const fencedNow = exits.filter((e) => /an earlier holder's work is still running/.test(e.output)).length;
      if (pooled) fencedPooled += fencedNow;
      else fenced += fencedNow;
      // A holding that lost its session terminates its own tagged work at once, before any new holder looks.
      const ownNow = exits.filter((e) =>
        /Terminated the work still running under this holding's tag/.test(e.output),
      ).length;
      if (pooled) fencedOwnPooled += ownNow;
      else fencedOwn += ownNow;
      // A pooled CMD is not tagged, and `run` says so (once per replica that started CMD).
      if (pooled)
        untaggedNotice += exits.filter((e) => /CMD's connections are not tagged for fencing/.test(e.output)).length;
      const beats = await query(url, 'SELECT replica, started, at FROM beats WHERE round = $1', [round]);
      const { replicasThatRan, found } = overlaps(beats);
      if (pooled) overlappingPooled += found.length;
      else overlapping += found.length;
      for (const [a, b] of found) {
        if (pooled)
          ctx.log(
            `chaos round ${round} (${fault}, CMD through PgBouncer, not fenced): replicas ${a} and ${b} overlapped`,
          );
        else ctx.problem(`chaos round ${round} (${fault}): replicas ${a} and ${b} overlapped`);
      }
      rows.push({
        round,
        fault,
        cmd: pooled ? 'pgbouncer' : 'direct',
        replicasThatRan,
        overlaps: found.length,
        steps: beats.length,
        exitCodes: exits.map((e) => e.code ?? e.signal),
        seconds,
      });
      ctx.log(
        `chaos round ${round}/${rounds}: ${fault}, CMD ${pooled ? 'through PgBouncer' : 'direct'}, ${replicasThatRan} replicas ran, ${found.length} overlaps, exit codes ${exits.map((e) => e.code ?? e.signal).join(' ')}, app errors so far ${app.errors.length}, ${seconds.toFixed(1)} s`,
      );
    }
    appResult = await app.stop();
    app = undefined;
  } finally {
    await app?.stop().catch(() => {});
    await pooler?.bouncer?.stop();
    await server.stop();
  }

  const paths = Object.entries(appResult);
  const appCount = (what) => paths.reduce((n, [, stats]) => n + (stats.errors[what] ?? 0), 0);
  const appQueries = paths.reduce((n, [, stats]) => n + stats.queries, 0);
  const appFenced = appCount('terminated outside a restart (fencing)');
  const appOther = appCount('other');
  const appRestart = appCount('server restart');
  const appTagged = paths.reduce((n, [, stats]) => n + stats.onTaggedConnection, 0);
  // Backends that served the app (its direct connection, the pooler's server connections) that fencing terminated.
  const servedBy = new Map(paths.flatMap(([path, stats]) => stats.served.map((backend) => [backend, path])));
  const appBackendsFenced = fencedBackends.flatMap(({ round, fault, boots, pid }) =>
    boots
      .filter((b) => servedBy.has(`${b}|${pid}`))
      .map((b) => ({ round, fault, pid, path: servedBy.get(`${b}|${pid}`) })),
  );
  for (const { round, fault, pid, path } of appBackendsFenced) {
    ctx.problem(`chaos round ${round} (${fault}): fencing terminated backend ${pid}, which served the app (${path})`);
  }
  if (appFenced > 0)
    ctx.problem(`chaos: ${appFenced} app connections were terminated outside a server restart (fencing)`);
  if (appOther > 0) ctx.problem(`chaos: ${appOther} app queries failed outside a server restart`);
  if (appTagged > 0)
    ctx.problem(`chaos: ${appTagged} app queries were served on a connection carrying a holding's tag`);
  for (const [, stats] of paths)
    for (const sample of stats.samples) ctx.log(`chaos app error: ${JSON.stringify(sample)}`);

  const sum = (of, key) => String(of.reduce((n, r) => n + r[key], 0));
  const byFault = FAULTS.map((fault) => {
    const of = rows.filter((r) => r.fault === fault);
    return [fault, String(of.length), sum(of, 'replicasThatRan'), sum(of, 'overlaps')];
  });
  const pooledRows = rows.filter((r) => r.cmd === 'pgbouncer');
  const directRows = rows.filter((r) => r.cmd === 'direct');
  const replicasFailedWithoutFault = rows
    .filter((r) => r.fault === 'none')
    .reduce((n, r) => n + r.exitCodes.filter((c) => c !== 0).length, 0);
  const perPath = paths
    .map(
      ([path, stats]) =>
        `${path === 'pooled' ? 'through PgBouncer' : 'direct'}: ${stats.queries} queries, ${stats.connects - 1} reconnects, errors ${
          Object.entries(stats.errors)
            .map(([why, n]) => `${n} ${why}`)
            .join(', ') || 'none'
        }`,
    )
    .join('; ');
  return {
    headers: ['fault to the holder', 'rounds', 'replicas that ran a step', 'overlaps'],
    rows: [
      ...byFault.filter((r) => r[1] !== '0'),
      ['all, CMD direct', String(directRows.length), sum(directRows, 'replicasThatRan'), String(overlapping)],
      ...(pooledRows.length
        ? [
            [
              'all, CMD through PgBouncer (not fenced)',
              String(pooledRows.length),
              sum(pooledRows, 'replicasThatRan'),
              String(overlappingPooled),
            ],
          ]
        : []),
    ],
    notes: [
      `${rounds} rounds of ${replicas} \`run\` replicas of a ${steps}-step migration (0.1 to 2 s a step) on a server of its own; the slowest round took ${fmtS(slowest * 1000)}.`,
      pooler.bouncer
        ? `In ${pooledRows.length} of the rounds the replicas' CMD reached the database through PgBouncer (transaction mode, 2 server connections; the lock direct): \`run\` said CMD is not tagged in ${untaggedNotice} replicas, and such work is not fenced (its overlaps are counted apart, not as failures).`
        : `No pooler: ${pooler.skipped}.`,
      `Fencing stopped an orphan: a new holder terminated an earlier holding's still-running work in ${fenced} hand-offs, and a holding that lost its session terminated its own work in ${fencedOwn} replicas, with CMD direct${pooledRows.length ? ` (with CMD through PgBouncer: ${fencedPooled} and ${fencedOwnPooled})` : ''}; replicas that exited non-zero in rounds without a fault: ${replicasFailedWithoutFault}.`,
      `An app process queried the database every 50 ms throughout, on a long-lived connection ${pooler.bouncer ? 'direct and one through the same PgBouncer' : 'direct'}: ${appQueries} queries; ${perPath}. App connections terminated outside a server restart (SQLSTATE 57P01, fencing): ${appFenced}; other app errors outside a restart: ${appOther}; app queries served on a tagged connection: ${appTagged}. Of the ${fencedBackends.length} backends fencing terminated, ${appBackendsFenced.length} had served the app (its direct connection or a PgBouncer server connection it was served on).`,
    ],
    targets: [
      {
        what: 'chaos: steps of two replicas overlapping (CMD direct)',
        target: '0',
        measured: String(overlapping),
        met: overlapping === 0 ? 'yes' : 'NO',
        ok: overlapping === 0,
      },
      {
        what: 'chaos: backends serving the app that fencing terminated',
        target: '0',
        measured: String(appBackendsFenced.length),
        met: appBackendsFenced.length === 0 ? 'yes' : 'NO',
        ok: appBackendsFenced.length === 0,
      },
      {
        what: 'chaos: app errors outside server restarts',
        target: '0',
        measured: String(appOther + appFenced),
        met: appOther + appFenced === 0 ? 'yes' : 'NO',
        ok: appOther + appFenced === 0,
      },
    ],
    data: {
      rounds: rows,
      overlapping,
      overlappingPooled,
      fenced,
      fencedPooled,
      fencedOwn,
      fencedOwnPooled,
      pooler: pooler.bouncer ? 'pgbouncer, transaction mode, pool_size 2' : pooler.skipped,
      app: appResult,
      appQueries,
      appErrors: { serverRestart: appRestart, fencing: appFenced, other: appOther },
      appOnTaggedConnection: appTagged,
      fencedBackends,
      appBackendsFenced,
    },
  };
}
