// The bare section of `npm run bench`: each migrator's replicas racing WITHOUT pg-migration-lock on fresh
// databases, the suite's race migrations (a table, a slow step, an index), to show what the library is for.
// Reported, never asserted: how many bare replicas fail varies from run to run, and none of it runs the
// library, so no change to the library could make it fail (it was a demonstration in the suite until the
// suite's tests were made to test only what the library does).
import { MIGRATORS, race } from '../test/fixtures/adapters/race.mjs';
import { within } from './lib.mjs';

/** Each bare race: the migrator of race.mjs, the migrations it runs, and the failures it is known for. */
const RACES = [
  { migrator: 'knex', reasons: /already exists|duplicate key value|already locked/ },
  { migrator: 'node-pg-migrate', reasons: /Another migration is already running/ },
  { migrator: 'drizzle', reasons: /already exists|duplicate key value/ },
  { migrator: 'drizzle-postgres-js', reasons: /already exists|duplicate key value/ },
  { migrator: 'typeorm', reasons: /already exists|duplicate key value/ },
  { migrator: 'kysely', reasons: /already exists|duplicate key value|deadlock/ },
  {
    migrator: 'kysely',
    set: 'migrations-cic',
    note: 'CREATE INDEX CONCURRENTLY',
    reasons: /deadlock detected|already exists|duplicate key value/,
  },
];

/** The bench's name of the migrator a race.mjs entry runs (drizzle-postgres-js is drizzle's). */
const benchName = (migrator) => (migrator === 'drizzle-postgres-js' ? 'drizzle' : migrator);

export async function bare(ctx) {
  const replicas = ctx.config.bareReplicas;
  const rows = [];
  const data = [];
  const notes = [];
  for (const { migrator, set, note, reasons } of RACES) {
    if (!ctx.migrators.includes(benchName(migrator)) || !MIGRATORS[migrator]) continue;
    const label = note ? `${migrator} (${note})` : migrator;
    ctx.log(`bare: ${label}, ${replicas} replicas`);
    const url = await ctx.database(`bench_bare_${migrator.replaceAll('-', '_')}${set ? '_cic' : ''}`);
    const outcome = await within(
      300_000,
      race({ migrator, mode: 'bare', replicas, databaseUrl: url, args: () => (set ? [set] : []) }),
      `bare ${label} race`,
    );
    await ctx.drop(url);
    const failures = outcome.results.filter((r) => r.code !== 0);
    const errors = [...new Set(failures.map((r) => r.error ?? `exit ${r.code}`))];
    // A failure for another reason than the migrator's own race says more about the machine than the migrator.
    const other = failures.filter((r) => !reasons.test(r.stderr)).map((r) => r.error ?? `exit ${r.code}`);
    if (other.length)
      notes.push(`${label}: ${other.length} replica(s) failed for another reason: ${other.join(' | ')}`);
    rows.push([label, replicas, `${failures.length} of ${replicas}`, errors.join(' | ') || '—']);
    data.push({
      migrator,
      set: set ?? 'migrations',
      replicas,
      failed: failures.length,
      errors,
      wallMs: outcome.wallMs,
    });
  }
  notes.push(
    'Without the lock, replicas started together fail (or deadlock) on the same pending migrations; how many varies from run to run. The other sections run the same migrators through pg-migration-lock: 0 failures.',
  );
  return { headers: ['migrator', 'replicas', 'failed', 'errors'], rows, notes, targets: [], data };
}
