import { expect } from 'vitest';
import { appliedMigrations, type Migrator, race } from '../fixtures/adapters/race.mjs';
import { withClient } from '../helpers.js';

type Outcome = Awaited<ReturnType<typeof race>>;

/** Logs a race's figures (they go to the README), with the distinct reasons replicas failed. */
export function report(migrator: Migrator, mode: 'locked', outcome: Outcome, note = ''): void {
  const reasons = [...new Set(outcome.results.flatMap((r) => (r.code === 0 ? [] : [r.error])))];
  const holdings = outcome.results.flatMap((r) => (r.holding ? [r.holding] : []));
  const seen = holdings.length
    ? `, lock taken by ${holdings.length}, ${holdings.filter((h) => h.samples > 0).length} of them seen holding it in pg_locks (${holdings.reduce((n, h) => n + h.samples, 0)} observations)`
    : '';
  console.info(
    `[race] ${migrator} ${mode}${note}: ${outcome.failed}/${outcome.results.length} replicas failed, wall ${Math.round(outcome.wallMs)} ms${seen}${reasons.length ? ` — ${reasons.join(' | ')}` : ''}`,
  );
}

/** Every replica exited 0 (on failure, the assertion shows their stderr). */
export function expectAllSucceeded(outcome: Outcome): void {
  expect(outcome.results.filter((r) => r.code !== 0).map((r) => r.stderr)).toEqual([]);
}

/**
 * The lock itself excluded, whatever the migrator's own end state says. Each replica that took the lock
 * watched pg_locks from a connection of its own while it held it (lock-seen.mjs), and reported what it saw
 * even if it then failed. Asserted: in every observation that showed a replica's lock session holding the
 * key (objsubid 1), it was the only granted holder, in ExclusiveLock mode; the spans over which replicas
 * were seen holding (server clock, each inside its holding) never overlap; and the check is not vacuous:
 * a replica that ran migrations was seen holding, and so was at least one whenever one took the lock.
 */
export function expectExclusiveHoldings(outcome: Outcome): void {
  const holdings = outcome.results.flatMap((r) => (r.holding ? [r.holding] : []));
  const origin = Math.min(...holdings.flatMap((h) => [h.fromMs ?? Infinity, ...h.shared.map((s) => s.atMs)]));
  const at = (ms: number) => `+${(ms - origin).toFixed(1)} ms`;
  const problems: string[] = [];
  for (const replica of outcome.results) {
    const { holding } = replica;
    if (!holding) {
      if (replica.result?.locked)
        problems.push('a replica took the lock but reported no holding (run it through race())');
      continue;
    }
    const { pid, key, error, samples, shared } = holding;
    if (error) problems.push(`pid ${pid}: watching pg_locks failed: ${error}`);
    const ran = replica.result?.ran ?? [];
    if (ran.length > 0 && samples === 0)
      problems.push(`pid ${pid} ran ${ran.join(', ')} but was never seen holding the lock`);
    for (const seen of shared) {
      const granted = seen.holders.map((h) => `pid ${h.pid} ${h.mode}`).join(', ');
      problems.push(`while pid ${pid} held key ${key}, pg_locks at ${at(seen.atMs)} granted it to: ${granted}`);
    }
  }
  const spans = holdings
    .filter((h) => h.fromMs !== null && h.toMs !== null && h.fromMs <= h.toMs)
    .map((h) => ({ pid: h.pid, from: h.fromMs as number, to: h.toMs as number }))
    .sort((a, b) => a.from - b.from);
  spans.forEach((a, i) => {
    for (const b of spans.slice(i + 1)) {
      if (b.from < a.to) {
        problems.push(
          `pid ${a.pid} held the lock over [${at(a.from)}, ${at(a.to)}] and pid ${b.pid} over [${at(b.from)}, ${at(b.to)}]: both at once`,
        );
      }
    }
  });
  if (holdings.length > 0 && !holdings.some((h) => h.samples > 0)) {
    problems.push(`${holdings.length} replica(s) took the lock, none was ever seen holding it`);
  }
  expect(problems, 'the lock excluded every other session while a replica held it').toEqual([]);
}

/**
 * `replicas` replicas on an up-to-date database: all succeed, none ran a migration, waited or took the
 * lock (onAcquired, which records waitedMs, never fired).
 */
export async function expectUpToDateRace(migrator: Migrator, databaseUrl: string, replicas: number): Promise<void> {
  const outcome = await race({ migrator, mode: 'locked', replicas, databaseUrl });
  report(migrator, 'locked', outcome, ' (up to date)');
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  for (const replica of outcome.results) expect(replica.result).toMatchObject({ ran: [], waited: false });
  expect(outcome.results.filter((r) => r.result?.waitedMs !== undefined)).toEqual([]);
}

/**
 * 6 replicas race on two migrations, the second a `CREATE INDEX CONCURRENTLY` outside a transaction
 * (`migrations-cic`): all succeed, some waited while it ran (queued; they then found nothing left to do,
 * or took the lock), and the index is valid. With `barrier`, the replicas start together (a start line, for
 * fixtures that take one), so some surely wait however slowly the processes start.
 */
export async function expectCicRace(
  migrator: Migrator,
  databaseUrl: string,
  { replicas = 6, barrier = false }: { replicas?: number; barrier?: boolean } = {},
): Promise<void> {
  const args = () => ['migrations-cic', ...(barrier ? [`barrier=${replicas}`] : [])];
  const outcome = await race({ migrator, mode: 'locked', replicas, databaseUrl, args });
  report(migrator, 'locked', outcome, ' (CREATE INDEX CONCURRENTLY)');
  expectExclusiveHoldings(outcome);
  expectAllSucceeded(outcome);
  expect(outcome.results.filter((r) => r.result?.waited).length).toBeGreaterThan(0);
  expect(await appliedMigrations(databaseUrl, migrator)).toEqual({ total: 2, distinct: 2 });
  await withClient(databaseUrl, async (client) => {
    const index = await client.query(`SELECT indisvalid FROM pg_index WHERE indexrelid = 'gadgets_name_idx'::regclass`);
    expect(index.rows).toEqual([{ indisvalid: true }]);
  });
}

/**
 * The three race migrations were applied (widgets with a size column and a name index), and the session
 * that ran them held exactly the lock `key`: lock and migration share fate.
 */
export async function expectMigratedOnLockSession(databaseUrl: string, key: bigint): Promise<void> {
  await withClient(databaseUrl, async (client) => {
    const columns = await client.query(
      `SELECT column_name FROM information_schema.columns WHERE table_name = 'widgets' ORDER BY column_name`,
    );
    expect(columns.rows.map((r) => r.column_name)).toEqual(['id', 'name', 'size']);
    expect((await client.query(`SELECT to_regclass('widgets_name_idx') AS idx`)).rows[0].idx).toBe('widgets_name_idx');
    const session = await client.query('SELECT advisory_keys FROM migration_session');
    expect(session.rows[0].advisory_keys).toEqual([key.toString()]);
  });
}
