import { describe, expect, test } from 'vitest';
import { DEFAULT_LOCK_KEY, lockKey } from '../../src/index.js';
import { createTestDatabase, lockRows, waitFor, withClient } from '../helpers.js';
import { CHILD, cli, hasScript, holdLock, start, startOnTerminal } from './cli.js';

const url = await createTestDatabase();
const env = { DATABASE_URL: url };
const run = (...args: string[]) => ['run', ...args];

/** The backend pid holding the default key, once a holder shows up. */
const holderPid = () =>
  waitFor(async () => (await lockRows(url, DEFAULT_LOCK_KEY)).find((row) => row.granted)?.pid, 10_000, 'a holder');

describe('exit codes', () => {
  test.each([
    ['CMD succeeds', ['exit', '0'], 0],
    ["CMD's own code passes through", ['exit', '7'], 7],
    ['CMD killed by a signal: 128 + n', ['kill', 'SIGKILL'], 137],
  ])('%s', async (_what, mode, expected) => {
    const { code } = await cli(run('--', process.execPath, CHILD, ...mode), { env });
    expect(code).toBe(expected);
    expect(await lockRows(url, DEFAULT_LOCK_KEY)).toEqual([]);
  });

  test('CMD not found: exit 127 as in a shell, one clear message', async () => {
    const { code, stderr } = await cli(run('--', 'no-such-command-xyz'), { env });
    expect(code).toBe(127);
    expect(stderr).toContain('error: Command not found: no-such-command-xyz');
    expect(stderr.match(/error:/g)).toHaveLength(1);
  });

  test('CMD flags after the command need no --', async () => {
    const { code, stdout } = await cli(
      run(process.execPath, '-e', 'console.log(process.argv.slice(1).join(" "))', '--', '--flag', 'x'),
      {
        env,
      },
    );
    expect(code).toBe(0);
    expect(stdout).toBe('--flag x\n');
  });
});

describe('holding the lock while CMD runs', () => {
  test('the lock is held while CMD runs; SIGTERM is forwarded and its exit code passes through', async () => {
    const cmd = start(run('--', process.execPath, CHILD, 'hold'), { env });
    await cmd.waitForOutput(/ready/);
    const rows = await lockRows(url, DEFAULT_LOCK_KEY);
    expect(rows).toHaveLength(1);
    expect(rows[0]!.granted).toBe(true);

    cmd.child.kill('SIGTERM');
    const { code, stdout } = await cmd.exited;
    expect(stdout).toContain('got SIGTERM');
    expect(code).toBe(42);
    expect(await lockRows(url, DEFAULT_LOCK_KEY)).toEqual([]);
  });

  test('SIGTERM that kills CMD: exit 143', async () => {
    const cmd = start(run('--', process.execPath, CHILD, 'hold-default'), { env });
    await cmd.waitForOutput(/ready/);
    cmd.child.kill('SIGTERM');
    expect((await cmd.exited).code).toBe(143);
  });

  test('SIGINT is forwarded too', async () => {
    const cmd = start(run('--', process.execPath, CHILD, 'hold-default'), { env });
    await cmd.waitForOutput(/ready/);
    cmd.child.kill('SIGINT');
    expect((await cmd.exited).code).toBe(130);
  });

  test('lock lost while CMD runs: CMD is stopped, exit 1, clear message', async () => {
    const cmd = start(run('--', process.execPath, CHILD, 'hold'), { env });
    await cmd.waitForOutput(/ready/);
    const pid = await holderPid();
    await withClient(url, (client) => client.query('SELECT pg_terminate_backend($1)', [pid]));
    const { code, stdout, stderr } = await cmd.exited;
    expect(stdout).toContain('got SIGTERM');
    expect(code).toBe(1);
    expect(stderr).toMatch(
      /^error: Lost the migration lock while `.*child\.mjs hold` ran \(terminating connection due to administrator command\): it was stopped \(SIGTERM\), its statements still running on the server were terminated, and what it was doing may be incomplete/m,
    );
    expect(stderr.match(/error:/g)).toHaveLength(1);
  });
});

describe('when another process holds the lock', () => {
  test('--no-wait: exit 75 at once, CMD never runs, the holder is named', async () => {
    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    try {
      const { code, stdout, stderr } = await cli(run('--no-wait', '--', process.execPath, CHILD, 'exit', '0'), { env });
      expect(code).toBe(75);
      expect(stdout).not.toContain('ready');
      expect(stderr).toContain(`is held by backend pid ${holder.pid} (application_name cli-test-holder)`);
    } finally {
      await holder.release();
    }
  });

  test('--timeout 300ms: a plain waiting line (no terminal) naming the holder, then exit 75', async () => {
    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    try {
      const { code, stderr } = await cli(run('--timeout', '300ms', '--', process.execPath, CHILD, 'exit', '0'), {
        env,
      });
      expect(code).toBe(75);
      // It waited the whole timeout, by its own count.
      const [, amount, unit] = /Timed out after ([\d.]+)(ms|s)\b/.exec(stderr) ?? [];
      expect(Number(amount) * (unit === 's' ? 1000 : 1)).toBeGreaterThanOrEqual(300);
      expect(stderr).toMatch(
        new RegExp(
          `^\\[pg-migration-lock\\] Waiting for migration lock .*, held by backend pid ${holder.pid} \\(application_name cli-test-holder\\) from .*, connected .* ago \\(waited \\d+ms of 300ms\\)$`,
          'm',
        ),
      );
      // No live line, no colors: this is not a terminal.
      expect(stderr).not.toContain('\r');
      expect(stderr).not.toContain('\x1b[');
      expect(stderr).toMatch(/error: Timed out after \d+ms waiting for migration lock/);
    } finally {
      await holder.release();
    }
  });

  test('waits, and runs CMD once the holder is gone', async () => {
    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    const cmd = start(run('--', process.execPath, '-e', 'console.log("ran")'), { env });
    await cmd.waitForOutput(/Waiting for migration lock/);
    expect(cmd.stdout()).toBe('');
    await holder.release();
    const { code, stdout, stderr } = await cmd.exited;
    expect(code).toBe(0);
    expect(stdout).toBe('ran\n');
    expect(stderr).toMatch(/Acquired migration lock .* after waiting/);
  });

  test('SIGINT while waiting: stops waiting, CMD never runs, exit 130, no waiter left behind', async () => {
    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    try {
      const cmd = start(run('--', process.execPath, CHILD, 'exit', '0'), { env });
      await cmd.waitForOutput(/Waiting for migration lock/);
      cmd.child.kill('SIGINT');
      const { code, stdout, stderr } = await cmd.exited;
      expect(code).toBe(130);
      expect(stdout).not.toContain('ready');
      expect(stderr).toContain('error: Interrupted by SIGINT');
      const status = await cli(['status', '--json'], { env });
      expect(JSON.parse(status.stdout).waiters).toEqual([]);
    } finally {
      await holder.release();
    }
  });

  test('--name picks lockKey(name): other names do not wait', async () => {
    const holder = await holdLock(url, lockKey('billing'));
    try {
      expect((await cli(run('--name', 'billing', '--no-wait', '--', 'true'), { env })).code).toBe(75);
      expect((await cli(run('--name', 'search', '--no-wait', '--', 'true'), { env })).code).toBe(0);
      expect((await cli(run('--key', String(lockKey('billing')), '--no-wait', '--', 'true'), { env })).code).toBe(75);
      expect((await cli(['--name', 'billing', 'run', '--no-wait', '--', 'true'], { env })).code).toBe(75);
    } finally {
      await holder.release();
    }
  });

  test.skipIf(!hasScript)(
    'on a terminal: a live line, redrawn in place, with the elapsed time, holder pid and application_name',
    async () => {
      const holder = await holdLock(url, DEFAULT_LOCK_KEY);
      try {
        // 3 s: the redraw at 1 s has two seconds to come on a busy machine.
        const cmd = startOnTerminal(run('--timeout', '3s', '--', 'true'), { env });
        const { code, stdout } = await cmd.exited;
        expect(code).toBe(75);
        expect(stdout).toContain(
          `\r\x1b[2K⏳ Held by backend pid ${holder.pid} (application_name cli-test-holder): waiting 0s of 3.0s for the migration lock`,
        );
        expect(stdout).toContain(
          `\r\x1b[2K⏳ Held by backend pid ${holder.pid} (application_name cli-test-holder): waiting 1s of 3.0s for the migration lock`,
        );
        expect(stdout).toContain('error: Timed out');
      } finally {
        await holder.release();
      }
    },
  );
});

describe('--quiet', () => {
  test('prints nothing but errors', async () => {
    const ok = await cli(run('--quiet', '--', 'true'), { env });
    expect(ok.code).toBe(0);
    expect(ok.stderr).toBe('');
    const holder = await holdLock(url, DEFAULT_LOCK_KEY);
    try {
      const busy = await cli(['-q', 'run', '--timeout', '100ms', '--', 'true'], { env });
      expect(busy.code).toBe(75);
      expect(busy.stderr).toMatch(/^error: Timed out/);
    } finally {
      await holder.release();
    }
  });
});
