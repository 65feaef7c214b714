// `migrate <migrator> --each-schema … --canary N | --max-failures N|P%`: a staged rollout from the command line,
// in the summary line and in --json; bad values are usage errors.
import { expect, test } from 'vitest';
import { eventCounts, prepareTenants } from '../fixtures/fleet/tenants.js';
import { createTestDatabase, fixture } from '../helpers.js';
import { cli } from './cli.js';

const url = await createTestDatabase();
await prepareTenants(url, ['bad_1', 'bad_2']);
const knex = (args: string[]) =>
  cli(['migrate', 'knex', '--knexfile', 'knexfile.cjs', ...args], {
    env: { DATABASE_URL: url, FLEET_SLEEP: '0.05' },
    cwd: fixture('fleet/cli'),
  });

test('--canary 1: the failing canary stops the run, the rest not run (--json says why); a run again resumes', async () => {
  const schemas = ['bad_1', 'c_1', 'c_2', 'c_3'].join(',');
  const { code, stdout } = await knex(['--each-schema', schemas, '--canary', '1', '--json']);
  expect(code).toBe(1);
  const report = JSON.parse(stdout);
  expect(report).toMatchObject({
    ok: false,
    stoppedBy: 'canary',
    canary: { size: 1, applied: 0, passed: false },
    counts: { failed: 1, notRun: 3, applied: 0 },
  });
  expect(Object.keys(await eventCounts(url)).filter((at) => at.startsWith('c_'))).toEqual([]);

  const again = await knex(['--each-schema', 'c_1,c_2,c_3', '--canary', '1']);
  expect(again.code, again.stderr).toBe(0);
  expect(again.stdout).toMatch(/^✔ knex: 3 targets in .*: 3 applied, .*, canary passed \(1 of 1 applied\)$/m);
});

test('--max-failures 0 stops after the first failure; the summary line says why', async () => {
  const { code, stdout } = await knex(['--each-schema', 'bad_2,m_1,m_2', '--max-failures', '0', '--concurrency', '1']);
  expect(code).toBe(1);
  expect(stdout).toMatch(
    /^✖ knex: 3 targets in .*: 0 applied, .*1 failed, 2 not run, stopped: more targets failed than --max-failures allows$/m,
  );
});

test('bad --canary and --max-failures values, or either without a fleet: usage errors (exit 2)', async () => {
  const cases: [string[], RegExp][] = [
    [['--each-schema', 'a', '--canary', '-1'], /--canary.*Expected a whole number >= 0/],
    [['--each-schema', 'a', '--canary', 'two'], /Expected a whole number >= 0/],
    [['--each-schema', 'a', '--max-failures', '120%'], /Expected a whole number >= 0, or a percentage/],
    [['--each-schema', 'a', '--max-failures', '1.5'], /Expected a whole number >= 0, or a percentage/],
    [['--canary', '2'], /--canary is for a fleet/],
    [['--max-failures', '5%'], /--max-failures is for a fleet/],
  ];
  for (const [args, message] of cases) {
    const { code, stderr } = await knex(args);
    expect([code, stderr]).toEqual([2, expect.stringMatching(message)]);
  }
});
