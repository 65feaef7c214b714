import { hostname } from 'node:os';
import { expect, test } from 'vitest';
import { DEFAULT_LOCK_KEY, withMigrationLock } from '../../src/index.js';
import { createTestDatabase, lockRows, waitFor } from '../helpers.js';
import { CHILD, cli, hasScript, holdLock, start, startOnTerminal } from './cli.js';

// Who holds the lock, in the waiting line and the timeout error: the key with its label from the key table,
// the holder's PostgreSQL backend pid and its application_name (which carries the holding process's own pid),
// each labelled, in the CLI's lines and the library's alike.

const url = await createTestDatabase();
const env = { DATABASE_URL: url };
const KEY = `${DEFAULT_LOCK_KEY} \\(default key\\)`;
const literal = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

test('run waiting for another run: the holder’s backend pid and application_name (with its OS pid), labelled', async () => {
  const holder = start(['run', '--', process.execPath, CHILD, 'hold'], { env });
  try {
    await holder.waitForOutput(/ready/);
    const [row] = (await lockRows(url, DEFAULT_LOCK_KEY)).filter((r) => r.granted);
    const backendPid = row!.pid;
    // The holding CLI said which session it holds the lock on.
    expect(holder.stderr()).toContain(
      `Acquired migration lock ${DEFAULT_LOCK_KEY} (default key) (session pid ${backendPid})`,
    );

    const { code, stderr } = await cli(['run', '--timeout', '1s', '--', 'true'], { env });
    expect(code, stderr).toBe(75);
    // The holding's tag: pg-migration-lock:<key>:<token>.<the holding CLI's pid>@<host>.
    const holderName = `pg-migration-lock:${DEFAULT_LOCK_KEY}:[a-z0-9]+\\.${holder.child.pid}@${literal(hostname())}`;
    expect(stderr).toMatch(
      new RegExp(
        `^\\[pg-migration-lock\\] Waiting for migration lock ${KEY}, held by backend pid ${backendPid} \\(application_name ${holderName}\\) from \\S+, connected \\S+ ago \\(waited \\S+ of 1\\.0s\\)$`,
        'm',
      ),
    );
    expect(stderr).toMatch(
      new RegExp(
        `^error: Timed out after \\S+ waiting for migration lock ${KEY}, held by backend pid ${backendPid} \\(application_name ${holderName}\\)$`,
        'm',
      ),
    );
  } finally {
    holder.child.kill('SIGTERM');
    await holder.exited;
  }
});

test.skipIf(!hasScript)(
  'on an 80-column terminal the live line names the holder first (its OS pid, host and backend pid), then is cut',
  async () => {
    const holder = start(['run', '--', process.execPath, CHILD, 'hold'], { env });
    try {
      await holder.waitForOutput(/ready/);
      const [row] = (await lockRows(url, DEFAULT_LOCK_KEY)).filter((r) => r.granted);
      const waiter = startOnTerminal(['run', '--timeout', '1500ms', '--', 'true'], { env, columns: 80 });
      const { code, stdout } = await waiter.exited;
      expect(code).toBe(75);
      const live = stdout
        .split('\r\x1b[2K')
        .map((part) => part.split(/\r?\n/)[0]!)
        .find((line) => line.startsWith('⏳'));
      expect(live).toBeDefined();
      expect(live!.length).toBeLessThanOrEqual(80);
      const host = literal(hostname().slice(0, 10));
      expect(live).toMatch(new RegExp(`^⏳ Held by pid ${holder.child.pid} on ${host}`));
      // The backend pid too, when the host leaves room for it.
      if (hostname().length < 30) expect(live).toContain(`(backend pid ${row!.pid})`);
    } finally {
      holder.child.kill('SIGTERM');
      await holder.exited;
    }
  },
);

test('the library’s own lines name the key as the CLI does, and the holder’s pids labelled', async () => {
  const holder = await holdLock(url, DEFAULT_LOCK_KEY, 'the-other-app');
  const lines: string[] = [];
  const log = (level: string) => (message: string) => lines.push(`${level} ${message}`);
  const logger = { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') };
  try {
    const call = withMigrationLock(url, DEFAULT_LOCK_KEY, async () => 'ran', { logger, reportEveryMs: 100 });
    await waitFor(() => lines.some((line) => line.startsWith('info Waiting')), 10_000, 'the waiting line');
    await holder.release();
    await expect(call).resolves.toBe('ran');
  } finally {
    await holder.release();
  }
  expect(lines).toContainEqual(
    expect.stringMatching(
      new RegExp(
        `^info Waiting for migration lock ${KEY}, held by backend pid ${holder.pid} \\(application_name the-other-app\\) \\(waited \\S+\\)$`,
      ),
    ),
  );
  expect(lines).toContainEqual(
    expect.stringMatching(new RegExp(`^debug Acquired migration lock ${KEY} on pid \\d+ after \\S+`)),
  );
});

test('the library’s timeout error too', async () => {
  const holder = await holdLock(url, DEFAULT_LOCK_KEY, 'the-other-app');
  try {
    await expect(
      withMigrationLock(url, DEFAULT_LOCK_KEY, async () => 'ran', { logger: null, timeoutMs: 300 }),
    ).rejects.toThrow(
      new RegExp(
        `^Timed out after \\S+ waiting for migration lock ${KEY}, held by backend pid ${holder.pid} \\(application_name the-other-app\\)$`,
      ),
    );
  } finally {
    await holder.release();
  }
});
