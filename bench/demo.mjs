// npm run demo [-- --replicas N]
// Starts a throwaway PostgreSQL, then for each migrator starts N replica processes at once on the same
// pending migrations: first with the bare migrator, then through pg-migration-lock, each time on a fresh
// database. The migrations are the test suite's: a table, a slow step (~0.5 s, like a backfill), an index.
import { parseArgs } from 'node:util';
import { appliedMigrations, MIGRATORS, race } from '../test/fixtures/adapters/race.mjs';
import { createDatabase, startPostgres } from '../test/postgres.mjs';

let values;
try {
  ({ values } = parseArgs({
    options: { replicas: { type: 'string', default: '8' }, help: { type: 'boolean', short: 'h' } },
  }));
} catch (error) {
  console.error(`${error.message}\nUsage: npm run demo [-- --replicas N]`);
  process.exit(2);
}
if (values.help) {
  console.log('Usage: npm run demo [-- --replicas N]   (default 8; set BENCH_DATABASE_URL to use your own server)');
  process.exit(0);
}
const replicas = Number(values.replicas);
if (!Number.isInteger(replicas) || replicas < 2 || replicas > 100) {
  console.error(`--replicas must be a whole number from 2 to 100, got ${values.replicas}`);
  process.exit(2);
}

const server = await startPostgres({ url: process.env.BENCH_DATABASE_URL });
process.once('SIGINT', () => server.stop().finally(() => process.exit(130)));
console.log(`PostgreSQL ${server.version}: ${replicas} replicas per run, started at once, on a fresh database each.\n`);

const rows = [];
const reasons = [];
try {
  for (const migrator of Object.keys(MIGRATORS)) {
    for (const mode of ['bare', 'locked']) {
      const databaseUrl = await createDatabase(server.url, `demo_${migrator.replaceAll('-', '_')}_${mode}`);
      process.stderr.write(`  ${migrator}, ${mode === 'bare' ? 'bare' : 'through pg-migration-lock'}…\n`);
      const outcome = await race({
        migrator,
        mode,
        replicas,
        databaseUrl,
        // drizzle replicas alternate between a db over a Pool and one over a Client.
        args: migrator === 'drizzle' ? (i) => [i % 2 ? 'client' : 'pool'] : undefined,
      });
      const applied = await appliedMigrations(databaseUrl, migrator);
      rows.push({
        migrator,
        mode: mode === 'bare' ? 'bare' : 'pg-migration-lock',
        failed: `${outcome.failed} of ${replicas}`,
        applied: `${applied.total} of ${MIGRATORS[migrator].expected}${applied.distinct < applied.total ? ' (duplicates!)' : ''}`,
        wall: `${(outcome.wallMs / 1000).toFixed(1)} s`,
      });
      for (const error of new Set(outcome.results.filter((r) => r.code !== 0).map((r) => r.error))) {
        const count = outcome.results.filter((r) => r.code !== 0 && r.error === error).length;
        reasons.push(`  ${migrator} ${mode}, ${count}×: ${truncate(error ?? 'exited without a message', 150)}`);
      }
    }
  }
} finally {
  await server.stop();
}

printTable(rows, {
  migrator: 'migrator',
  mode: 'mode',
  failed: 'replicas failed',
  applied: 'migrations applied',
  wall: 'wall time',
});
console.log(
  '\nreplicas failed: processes that exited non-zero (in a deployment, pods in a crash loop).' +
    "\nmigrations applied: rows in the migrator's own table, of the 3 pending.",
);
if (reasons.length) console.log(`\nWhy replicas failed:\n${reasons.join('\n')}`);

function printTable(data, headers) {
  const keys = Object.keys(headers);
  const widths = keys.map((k) => Math.max(headers[k].length, ...data.map((row) => row[k].length)));
  const line = (cells) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  console.log(line(keys.map((k) => headers[k])));
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const row of data) console.log(line(keys.map((k) => row[k])));
}

function truncate(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
