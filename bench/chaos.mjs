// Chaos: rounds of N `pg-migration-lock run` replicas of a stepwise migration, each round with one random
// fault to whoever holds the lock (its CLI SIGKILLed, its lock session terminated, `release --force`, the
// server restarted fast or immediately, or nothing). The check: no two replicas' steps ever overlap on the
// server (each step records the server's clock as it commits), and no replica hangs.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { lockKey } from 'pg-migration-lock';
import { startPostgres } from '../test/postgres.mjs';
import { fmtS, sleep, within } from './lib.mjs';

// BENCH_CLI: another build's CLI to put through the same rounds (e.g. an older release, to compare).
const CLI = process.env.BENCH_CLI ?? fileURLToPath(new URL('../dist/cli/index.js', import.meta.url));
const STEP = fileURLToPath(new URL('chaos-step.mjs', import.meta.url));
const NAME = 'chaos';
const KEY = lockKey(NAME);
const FAULTS = ['none', 'sigkill-cli', 'terminate-lock', 'release-force', 'restart-fast', 'restart-immediate'];
// Every replica must be done this long after its round started: a fault may cost a keepalive-free restart
// and a reconnect, never a hang.
const ROUND_BOUND_MS = 120_000;

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

export async function chaos(ctx) {
  const { chaosRounds: rounds, chaosReplicas: replicas, chaosSteps: steps } = ctx.config;
  // A server of its own: the chaos restarts it.
  const server = await startPostgres({ durable: false });
  const url = server.url;
  await query(
    url,
    'CREATE TABLE beats (replica int NOT NULL, round int NOT NULL, started timestamptz NOT NULL, at timestamptz NOT NULL)',
  );
  const env = { DATABASE_URL: url };
  const rows = [];
  let overlapping = 0;
  let fenced = 0;
  let slowest = 0;
  try {
    for (let round = 1; round <= rounds; round++) {
      const fault = FAULTS[Math.floor(Math.random() * FAULTS.length)];
      const started = performance.now();
      const runs = Array.from({ length: replicas }, (_, i) =>
        cli(
          ['run', '--name', NAME, '--', process.execPath, STEP, String(round * 100 + i), String(round), String(steps)],
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
      else if (fault === 'release-force') await cli(['release', '--force', '--yes', '--name', NAME], env).exited;
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
      slowest = Math.max(slowest, seconds);
      fenced += exits.filter((e) => /an earlier holder's work is still running/.test(e.output)).length;
      const beats = await query(url, 'SELECT replica, started, at FROM beats WHERE round = $1', [round]);
      const { replicasThatRan, found } = overlaps(beats);
      overlapping += found.length;
      for (const [a, b] of found) ctx.problem(`chaos round ${round} (${fault}): replicas ${a} and ${b} overlapped`);
      rows.push({
        round,
        fault,
        replicasThatRan,
        steps: beats.length,
        exitCodes: exits.map((e) => e.code ?? e.signal),
        seconds,
      });
      ctx.log(
        `chaos round ${round}/${rounds}: ${fault}, ${replicasThatRan} replicas ran, ${found.length} overlaps, ${seconds.toFixed(1)} s`,
      );
    }
  } finally {
    await server.stop();
  }
  const byFault = FAULTS.map((fault) => {
    const of = rows.filter((r) => r.fault === fault);
    return [fault, String(of.length), String(of.reduce((n, r) => n + r.replicasThatRan, 0)), '0'];
  });
  return {
    headers: ['fault to the holder', 'rounds', 'replicas that ran a step', 'overlaps'],
    rows: [
      ...byFault.filter((r) => r[1] !== '0'),
      ['all', String(rows.length), String(rows.reduce((n, r) => n + r.replicasThatRan, 0)), String(overlapping)],
    ],
    notes: [
      `${rounds} rounds of ${replicas} \`run\` replicas of a ${steps}-step migration (0.1 to 2 s a step) on a server of its own; the slowest round took ${fmtS(slowest * 1000)}.`,
      `A new holder terminated an earlier holding's still-running work (fencing) in ${fenced} hand-offs.`,
    ],
    targets: [
      {
        what: 'chaos: steps of two replicas overlapping',
        target: '0',
        measured: String(overlapping),
        met: overlapping === 0 ? 'yes' : 'NO',
        ok: overlapping === 0,
      },
    ],
    data: { rounds: rows, overlapping, fenced },
  };
}
