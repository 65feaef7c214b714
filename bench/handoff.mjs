// npm run bench: how fast the lock passes from one process to the next, and what an uncontended
// withMigrationLock costs, against an embedded PostgreSQL (or BENCH_DATABASE_URL).
//   node bench/handoff.mjs [--replicas 16] [--rounds 4] [--iterations 2000]
import { spawn } from 'node:child_process';
import os from 'node:os';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { withMigrationLock } from 'pg-migration-lock';
import postgres from 'postgres';
import { createDatabase, startPostgres } from '../test/postgres.mjs';

const KEY = 4242n;
const HOLD_MS = 5;
const now = () => process.hrtime.bigint(); // CLOCK_MONOTONIC: comparable across processes

// One replica: connect, take the lock once, hold it HOLD_MS, print when it waited / held (ns).
async function replica(url, mode) {
  if (mode === 'postgres-js') return replicaPostgresJs(url);
  const client = new pg.Client(url);
  await client.connect();
  console.log('ready');
  const waitStart = now();
  let start;
  let end;
  const work = async () => {
    start = now();
    await new Promise((resolve) => setTimeout(resolve, HOLD_MS));
    end = now();
  };
  if (mode === 'library') {
    await withMigrationLock(client, KEY, work, { logger: null });
  } else if (mode === 'blocking') {
    // Fastest possible hand-off, but unsafe: the blocked waiter holds a snapshot (CIC deadlocks).
    await client.query(`SELECT pg_advisory_lock(${KEY})`);
    await work();
    await client.query(`SELECT pg_advisory_unlock(${KEY})`);
  } else {
    // Safe but slow: what peers that only poll every 250 ms do.
    while (!(await client.query(`SELECT pg_try_advisory_lock(${KEY}) AS ok`)).rows[0].ok) {
      await new Promise((resolve) => setTimeout(resolve, 250 * (0.8 + Math.random() * 0.4)));
    }
    await work();
    await client.query(`SELECT pg_advisory_unlock(${KEY})`);
  }
  await client.end();
  console.log(JSON.stringify({ waitStart: String(waitStart), start: String(start), end: String(end) }));
}

// The same replica waiting through a postgres.js sql: its wake-up comes on postgres.js' listen connection.
async function replicaPostgresJs(url) {
  const sql = postgres(url, { max: 1 });
  await sql`SELECT 1`;
  console.log('ready');
  const waitStart = now();
  let start;
  let end;
  await withMigrationLock(
    sql,
    KEY,
    async () => {
      start = now();
      await new Promise((resolve) => setTimeout(resolve, HOLD_MS));
      end = now();
    },
    { logger: null },
  );
  await sql.end();
  console.log(JSON.stringify({ waitStart: String(waitStart), start: String(start), end: String(end) }));
}

// The bench holds the lock until every replica is up and waiting (and Node start-up has stopped
// eating the CPU), then lets go: every hand-off after that is between processes already waiting.
async function race(url, mode, replicas) {
  let release;
  const released = new Promise((resolve) => (release = resolve));
  const holding =
    mode === 'library' || mode === 'postgres-js'
      ? new Promise((held) =>
          withMigrationLock(
            url,
            KEY,
            () => {
              held();
              return released;
            },
            { logger: null },
          ),
        )
      : (async () => {
          const client = new pg.Client(url);
          await client.connect();
          await client.query(`SELECT pg_advisory_lock(${KEY})`);
          released.then(() => client.end()); // closing the session releases the lock
        })();
  await holding;
  let ready = 0;
  let allReady;
  const everyoneWaits = new Promise((resolve) => (allReady = resolve));
  const runs = Array.from({ length: replicas }, () => {
    const child = spawn(process.execPath, [new URL(import.meta.url).pathname, '--replica', mode, url], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (chunk) => {
      out += chunk;
      if (String(chunk).includes('ready') && ++ready === replicas) allReady();
    });
    return new Promise((resolve, reject) =>
      child.on('close', (code) =>
        code === 0 ? resolve(JSON.parse(out.trim().split('\n').at(-1))) : reject(new Error(`replica exit ${code}`)),
      ),
    );
  });
  await everyoneWaits;
  await new Promise((resolve) => setTimeout(resolve, 500));
  release();
  const results = await Promise.all(runs);
  const sections = results
    .map((r) => ({ waitStart: BigInt(r.waitStart), start: BigInt(r.start), end: BigInt(r.end) }))
    .sort((a, b) => (a.start < b.start ? -1 : 1));
  const gaps = [];
  for (let i = 1; i < sections.length; i++) {
    const [prev, next] = [sections[i - 1], sections[i]];
    if (next.start < prev.end) throw new Error(`${mode}: critical sections overlapped`);
    // A hand-off only counts when the next replica was already waiting at the release.
    if (next.waitStart < prev.end) gaps.push(Number(next.start - prev.end) / 1e6);
  }
  return gaps;
}

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const fmt = (ms) => (ms < 10 ? ms.toFixed(2) : ms.toFixed(0));

async function uncontended(url, iterations) {
  const client = new pg.Client(url);
  await client.connect();
  const time = async (fn) => {
    for (let i = 0; i < 200; i++) await fn(); // warm-up
    const t0 = now();
    for (let i = 0; i < iterations; i++) await fn();
    return Number(now() - t0) / 1e6 / iterations;
  };
  const select1 = await time(() => client.query('SELECT 1'));
  const locked = await time(() => withMigrationLock(client, KEY, () => {}, { logger: null }));
  const pool = new pg.Pool({ connectionString: url, max: 1 });
  const pooled = await time(() => withMigrationLock(pool, KEY, () => {}, { logger: null }));
  await pool.end();
  await client.end();
  const sql = postgres(url, { max: 1 });
  const pgjs = await time(() => withMigrationLock(sql, KEY, () => {}, { logger: null }));
  await sql.end();
  return { select1, locked, pooled, pgjs };
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    replica: { type: 'string' },
    replicas: { type: 'string', default: '16' },
    rounds: { type: 'string', default: '4' },
    iterations: { type: 'string', default: '2000' },
  },
});

if (values.replica) {
  await replica(positionals[0], values.replica);
} else {
  const server = await startPostgres({ url: process.env.BENCH_DATABASE_URL });
  try {
    const url = await createDatabase(server.url, 'pgml_bench');
    console.log(
      `PostgreSQL ${server.version} on loopback; Node ${process.version}; ${os.cpus().length} × ${os.cpus()[0]?.model.trim()}`,
    );
    console.log(
      `\nHand-off: ${values.replicas} replica processes × ${values.rounds} rounds, each holding ${HOLD_MS} ms`,
    );
    console.log('| waiting strategy | hand-offs | median ms | p99 ms | max ms |');
    console.log('|---|---|---|---|---|');
    for (const [mode, label] of [
      ['library', 'pg-migration-lock (try-lock + LISTEN/NOTIFY)'],
      ['postgres-js', 'pg-migration-lock, waiters on a postgres.js sql'],
      ['polling', 'try-lock polling every 250 ms'],
      ['blocking', 'blocking pg_advisory_lock (unsafe with CIC)'],
    ]) {
      const gaps = [];
      for (let r = 0; r < Number(values.rounds); r++) gaps.push(...(await race(url, mode, Number(values.replicas))));
      gaps.sort((a, b) => a - b);
      console.log(
        `| ${label} | ${gaps.length} | ${fmt(percentile(gaps, 50))} | ${fmt(percentile(gaps, 99))} | ${fmt(gaps.at(-1))} |`,
      );
    }
    const cost = await uncontended(url, Number(values.iterations));
    console.log(`\nUncontended, ${values.iterations} calls on one connection (fn does nothing):`);
    console.log('| call | mean ms | in SELECT 1 round trips |');
    console.log('|---|---|---|');
    console.log(`| SELECT 1 | ${cost.select1.toFixed(3)} | 1 |`);
    console.log(
      `| withMigrationLock(client, …) | ${cost.locked.toFixed(3)} | ${(cost.locked / cost.select1).toFixed(2)} |`,
    );
    console.log(
      `| withMigrationLock(pool, …) | ${cost.pooled.toFixed(3)} | ${(cost.pooled / cost.select1).toFixed(2)} |`,
    );
    console.log(
      `| withMigrationLock(postgres.js sql, …) | ${cost.pgjs.toFixed(3)} | ${(cost.pgjs / cost.select1).toFixed(2)} |`,
    );
  } finally {
    await server.stop();
  }
}
