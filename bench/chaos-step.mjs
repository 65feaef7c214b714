// The CMD of the chaos section's `pg-migration-lock run`: a migration that works in steps, each an
// autocommit statement that takes 50 ms and records its replica and the server's clock as it commits.
// On SIGTERM it finishes the step in flight and stops, as migrators do.
//   node chaos-step.mjs REPLICA ROUND STEPS
import pg from 'pg';

const [replica, round, steps] = process.argv.slice(2).map(Number);
let stop = false;
process.on('SIGTERM', () => (stop = true));
process.on('SIGINT', () => (stop = true));
// The connection carries the holding's tag, from the DATABASE_URL that `run` gives CMD.
const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
client.on('error', () => {});
try {
  await client.connect();
  for (let i = 0; i < steps && !stop; i++) {
    await client.query('INSERT INTO beats (replica, round, at) SELECT $1, $2, clock_timestamp() FROM pg_sleep(0.05)', [
      replica,
      round,
    ]);
  }
} catch {
  process.exitCode = 1;
}
await client.end().catch(() => {});
