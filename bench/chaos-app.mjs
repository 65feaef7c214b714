// The app of the chaos section: a process of its own that queries the chaos database every 50 ms throughout
// the rounds, on long-lived connections of its own, one per path given (direct to the server, through
// PgBouncer). Fencing must never terminate them.
//   node chaos-app.mjs PATH=URL [PATH=URL ...]
// Prints `ready` once every path answered, `ERROR {json}` for each failed query as it happens, and on SIGTERM
// `RESULT {json}`: per path, queries run, reconnects, every error with its cause, and the server backends that
// served it (`boot|pid`: through PgBouncer, the pooler's server connections), which fencing must never name.
//
// An error's cause is told by the server's boot time (pg_postmaster_start_time(), in every query): errors
// followed by a first successful query on a server that booted since the last one before them were caused by
// a server restart (the chaos section's restart faults break every connection). Any other error is the app's
// harm: "terminating connection due to administrator command" (SQLSTATE 57P01) there is a backend terminated
// by pg_terminate_backend — fencing, the only thing in the bench that terminates backends other than the
// lock holder's — and anything else is counted as other.
import pg from 'pg';

const EVERY_MS = 50;
const SQL = `SELECT pg_postmaster_start_time()::text AS boot, pg_backend_pid() AS pid, current_setting('application_name') AS name`;
const paths = process.argv.slice(2).map((arg) => {
  const at = arg.indexOf('=');
  return { path: arg.slice(0, at), url: arg.slice(at + 1) };
});
let stopping = false;
process.on('SIGTERM', () => (stopping = true));
process.on('SIGINT', () => (stopping = true));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function cause(error, restarted) {
  if (restarted) return 'server restart';
  if (error.code === '57P01') return 'terminated outside a restart (fencing)';
  return 'other';
}

async function query({ path, url }, onReady) {
  const stats = {
    queries: 0,
    connects: 0,
    // Queries whose connection carried a holding's tag: a tag left on a server connection the app is served on.
    onTaggedConnection: 0,
    errors: {},
    samples: [],
    served: new Set(),
  };
  let client;
  let lost; // the error that broke the connection, when the server or the network did
  let lastBoot;
  let pending = []; // errors whose cause is known only at the next successful query
  const settle = (restarted) => {
    for (const error of pending) {
      const why = cause(error, restarted);
      stats.errors[why] = (stats.errors[why] ?? 0) + 1;
      if (why !== 'server restart' && stats.samples.length < 20) stats.samples.push({ ...error, cause: why });
    }
    pending = [];
  };
  while (!stopping) {
    try {
      if (!client) {
        const next = new pg.Client({ connectionString: url, application_name: `chaos-app-${path}` });
        next.on('error', (error) => (lost ??= error));
        lost = undefined;
        client = next;
        await next.connect();
        stats.connects++;
      }
      const [row] = (await client.query(SQL)).rows;
      stats.queries++;
      stats.served.add(`${row.boot}|${row.pid}`);
      if (row.name.startsWith('pg-migration-lock:')) stats.onTaggedConnection++;
      if (pending.length) settle(lastBoot !== undefined && row.boot !== lastBoot);
      lastBoot = row.boot;
      if (onReady) {
        onReady();
        onReady = undefined;
      }
    } catch (error) {
      // The first error on a connection says why it broke (a later query only says it is not queryable).
      const first = lost ?? error;
      const entry = { path, at: new Date().toISOString(), code: first.code ?? null, message: first.message };
      pending.push(entry);
      process.stdout.write(`ERROR ${JSON.stringify(entry)}\n`);
      // Whatever broke, the app reconnects (a pool would): the old connection is dropped.
      client.end().catch(() => {});
      client = undefined;
    }
    await sleep(EVERY_MS);
  }
  // Errors still unexplained at the end: the server has not answered since, so not a restart's that was seen.
  settle(false);
  await client?.end().catch(() => {});
  return { ...stats, served: [...stats.served] };
}

let ready = 0;
const results = await Promise.all(
  paths.map((p) =>
    query(p, () => {
      if (++ready === paths.length) process.stdout.write('ready\n');
    }).then((stats) => [p.path, stats]),
  ),
);
process.stdout.write(`RESULT ${JSON.stringify(Object.fromEntries(results))}\n`);
