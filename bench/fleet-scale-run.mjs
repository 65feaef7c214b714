// One fleet run of the bench's fleetscale section, as an OS process: it imports the package, builds its fleet
// migrator, runs `migrateEach` once on the targets and reports one `RESULT {json}` line: the run's own time, the
// time from the process's start, the counts, and the largest RSS it saw (sampled every 20 ms).
//
//   fleet-scale-run.mjs <migrator> <migrations dir> <targets.json> <concurrency> [canary]
//   fleet-scale-run.mjs bare-knex <migrations dir> <targets.json> <concurrency>   (a hand-written loop, no lock)
import { readFileSync } from 'node:fs';
import { migrateEach } from 'pg-migration-lock';
import { fleetMigrator, quietKnex } from './migrators.mjs';

/** What a team writes without the library: knex per schema, `concurrency` at a time, no lock, no check first. */
async function bareKnex(dir, targets, concurrency) {
  const { default: knex } = await import('knex');
  const counts = { applied: 0, upToDate: 0, failed: 0 };
  let next = 0;
  const worker = async () => {
    while (next < targets.length) {
      const { url, schema } = targets[next++];
      const db = knex({
        client: 'pg',
        connection: url,
        searchPath: [schema, 'public'],
        pool: { min: 0, max: 1 },
        migrations: { directory: dir, schemaName: schema },
        log: quietKnex,
      });
      try {
        const [, applied] = await db.migrate.latest();
        counts[applied.length > 0 ? 'applied' : 'upToDate']++;
      } catch {
        counts.failed++;
      } finally {
        await db.destroy();
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { counts };
}

const [migrator, dir, targetsFile, concurrency, canary] = process.argv.slice(2);
const targets = JSON.parse(readFileSync(targetsFile, 'utf8'));
let rssMax = 0;
const sample = () => {
  rssMax = Math.max(rssMax, process.memoryUsage.rss());
};
const sampler = setInterval(sample, 20);
const started = performance.now();
let report;
if (migrator === 'bare-knex') report = await bareKnex(dir, targets, Number(concurrency));
else {
  const fleet = await fleetMigrator(migrator, dir);
  report = await migrateEach(targets, fleet, {
    concurrency: Number(concurrency),
    canary: canary ? Number(canary) : 0,
    logger: null,
  });
}
const runMs = performance.now() - started;
clearInterval(sampler);
sample();
const applied = new Set(
  (report.results ?? []).filter((r) => r.status === 'applied').map((r) => r.target.schema ?? r.target.name),
);
console.log(
  `RESULT ${JSON.stringify({
    runMs,
    sinceStartMs: performance.now(),
    counts: report.counts,
    stoppedBy: report.stoppedBy ?? null,
    rssMaxMiB: rssMax / 2 ** 20,
    applied: [...applied],
  })}`,
);
