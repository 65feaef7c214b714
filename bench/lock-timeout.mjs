// The lock-timeout section of `npm run bench`: the app's worst query latency while a migration's ALTER TABLE is
// blocked behind a reader's open transaction, without and with lockTimeoutMs, side by side in one run. The scenario
// (test/fixtures/lock-timeout/scenario.mjs): the reader holds the table for `lockTimeoutHoldMs`, the app queries it
// every 50 ms, the migration adds a column. Also checks that the migration applied exactly once either way.
import pg from 'pg';
import { withMigrationLock } from 'pg-migration-lock';
import { applied, blockedMigration, prepare } from '../test/fixtures/lock-timeout/scenario.mjs';
import { BENCH_KEY, fmtMs as fmt } from './lib.mjs';

const fmtMs = (ms) => `${fmt(ms)} ms`;

const MIGRATIONS = new URL('../test/fixtures/lock-timeout/', import.meta.url).pathname;

/** The wrapped migrations measured: the core on a pool, and (unless --smoke) knex's adapter. */
const RUNNERS = {
  withMigrationLock: {
    open: (url) => new pg.Pool({ connectionString: url }),
    close: (pool) => pool.end(),
    migrate: (pool, lock) =>
      withMigrationLock(
        pool,
        BENCH_KEY,
        async ({ client }) => {
          await client.query('BEGIN');
          await client.query('ALTER TABLE app_data ADD COLUMN extra int');
          await client.query('INSERT INTO lt_runs DEFAULT VALUES');
          await client.query('COMMIT');
        },
        lock,
      ),
  },
  knex: {
    open: async (url) => {
      const { default: knex } = await import('knex');
      return knex({ client: 'pg', connection: url, log: { warn() {}, error() {}, debug() {} } });
    },
    close: (db) => db.destroy(),
    migrate: async (db, lock) => {
      const { latest } = await import('pg-migration-lock/knex');
      return latest(db, { directory: `${MIGRATIONS}knex`, lock });
    },
  },
};

export async function lockTimeout(ctx) {
  const { lockTimeoutHoldMs: holdMs, lockTimeoutMs, lockTimeoutRunners } = ctx.config;
  const rows = [];
  const data = [];
  const targets = [];
  for (const name of lockTimeoutRunners) {
    if (name !== 'withMigrationLock' && !ctx.migrators.includes(name)) continue;
    const runner = RUNNERS[name];
    const measured = {};
    for (const withOption of [false, true]) {
      const url = await ctx.database(`bench_lock_timeout_${name.toLowerCase()}_${withOption ? 'on' : 'off'}`);
      await prepare(url);
      const resource = await runner.open(url);
      let retries = 0;
      const logger = { info() {}, warn: (m) => m.includes('trying again') && retries++, error() {} };
      const lock = withOption ? { logger, lockTimeoutMs, lockRetries: 100 } : { logger };
      ctx.log(`lock-timeout: ${name}, ${withOption ? `lockTimeoutMs ${lockTimeoutMs}` : 'no lock timeout'}`);
      const result = await blockedMigration(url, () => runner.migrate(resource, lock), { holdMs });
      await runner.close(resource);
      const { runs } = await applied(url);
      await ctx.drop(url);
      if (result.error) ctx.problem(`lock-timeout ${name}: the migration failed: ${result.error}`);
      if (runs.length !== 1) ctx.problem(`lock-timeout ${name}: the migration applied ${runs.length} times`);
      measured[withOption] = result.worstMs;
      rows.push([
        name,
        withOption ? `${lockTimeoutMs} ms` : '—',
        fmtMs(holdMs),
        fmtMs(result.worstMs),
        String(result.queries),
        String(retries + 1),
        runs.length === 1 ? 'yes' : `NO (${runs.length})`,
      ]);
      data.push({ migrator: name, lockTimeoutMs: withOption ? lockTimeoutMs : null, holdMs, ...pick(result), retries });
    }
    const ok = measured.true < holdMs / 2;
    targets.push({
      what: `${name}: the app's worst query while the migration is blocked, lockTimeoutMs ${lockTimeoutMs}`,
      target: `< half the ${fmtMs(holdMs)} hold (without: ${fmtMs(measured.false)})`,
      measured: fmtMs(measured.true),
      met: ok ? '✔' : '✘',
      ok,
    });
  }
  return {
    headers: [
      'migration',
      'lockTimeoutMs',
      'reader holds',
      "app's worst query",
      'app queries',
      'tries',
      'applied once',
    ],
    rows,
    notes: [
      `A reader holds the table in an open transaction until ${fmtMs(holdMs)} after the migration first waits for it; the app runs SELECT count(*) on it every 50 ms; the migration adds a column (lockRetries 100 with the option). Without a lock timeout the ALTER waits for the reader, and every app query queues behind it.`,
    ],
    targets,
    data,
  };
}

const pick = ({ worstMs, queries, endedBeforeReader }) => ({ worstMs, queries, endedBeforeReader });
