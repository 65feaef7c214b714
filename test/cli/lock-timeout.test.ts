// --lock-timeout and --lock-retries on `run` (CMD gets PGOPTIONS=-c lock_timeout=…, and a failure whose stderr says
// "lock timeout" or 55P03 runs CMD again) and on `migrate` (the adapter's lock options), blocked behind a reader.
import { describe, expect, test } from 'vitest';
import { DEFAULT_LOCK_KEY } from '../../src/index.js';
import { expectAppliedOnceAfterReader } from '../fixtures/lock-timeout/expect.js';
import { applied, blockedMigration, prepare } from '../fixtures/lock-timeout/scenario.mjs';
import { createTestDatabase, lockRows, fixture as testFixture } from '../helpers.js';
import { cli } from './cli.js';

const [runUrl, migrateUrl, exhaustedUrl] = (await Promise.all([
  createTestDatabase(),
  createTestDatabase(),
  createTestDatabase(),
])) as [string, string, string];
const ALTER = testFixture('lock-timeout/cli-alter.mjs');
const KNEXFILE = testFixture('lock-timeout/knex-cli/knexfile.cjs');
const HOLD_MS = 3000;

describe('usage errors (exit 2)', () => {
  test.each([
    [['run', '--lock-timeout', 'soon', '--', 'true'], 'Expected a duration like 1500ms, 30s, 5m or 1h.'],
    [['run', '--lock-timeout', '0ms', '--', 'true'], 'Expected a duration from 1ms to 2147483647ms.'],
    [['run', '--lock-retries', '-1', '--', 'true'], 'Expected an integer from 0 to 1000.'],
    [['migrate', 'knex', '--lock-retries', '1.5'], 'Expected an integer from 0 to 1000.'],
    [['migrate', 'knex', '--lock-timeout', '25d'], 'Expected a duration like 1500ms, 30s, 5m or 1h.'],
  ])('%j', async (args, message) => {
    const { code, stderr } = await cli(args, { env: { DATABASE_URL: runUrl } });
    expect(code).toBe(2);
    expect(stderr).toContain(message);
  });
});

describe('blocked behind a reader, with --lock-timeout 500ms', () => {
  test('run: CMD gets the lock_timeout; a failure by lock timeout runs it again until it applies, once', async () => {
    await prepare(runUrl);
    const result = await blockedMigration(
      runUrl,
      () =>
        cli(['run', '--lock-timeout', '500ms', '--lock-retries', '30', '--', process.execPath, ALTER], {
          env: { DATABASE_URL: runUrl, PGOPTIONS: '-c statement_timeout=120s' },
        }),
      { holdMs: HOLD_MS },
    );
    const { code, stdout, stderr } = result.value!;
    expect(code, stderr).toBe(0);
    // PGOPTIONS kept what was there, and got the lock timeout.
    expect(stdout).toMatch(/^lock_timeout=500ms statement_timeout=2min$/m);
    expect(result.worstMs).toBeLessThan(HOLD_MS / 2);
    // CMD's own stderr passes through; each failed try is logged with the reader that blocked it.
    expect(stderr).toContain('migration failed: canceling statement due to lock timeout (SQLSTATE 55P03)');
    expect(stderr).toMatch(
      new RegExp(
        `try 1 of 31: a statement waited longer than lock_timeout 500ms for a table lock, held by pid ${result.readerPid} \\(application_name long-reader\\)[^\\n]*SELECT count\\(\\*\\) FROM app_data`,
      ),
    );
    await expectAppliedOnceAfterReader(runUrl, result.readerEndedAt);
  });

  test('migrate knex: the adapter takes the options', async () => {
    await prepare(migrateUrl);
    const result = await blockedMigration(
      migrateUrl,
      () =>
        cli(['migrate', 'knex', '--knexfile', KNEXFILE, '--lock-timeout', '500ms', '--lock-retries', '30'], {
          env: { DATABASE_URL: migrateUrl },
        }),
      { holdMs: HOLD_MS },
    );
    const { code, stdout, stderr } = result.value!;
    expect(code, stderr).toBe(0);
    expect(stdout).toContain('001_add_extra.cjs');
    expect(result.worstMs).toBeLessThan(HOLD_MS / 2);
    expect(stderr).toContain(`held by pid ${result.readerPid} (application_name long-reader)`);
    expect((await applied(migrateUrl)).runs).toHaveLength(1);
  });

  test("run: retries exhausted: CMD's exit code (1 here), naming the blocker and the tries; the lock is free, nothing applied", async () => {
    await prepare(exhaustedUrl);
    const result = await blockedMigration(
      exhaustedUrl,
      () =>
        cli(['run', '--lock-timeout', '200ms', '--lock-retries', '1', '--', process.execPath, ALTER], {
          env: { DATABASE_URL: exhaustedUrl },
        }),
      { holdMs: 8000 },
    );
    expect(result.endedBeforeReader).toBe(true);
    const { code, stderr } = result.value!;
    expect(code).toBe(1);
    expect(stderr).toMatch(
      new RegExp(
        `error: Migration under lock .* gave up after 2 tries: .*held by pid ${result.readerPid} \\(application_name long-reader\\)`,
      ),
    );
    expect(await lockRows(exhaustedUrl, DEFAULT_LOCK_KEY)).toEqual([]);
    expect(await applied(exhaustedUrl)).toEqual({ runs: [], column: false });
  });
});
