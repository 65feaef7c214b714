// npm run bench [-- --smoke] [-- --only steady,convergence,handoff,load,uncontended,overhead,fleet,fleetscale,bare,chaos,lock-timeout]
// The performance suite: against a throwaway embedded PostgreSQL (or BENCH_DATABASE_URL), prints one
// Markdown table per section, then every target with its measured value, and writes all figures as JSON
// (bench/results.json, or BENCH_RESULTS / --out). BENCH_SMOKE=1 is --smoke: tiny N, few iterations.
// Exits 1 when a correctness check fails (a wrapped replica failed, a migration applied twice, two
// critical sections overlapped), not when a timing target is missed: timings depend on the machine.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createDatabase, startPostgres } from '../test/postgres.mjs';
import { table } from './lib.mjs';
import { available, MIGRATORS, migrationSet } from './migrators.mjs';
import { SECTIONS } from './sections.mjs';

const usage = `Usage: npm run bench [-- --smoke] [-- --only ${Object.keys(SECTIONS).join(',')}] [-- --repeats N] [-- --out FILE]
  --repeats N         steady state: runs of each mode per N, the median counts (default 1)
  --replicas N,M      steady state and convergence: these replica counts instead of the defaults
  --migrators A,B     only these migrators (default: every one installed)
  --strategies A,B    hand-off: only these waiting strategies (library, postgres-js, blocking, poll:<ms>)
  BENCH_DATABASE_URL  use this server instead of an embedded one (databases bench_* are created and dropped)
  BENCH_SMOKE=1       same as --smoke: a tiny run (CI)
  BENCH_RESULTS=FILE  where to write the JSON (default bench/results.json)`;

let values;
try {
  ({ values } = parseArgs({
    options: {
      smoke: { type: 'boolean', default: process.env.BENCH_SMOKE === '1' },
      only: { type: 'string' },
      repeats: { type: 'string' },
      replicas: { type: 'string' },
      migrators: { type: 'string' },
      strategies: { type: 'string' },
      out: { type: 'string', default: process.env.BENCH_RESULTS },
      help: { type: 'boolean', short: 'h' },
    },
  }));
} catch (error) {
  console.error(`${error.message}\n${usage}`);
  process.exit(2);
}
if (values.help) {
  console.log(usage);
  process.exit(0);
}
// A section marked `optIn` (fleetscale: tens of minutes at full size) runs in a full run only when named in --only.
const only =
  values.only?.split(',').map((s) => s.trim()) ??
  Object.keys(SECTIONS).filter((name) => values.smoke || !SECTIONS[name].optIn);
const unknown = only.filter((name) => !SECTIONS[name]);
if (unknown.length) {
  console.error(`Unknown section ${unknown.join(', ')}\n${usage}`);
  process.exit(2);
}

const config = values.smoke
  ? {
      smoke: true,
      migrations: 10,
      slowSeconds: 0.3,
      settleMs: 100,
      replicas: [2],
      repeats: 1,
      handoffWaiters: [3],
      handoffRounds: 1,
      strategies: ['library', 'blocking', 'poll:100'],
      loadWaiters: 10,
      loadProcesses: 2,
      loadSettleMs: 300,
      loadWindowMs: 1000,
      iterations: 100,
      overheadIterations: 3,
      chaosRounds: 2,
      chaosReplicas: 3,
      chaosSteps: 1,
      fleetTenants: 6,
      fleetConcurrency: 2,
      fleetSleepSeconds: 0.05,
      fleetSerialSample: 2,
      fleetScale: {
        sizes: [20],
        checkConcurrency: 4,
        migrateSchemas: 12,
        migrateConcurrency: 4,
        migrateMigrators: ['knex'],
      },
      bareReplicas: 3,
      lockTimeoutHoldMs: 1500,
      lockTimeoutMs: 200,
      lockTimeoutRunners: ['withMigrationLock'],
    }
  : {
      migrations: 60,
      slowSeconds: 0.5,
      settleMs: 300,
      replicas: [8, 32, 64],
      repeats: 1,
      handoffWaiters: [8, 64],
      handoffRounds: 9,
      strategies: ['library', 'postgres-js', 'blocking', 'poll:100', 'poll:1000', 'poll:5000'],
      loadWaiters: 200,
      loadProcesses: 4,
      loadSettleMs: 3000,
      loadWindowMs: 10_000,
      iterations: 2000,
      overheadIterations: 40,
      chaosRounds: 40,
      chaosReplicas: 6,
      chaosSteps: 4,
      fleetTenants: 200,
      fleetConcurrency: 8,
      fleetSleepSeconds: 0.2,
      fleetSerialSample: 10,
      fleetScale: {
        sizes: [200, 2000, 10_000],
        checkConcurrency: 8,
        migrateSchemas: 10_000,
        migrateConcurrency: 32,
        migrateMigrators: ['knex'],
      },
      bareReplicas: 8,
      lockTimeoutHoldMs: 6000,
      lockTimeoutMs: 500,
      lockTimeoutRunners: ['withMigrationLock', 'knex'],
    };
if (values.repeats !== undefined) {
  config.repeats = Number(values.repeats);
  if (!Number.isInteger(config.repeats) || config.repeats < 1) {
    console.error(`--repeats must be a whole number ≥ 1, got ${values.repeats}\n${usage}`);
    process.exit(2);
  }
}
if (values.replicas !== undefined) {
  config.replicas = values.replicas.split(',').map(Number);
  if (!config.replicas.every((n) => Number.isInteger(n) && n >= 1)) {
    console.error(`--replicas takes whole numbers ≥ 1, comma-separated, got ${values.replicas}\n${usage}`);
    process.exit(2);
  }
}
if (values.strategies !== undefined) config.strategies = values.strategies.split(',').map((s) => s.trim());
const chosen = values.migrators?.split(',').map((s) => s.trim());
const strange = chosen?.filter((name) => !MIGRATORS[name]) ?? [];
if (strange.length) {
  console.error(`Unknown migrator ${strange.join(', ')} (known: ${Object.keys(MIGRATORS).join(', ')})\n${usage}`);
  process.exit(2);
}
const out = values.out ?? fileURLToPath(new URL('results.json', import.meta.url));

const server = await startPostgres({ url: process.env.BENCH_DATABASE_URL });
// Inside the project (.tmp/ is ignored by git), so generated migrations can import its packages.
const root = fileURLToPath(new URL('..', import.meta.url));
await mkdir(join(root, '.tmp'), { recursive: true });
const tmp = await mkdtemp(join(root, '.tmp', 'bench-'));
const created = new Set();
const problems = [];
const ctx = {
  config,
  tmp,
  // A smoke run (CI) checks that every section runs, on two migrators; a full run measures every one installed.
  migrators: Object.keys(MIGRATORS)
    .filter((name) => available(MIGRATORS[name]) && (chosen?.includes(name) ?? true))
    .filter((_name, i) => chosen || !values.smoke || i < 2),
  sets: {},
  noopWall: {},
  log: (message) => process.stderr.write(`  ${message}\n`),
  problem: (message) => problems.push(message),
  async database(name) {
    const url = await createDatabase(server.url, name);
    created.add(url);
    return url;
  },
  async drop(url) {
    const name = new URL(url).pathname.slice(1);
    const client = new pg.Client(server.url);
    await client.connect();
    await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).finally(() => client.end());
    created.delete(url);
  },
};
let stopping = false;
const cleanUp = async () => {
  if (stopping) return;
  stopping = true;
  for (const url of created) await ctx.drop(url).catch(() => {});
  await rm(tmp, { recursive: true, force: true });
  await server.stop();
};
process.once('SIGINT', () => cleanUp().finally(() => process.exit(130)));

const cpus = os.cpus();
const machine = {
  date: new Date().toISOString(),
  postgres: server.version,
  embedded: !process.env.BENCH_DATABASE_URL,
  node: process.version,
  cpus: `${cpus.length} × ${cpus[0]?.model.trim()}`,
  memoryGiB: Math.round(os.totalmem() / 2 ** 30),
  loadAverageAtStart: os.loadavg().map((l) => l.toFixed(2)),
  smoke: values.smoke,
  migrationsPerSet: config.migrations,
};
const versions = {};
for (const name of ['knex', 'node-pg-migrate', 'drizzle-orm', 'kysely', 'typeorm', 'pg']) {
  const file = new URL(`../node_modules/${name}/package.json`, import.meta.url);
  const { version } = JSON.parse(await readFile(file, 'utf8').catch(() => '{}'));
  if (version) versions[name] = version;
}
const skipped = Object.keys(MIGRATORS).filter((name) => !ctx.migrators.includes(name));
console.log(
  `pg-migration-lock bench${values.smoke ? ' (smoke)' : ''}: PostgreSQL ${machine.postgres}${machine.embedded ? ' (embedded)' : ''} on loopback; Node ${machine.node}; ${machine.cpus}; ${machine.memoryGiB} GiB; load average ${machine.loadAverageAtStart.join(' ')}; ${Object.entries(
    versions,
  )
    .map(([k, v]) => `${k} ${v}`)
    .join(', ')}; ${machine.date}`,
);

if (skipped.length) {
  console.log(`Skipped (the migrator is not installed, or this build has no adapter for it): ${skipped.join(', ')}`);
}

const report = { machine, versions, config, migrators: ctx.migrators, sections: {}, targets: [], problems };
try {
  for (const migrator of ctx.migrators) {
    const entry = MIGRATORS[migrator];
    const steady = join(tmp, migrator, 'steady');
    const converge = join(tmp, migrator, 'converge');
    await entry.write(steady, migrationSet(config.migrations));
    await entry.write(converge, migrationSet(config.migrations, config.slowSeconds));
    ctx.sets[migrator] = { steady, converge };
  }
  for (const name of only) {
    const { title, run } = SECTIONS[name];
    process.stderr.write(`${title}\n`);
    const started = performance.now();
    const result = await run(ctx);
    const seconds = (performance.now() - started) / 1000;
    console.log(`\n#### ${title}\n\n${table(result.headers, result.rows)}`);
    for (const note of result.notes) console.log(`- ${note}`);
    report.sections[name] = { title, seconds, data: result.data, notes: result.notes };
    report.targets.push(...result.targets.map((t) => ({ section: name, ...t })));
  }
} catch (error) {
  problems.push(`the bench stopped: ${error.stack ?? error}`);
} finally {
  await cleanUp();
}

machine.loadAverageAtEnd = os.loadavg().map((l) => l.toFixed(2));
machine.totalSeconds = Math.round(performance.now() / 1000);
if (report.targets.length) {
  console.log(
    `\n#### Targets\n\n${table(
      ['measure', 'target', 'measured', 'met'],
      report.targets.map((t) => [t.what, t.target, t.measured, t.met]),
    )}`,
  );
}
console.log(
  `\nLoad average at the end: ${machine.loadAverageAtEnd.join(' ')}; ${machine.totalSeconds} s in all. JSON: ${out}`,
);
await writeFile(out, `${JSON.stringify(report, null, 2)}\n`);
if (problems.length) {
  console.error(`\nProblems:\n${problems.map((p) => `- ${p}`).join('\n')}`);
  process.exitCode = 1;
}
