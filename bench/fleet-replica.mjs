// One fleet run of the bench's fleet section, as an OS process (a replica, a pod of a deploy job). It imports
// everything and builds its fleet migrator first, says `ready`, then starts on the first line read from stdin,
// so runs started together start on one signal. It reports one `RESULT {json}` line (times: process.hrtime).
//
//   fleet-replica.mjs <migrator> <migrations dir> <targets.json> <concurrency>
import { promises as fs, readFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { migrateEach } from 'pg-migration-lock';

const quietKnex = { warn() {}, error() {}, deprecate() {}, debug() {} };

/** Each migrator's fleet migrator over `dir` (written by bench/migrators.mjs), from the package as an app uses it. */
const FLEETS = {
  knex: async (dir) =>
    (await import('pg-migration-lock/knex')).fleet({ migrations: { directory: dir }, log: quietKnex }),
  'node-pg-migrate': async (dir) =>
    (await import('pg-migration-lock/node-pg-migrate')).fleet({
      dir,
      direction: 'up',
      migrationsTable: 'pgmigrations',
      log: () => {},
    }),
  drizzle: async (dir) => (await import('pg-migration-lock/drizzle')).fleet({ migrationsFolder: dir }),
  kysely: async (dir) => {
    // kysely 0.29 has its migrator in 'kysely/migration', 0.28 in 'kysely'.
    const { FileMigrationProvider } = await import('kysely/migration').catch(() => import('kysely'));
    const { fleet } = await import('pg-migration-lock/kysely');
    return fleet({ provider: new FileMigrationProvider({ fs, path, migrationFolder: dir }) });
  },
  typeorm: async (dir) =>
    (await import('pg-migration-lock/typeorm')).fleet({
      type: 'postgres',
      migrations: [path.join(dir, '*.mjs')],
      logging: false,
    }),
};

const [migrator, dir, targetsFile, concurrency] = process.argv.slice(2);
const targets = JSON.parse(readFileSync(targetsFile, 'utf8'));
const fleet = await FLEETS[migrator](dir);
console.log('ready');
const lines = createInterface({ input: process.stdin });
await new Promise((resolve) => lines.once('line', resolve));
lines.close();
process.stdin.destroy();

const start = process.hrtime.bigint();
const report = await migrateEach(targets, fleet, { concurrency: Number(concurrency), logger: null });
const end = process.hrtime.bigint();
const results = report.results.map((r) => ({
  schema: r.target.schema,
  status: r.status,
  applied: r.status === 'applied' ? r.applied.length : 0,
  durationMs: r.durationMs,
  error: r.status === 'failed' ? String(r.error?.message ?? r.error).split('\n')[0] : undefined,
}));
console.log(`RESULT ${JSON.stringify({ start: String(start), end: String(end), counts: report.counts, results })}`);
