// One fleet run of the bench's fleet section, as an OS process (a replica, a pod of a deploy job). It imports
// everything and builds its fleet migrator first, says `ready`, then starts on the first line read from stdin,
// so runs started together start on one signal. It reports one `RESULT {json}` line (times: process.hrtime).
//
//   fleet-replica.mjs <migrator> <migrations dir> <targets.json> <concurrency>
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { migrateEach } from 'pg-migration-lock';
import { fleetMigrator } from './migrators.mjs';

const [migrator, dir, targetsFile, concurrency] = process.argv.slice(2);
const targets = JSON.parse(readFileSync(targetsFile, 'utf8'));
const fleet = await fleetMigrator(migrator, dir);
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
