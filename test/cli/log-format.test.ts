// --log-format json: every line on stderr is one JSON object (time, level, msg, event, key, and the event's
// fields), for log pipelines; results stay on stdout; no colors and no live line; passwords still masked.
import { describe, expect, test } from 'vitest';
import { DEFAULT_LOCK_KEY } from '../../src/index.js';
import { createTestDatabase } from '../helpers.js';
import { CHILD, cli, fixture, hasScript, holdLock, start, startOnTerminal } from './cli.js';

const [url, knexUrl] = await Promise.all([createTestDatabase(), createTestDatabase()]);
const JSON_LOGS = ['--log-format', 'json'];

interface Line {
  time: string;
  level: string;
  msg: string;
  event: string;
  key: string | null;
  [field: string]: unknown;
}

/** Every stderr line, parsed; a line that is not one JSON object with the fields fails the test. */
function lines(stderr: string): Line[] {
  return stderr
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => {
      const parsed = JSON.parse(line) as Line;
      expect(Object.keys(parsed).slice(0, 5), line).toEqual(['time', 'level', 'msg', 'event', 'key']);
      expect(new Date(parsed.time).toISOString()).toBe(parsed.time);
      expect(['info', 'warn', 'error']).toContain(parsed.level);
      expect(typeof parsed.msg).toBe('string');
      expect(typeof parsed.event).toBe('string');
      return parsed;
    });
}
const events = (parsed: Line[]) => parsed.map((line) => line.event);

describe('--log-format json', () => {
  test('run: the database, the lock acquired and released, CMD’s exit; its key as a string', async () => {
    const { code, stderr } = await cli([...JSON_LOGS, 'run', '--', process.execPath, CHILD, 'exit', '0'], {
      env: { DATABASE_URL: url },
    });
    expect(code).toBe(0);
    const parsed = lines(stderr);
    expect(events(parsed)).toEqual(['database', 'lock.acquired', 'run.exited', 'lock.released']);
    expect(parsed.every((line) => line.key === String(DEFAULT_LOCK_KEY))).toBe(true);
    expect(parsed[1]).toMatchObject({ level: 'info', pid: expect.any(Number), waitedMs: expect.any(Number) });
    expect(parsed[2]).toMatchObject({ exitCode: 0 });
    expect(parsed[3]).toMatchObject({ pid: parsed[1]!.pid, heldMs: expect.any(Number) });
    // The password is masked here too.
    expect(parsed[0]!.msg).toContain(':***@');
    expect(stderr).not.toContain(`:${new URL(url).password}@`);
  });

  test('as an option after the command name too; migrate knex: applied on stderr, the result on stdout', async () => {
    const args = ['migrate', 'knex', '--knexfile', fixture('knex/knexfile.cjs'), '--name', 'json-logs'];
    const { code, stdout, stderr } = await cli([...args, ...JSON_LOGS], { env: { DATABASE_URL: knexUrl } });
    expect(code).toBe(0);
    const parsed = lines(stderr);
    expect(events(parsed)).toContain('lock.acquired');
    const applied = parsed.find((line) => line.event === 'migrate.applied');
    expect(applied).toMatchObject({ migrator: 'knex', count: expect.any(Number), applied: expect.any(Array) });
    expect(applied!.count).toBeGreaterThan(0);
    expect(new Set(parsed.map((line) => line.key))).toEqual(new Set([applied!.key]));
    expect(applied!.key).toMatch(/^-?\d+$/);
    // stdout as today.
    expect(stdout).toMatch(/^✔ knex: applied \d+ migrations? \(batch 1\)\n {2}001_/);
  });

  test('a waiting run: lock.waiting with the holder, then acquired once the holder lets go', async () => {
    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    const run = start([...JSON_LOGS, 'run', '--', process.execPath, CHILD, 'exit', '0'], {
      env: { DATABASE_URL: url },
    });
    try {
      await run.waitForOutput(/"event":"lock.waiting"/);
    } finally {
      await holder.release();
    }
    const { code, stderr } = await run.exited;
    expect(code).toBe(0);
    const parsed = lines(stderr);
    expect(events(parsed).slice(0, 3)).toEqual(['database', 'lock.waiting', 'lock.acquired']);
    expect(parsed[1]!.msg).toContain(`backend pid ${holder.pid}`);
    expect(parsed[2]!.waitedMs).toBeGreaterThan(0);
  });

  test('errors: a usage error before any key, a lock not acquired (with its hint); exit codes as in text', async () => {
    const usage = await cli([...JSON_LOGS, 'run', '--timeout', 'soon', '--', 'true'], { env: { DATABASE_URL: url } });
    expect(usage.code).toBe(2);
    const [bad] = lines(usage.stderr);
    expect(bad).toMatchObject({ level: 'error', event: 'usage', key: null });

    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    try {
      const busy = await cli([...JSON_LOGS, 'run', '--no-wait', '--', process.execPath, CHILD, 'exit', '0'], {
        env: { DATABASE_URL: url },
      });
      expect(busy.code).toBe(75);
      const parsed = lines(busy.stderr);
      expect(parsed.at(-1)).toMatchObject({
        level: 'error',
        event: 'error',
        key: String(DEFAULT_LOCK_KEY),
        hint: expect.stringContaining('pg-migration-lock status'),
      });
      expect(parsed.at(-1)!.msg).toContain(`backend pid ${holder.pid}`);
    } finally {
      await holder.release();
    }

    const noUrl = await cli([...JSON_LOGS, 'status'], { env: {} });
    expect(noUrl.code).toBe(2);
    expect(lines(noUrl.stderr).at(-1)).toMatchObject({ level: 'error', event: 'error' });
  });

  test('release --force --yes: the holder it terminates, as one line too', async () => {
    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    try {
      const { code, stderr } = await cli([...JSON_LOGS, 'release', '--force', '--yes'], {
        env: { DATABASE_URL: url },
      });
      expect(code).toBe(0);
      const parsed = lines(stderr);
      expect(parsed.find((line) => line.event === 'release.target')).toMatchObject({ pid: holder.pid });
      expect(parsed.at(-1)).toMatchObject({ event: 'release.forced', terminated: [holder.pid] });
    } finally {
      await holder.release();
    }
  });

  test.runIf(hasScript)('on a terminal: no live line and no colors', async () => {
    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    const run = startOnTerminal([...JSON_LOGS, 'run', '--', process.execPath, CHILD, 'exit', '0'], {
      env: { DATABASE_URL: url },
    });
    try {
      await run.waitForOutput(/"event":"lock.waiting"/);
      await new Promise((resolve) => setTimeout(resolve, 1200));
    } finally {
      await holder.release();
    }
    const { code, stdout } = await run.exited;
    expect(code).toBe(0);
    expect(stdout).not.toContain('\x1b[');
    expect(stdout).not.toContain('⏳');
    for (const line of stdout.split(/\r?\n/).filter(Boolean)) expect(() => JSON.parse(line), line).not.toThrow();
  });
});
