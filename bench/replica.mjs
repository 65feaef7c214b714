// A replica process of the bench. It imports everything and builds its config first, connecting nothing,
// says `ready`, then waits for a line on stdin: every replica starts on the same signal, so Node's
// start-up and module loading are not what is measured. It reports one `RESULT {json}` line per run.
// Times are process.hrtime (CLOCK_MONOTONIC), comparable across processes on one machine.
//
//   replica.mjs migrate <migrator> <mode> <url> <dir>   after `go`: migrate once, report, exit (1 on failure)
//   replica.mjs migrate-now <migrator> <mode> <url> <dir>   the same at once, start-up included (a real replica)
//   replica.mjs lock <url>                    per line `<strategy> <holdMs>`: connect, take the lock, hold, report
//   replica.mjs waiters <url> <count> <strategy>   after `go`: <count> sessions take the lock in turn, zero work
import { createInterface } from 'node:readline';
import pg from 'pg';
import { withMigrationLock } from 'pg-migration-lock';
import { BENCH_KEY, now, sleep } from './lib.mjs';
import { MIGRATORS } from './migrators.mjs';

const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
const nextLine = async () => (await lines.next()).value;
// Stop reading stdin, so the process exits by itself when its work is done (as a real replica would).
const doneReading = () => {
  stdin.close();
  process.stdin.destroy();
};
const report = (result) =>
  console.log(`RESULT ${JSON.stringify(result, (_, v) => (typeof v === 'bigint' ? String(v) : v))}`);

const [role, ...args] = process.argv.slice(2);

if (role === 'migrate' || role === 'migrate-now') {
  const [migrator, mode, url, dir] = args;
  const { modes, close } = await MIGRATORS[migrator].open(url, dir);
  if (!modes[mode]) throw new Error(`${migrator} has no mode ${mode}`);
  if (role === 'migrate') {
    console.log('ready');
    await nextLine();
  }
  doneReading();
  const start = now();
  let error;
  try {
    await modes[mode]();
  } catch (err) {
    error = String(err?.message ?? err).split('\n')[0];
  } finally {
    await close().catch(() => {});
  }
  report({ ok: !error, error, start, end: now() });
  process.exitCode = error ? 1 : 0;
} else if (role === 'lock') {
  const [url] = args;
  console.log('ready');
  for (let line = await nextLine(); line && line !== 'exit'; line = await nextLine()) {
    const [strategy, holdMs] = line.split(' ');
    report(await takeOnce(url, strategy, Number(holdMs)));
  }
  doneReading();
} else if (role === 'waiters') {
  const [url, count, strategy] = args;
  console.log('ready');
  await nextLine();
  doneReading();
  const sections = await Promise.all(Array.from({ length: Number(count) }, () => takeZeroWork(url, strategy)));
  report({ sections });
} else {
  throw new Error(`unknown role ${role}`);
}

// One replica of the hand-off section: a fresh connection, then wait for the lock with `strategy`.
async function takeOnce(url, strategy, holdMs) {
  if (strategy === 'postgres-js') return takeOnceThroughPostgresJs(url, holdMs);
  const client = new pg.Client(url);
  await client.connect();
  console.log('waiting');
  const waitStart = now();
  let start;
  let end;
  const work = async () => {
    start = now();
    await sleep(holdMs);
    end = now();
  };
  if (strategy === 'library') {
    await withMigrationLock(client, BENCH_KEY, work, { logger: null });
  } else if (strategy === 'blocking') {
    // The fastest possible hand-off, but unsafe: a blocked waiter holds a snapshot, which a holder's
    // CREATE INDEX CONCURRENTLY waits for (deadlock).
    await client.query(`SELECT pg_advisory_lock(${BENCH_KEY})`);
    await work();
    await client.query(`SELECT pg_advisory_unlock(${BENCH_KEY})`);
  } else if (strategy.startsWith('poll:')) {
    // What peers do (Flyway, MSR's retryDelay): try, sleep a fixed interval, try again. The first sleep
    // is a random part of it, as if the replicas had started at different moments.
    const interval = Number(strategy.slice(5));
    let delay = Math.random() * interval;
    while (!(await client.query(`SELECT pg_try_advisory_lock(${BENCH_KEY}) AS ok`)).rows[0].ok) {
      await sleep(delay);
      delay = interval;
    }
    await work();
    await client.query(`SELECT pg_advisory_unlock(${BENCH_KEY})`);
  } else {
    throw new Error(`unknown strategy ${strategy}`);
  }
  await client.end();
  return { waitStart, start, end };
}

// The library's waiting through a postgres.js sql: the wake-up comes on postgres.js' own listen connection.
async function takeOnceThroughPostgresJs(url, holdMs) {
  const { default: postgres } = await import('postgres');
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  await sql`SELECT 1`;
  console.log('waiting');
  const waitStart = now();
  let start;
  let end;
  await withMigrationLock(
    sql,
    BENCH_KEY,
    async () => {
      start = now();
      await sleep(holdMs);
      end = now();
    },
    { logger: null },
  );
  await sql.end();
  return { waitStart, start, end };
}

// One of the server-load section's waiters: its own session, nothing done under the lock.
async function takeZeroWork(url, strategy) {
  let start;
  let end;
  const work = () => {
    start = now();
    end = now();
  };
  if (strategy === 'library') {
    await withMigrationLock(url, BENCH_KEY, work, { logger: null });
  } else {
    const client = new pg.Client(url);
    await client.connect();
    await client.query(`SELECT pg_advisory_lock(${BENCH_KEY})`);
    work();
    await client.query(`SELECT pg_advisory_unlock(${BENCH_KEY})`);
    await client.end();
  }
  return [start, end];
}
