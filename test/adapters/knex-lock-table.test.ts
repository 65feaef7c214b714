import knexFactory, { type Knex } from 'knex';
import { expect, test } from 'vitest';
import { latest } from '../../adapters/knex.js';
import { cli, fixture as cliFixture } from '../cli/cli.js';
import { createTestDatabase, fixture, silentKnexLog } from '../helpers.js';

// A knex_migrations_lock with two rows at is_locked = 0, as bare knex runs racing to create it leave it (each
// inserted "the" row): knex's lock update then changes 2 rows, not 1, and every later bare run fails with
// "Migration table is already locked". Under our lock, the adapter repairs it with knex's own
// forceFreeMigrationsLock (one row, unlocked) and says so.

const MIGRATIONS = ['001_create_widgets.cjs', '002_slow_add_size.cjs', '003_index_name.cjs'];
const config = { directory: fixture('knex/migrations') };
const REPAIRED =
  /^Repaired knex_migrations_lock: it had 2 rows \(knex runs racing without a lock each added one\), where knex needs exactly one; no other run holds the migration lock$/;

/** A knex on a new database whose lock table has the two unlocked rows of a bare race. */
async function wedged(migrate?: Knex.MigratorConfig): Promise<{ db: Knex; url: string }> {
  const url = await createTestDatabase();
  const db = knexFactory({ client: 'pg', connection: url, log: silentKnexLog });
  if (migrate) await db.migrate.latest(migrate);
  // knex's own set-up of its tables (migrate.list creates them, and the lock table's one row)…
  else await db.migrate.list(config);
  // …and the row a second racing run added.
  await db('knex_migrations_lock').insert({ is_locked: 0 });
  await expect(db.migrate.latest(config)).rejects.toThrow('Migration table is already locked');
  return { db, url };
}

/** A logger that keeps the warnings. */
const keepWarnings = (warnings: string[]) => ({ info() {}, error() {}, warn: (m: string) => warnings.push(m) });

test('latest(): the lock table is repaired with a warning, and the pending migrations apply', async () => {
  const { db } = await wedged();
  try {
    const warnings: string[] = [];
    await expect(latest(db, { ...config, lock: { logger: keepWarnings(warnings) } })).resolves.toEqual([1, MIGRATIONS]);
    expect(warnings).toEqual([expect.stringMatching(REPAIRED)]);
    expect(await db('knex_migrations_lock').select('is_locked')).toEqual([{ is_locked: 0 }]);
    // Bare knex works again.
    await expect(db.migrate.latest(config)).resolves.toEqual([1, []]);
  } finally {
    await db.destroy();
  }
});

test('latest() with nothing pending still repairs it (it takes the lock for that), with a warning', async () => {
  const { db } = await wedged(config);
  try {
    const warnings: string[] = [];
    await expect(latest(db, { ...config, lock: { logger: keepWarnings(warnings) } })).resolves.toEqual([1, []]);
    expect(warnings).toEqual([expect.stringMatching(REPAIRED)]);
    expect(await db('knex_migrations_lock').select('is_locked')).toEqual([{ is_locked: 0 }]);
    // Repaired once: the next run has nothing to say.
    warnings.length = 0;
    await expect(latest(db, { ...config, lock: { logger: keepWarnings(warnings) } })).resolves.toEqual([1, []]);
    expect(warnings).toEqual([]);
  } finally {
    await db.destroy();
  }
});

test('migrate knex (CLI): the warning is printed and the migrations apply', async () => {
  const { db, url } = await wedged();
  try {
    const { code, stdout, stderr } = await cli(['migrate', 'knex', '--knexfile', cliFixture('knex/knexfile.cjs')], {
      env: { DATABASE_URL: url },
    });
    expect(code, stderr).toBe(0);
    expect(stdout).toBe('✔ knex: applied 2 migrations (batch 1)\n  001_create_gadgets.cjs\n  002_slow_add_size.cjs\n');
    expect(stderr.split('\n').filter((line) => line.startsWith('warning: '))).toEqual([
      expect.stringMatching(new RegExp(`^warning: ${REPAIRED.source.slice(1)}`)),
    ]);
    expect(await db('knex_migrations_lock').select('is_locked')).toEqual([{ is_locked: 0 }]);
  } finally {
    await db.destroy();
  }
});
