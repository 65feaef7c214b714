// The CMD of the chaos section's `pg-migration-lock run`: a migration that works in steps, each an
// autocommit statement that takes 0.1 to 2 s (long enough to outlive its client, as a real migration's
// statement does) and records its replica and the server's clock when it started and as it commits. On
// SIGTERM it finishes the step in flight and stops, as migrators do.
//   node chaos-step.mjs REPLICA ROUND STEPS
import pg from 'pg';

const [replica, round, steps] = process.argv.slice(2).map(Number);
let stop = false;
process.on('SIGTERM', () => (stop = true));
process.on('SIGINT', () => (stop = true));
// The connection carries the holding's tag, from the DATABASE_URL that `run` gives CMD.
const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
client.on('error', () => {});
// statement_timestamp(): when the statement arrived; clock_timestamp(), projected after pg_sleep: as it ends.
const STEP =
  'INSERT INTO beats (replica, round, started, at) SELECT $1, $2, statement_timestamp(), clock_timestamp() FROM pg_sleep($3)';
try {
  await client.connect();
  for (let i = 0; i < steps && !stop; i++) await client.query(STEP, [replica, round, 0.1 + Math.random() * 1.9]);
} catch (error) {
  console.error(`step failed: ${error.message}`);
  process.exitCode = 1;
}
await client.end().catch(() => {});
