// Staged rollouts of a fleet: a canary (the first targets with something to apply migrate alone, a failure among
// them stops the run, a run again resumes) and a failure budget (a number of targets or a share of the fleet).
import { expect, test } from 'vitest';
import { fleet } from '../adapters/knex.js';
import { migrateEach } from '../src/index.js';
import { eventCounts, prepareTenants, schemaTargets } from './fixtures/fleet/tenants.js';
import { createTestDatabase, fixture, silentKnexLog, withClient } from './helpers.js';

const [canaryUrl, passUrl, budgetUrl, shareUrl] = (await Promise.all(
  Array.from({ length: 4 }, () => createTestDatabase()),
)) as [string, string, string, string];
// Short migrations (see test/fixtures/fleet/sql.cjs), set on these databases rather than in this process.
for (const url of [canaryUrl, passUrl, budgetUrl, shareUrl]) {
  await withClient(url, (client) =>
    client.query(`ALTER DATABASE "${new URL(url).pathname.slice(1)}" SET pgml.fleet_sleep = '0.05'`),
  );
}
const knexFleet = () => fleet({ migrations: { directory: fixture('fleet/knex') }, log: silentKnexLog });
const names = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}_${i + 1}`);
/** The schemas whose migrations ran (fleet_events). */
const migrated = async (url: string) => [...new Set(Object.keys(await eventCounts(url)).map((at) => at.split('/')[0]))];

test('a failing canary stops the run before the rest start: they end not-run; a run again after the fix resumes', async () => {
  await prepareTenants(canaryUrl, ['bad']);
  const schemas = ['bad', ...names('t', 9)];
  const report = await migrateEach(schemaTargets(canaryUrl, schemas), knexFleet(), {
    canary: 2,
    concurrency: 4,
    logger: null,
  });
  const status = Object.fromEntries(report.results.map((r) => [r.target.schema, r.status]));
  expect(status.bad).toBe('failed');
  // The second canary (t_1) ran beside it; no other target started.
  expect(status.t_1).toBe('applied');
  for (const schema of names('t', 9).slice(1)) expect(status[schema]).toBe('not-run');
  expect(report).toMatchObject({ ok: false, stoppedBy: 'canary', canary: { size: 2, applied: 1, passed: false } });
  // knex rolled the failing tenant back: only the other canary's migrations ran.
  expect(await migrated(canaryUrl)).toEqual(['t_1']);

  await withClient(canaryUrl, (client) => client.query('DROP TABLE bad.poison'));
  const again = await migrateEach(schemaTargets(canaryUrl, schemas), knexFleet(), { canary: 2, logger: null });
  expect(again.ok).toBe(true);
  expect(again.counts).toMatchObject({ applied: 9, upToDate: 1, failed: 0, notRun: 0 });
  expect(again.canary).toEqual({ size: 2, applied: 2, passed: true });
  expect(again.stoppedBy).toBeUndefined();
});

test('canary targets migrate alone: the rest start only once they have applied; up-to-date ones do not count', async () => {
  await prepareTenants(passUrl);
  const schemas = names('t', 8);
  // t_1 and t_2 are up to date already: the canary is the first two with something to apply, t_3 and t_4.
  await migrateEach(schemaTargets(passUrl, schemas.slice(0, 2)), knexFleet(), { logger: null });
  const report = await migrateEach(schemaTargets(passUrl, schemas), knexFleet(), {
    canary: 2,
    concurrency: 4,
    logger: null,
  });
  expect(report.counts).toMatchObject({ applied: 6, upToDate: 2, failed: 0 });
  expect(report.canary).toEqual({ size: 2, applied: 2, passed: true });
  const [row] = await withClient(passUrl, async (client) => {
    const { rows } = await client.query(`SELECT
        (SELECT max(at) FROM public.fleet_events WHERE schema IN ('t_3', 't_4')) AS canary_end,
        (SELECT min(at) FROM public.fleet_events WHERE schema NOT IN ('t_1', 't_2', 't_3', 't_4')) AS rest_start`);
    return rows;
  });
  expect(row.rest_start.getTime()).toBeGreaterThanOrEqual(row.canary_end.getTime());
});

test('maxFailures: once more targets than that have failed, no further target starts', async () => {
  const bad = names('bad', 5);
  await prepareTenants(budgetUrl, bad);
  const schemas = [...bad, ...names('t', 3)];
  const report = await migrateEach(schemaTargets(budgetUrl, schemas), knexFleet(), {
    maxFailures: 2,
    concurrency: 1,
    logger: null,
  });
  expect(report.counts).toMatchObject({ failed: 3, applied: 0, notRun: 5 });
  expect(report.stoppedBy).toBe('max-failures');
  // Within the budget, a failure stops nothing.
  const within = await migrateEach(schemaTargets(budgetUrl, schemas), knexFleet(), {
    maxFailures: 5,
    concurrency: 2,
    logger: null,
  });
  expect(within.counts).toMatchObject({ failed: 5, applied: 3, notRun: 0 });
  expect(within.stoppedBy).toBeUndefined();
});

test("maxFailures as a share of the fleet: '20%' of 10 targets tolerates 2 failures", async () => {
  const bad = names('bad', 4);
  await prepareTenants(shareUrl, bad);
  const report = await migrateEach(schemaTargets(shareUrl, [...bad, ...names('t', 6)]), knexFleet(), {
    maxFailures: '20%',
    concurrency: 1,
    logger: null,
  });
  expect(report.counts).toMatchObject({ failed: 3, notRun: 7 });
  expect(report.stoppedBy).toBe('max-failures');
});

test('canary and maxFailures are checked up front: TypeErrors, a misspelt name named', async () => {
  const targets = [{ url: 'postgres://localhost/x', schema: 's' }];
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ canary: -1 }, /`canary` to be a whole number >= 0/],
    [{ canary: 1.5 }, /`canary`/],
    [{ canary: '2' }, /`canary`/],
    [{ maxFailures: -1 }, /`maxFailures` to be a whole number >= 0 or a percentage/],
    [{ maxFailures: '120%' }, /"120%"/],
    [{ maxFailures: 'two' }, /`maxFailures`/],
    [{ canaries: 2 }, /canary/],
    [{ maxFailure: 2 }, /maxFailures/],
  ];
  for (const [options, message] of bad) {
    await expect(migrateEach(targets, knexFleet(), options as never)).rejects.toThrow(TypeError);
    await expect(migrateEach(targets, knexFleet(), options as never)).rejects.toThrow(message);
  }
});
