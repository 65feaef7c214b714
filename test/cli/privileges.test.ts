import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, test } from 'vitest';
import { lockKey } from '../../src/index.js';
import { createTestDatabase, lockRows, withClient } from '../helpers.js';
import { cli, holdLock } from './cli.js';

// `release` and `status` as non-superuser roles (made here, dropped after; roles are cluster-wide, so the
// names are random): what PostgreSQL refuses or hides, the CLI says, naming the role that would help.

const url = await createTestDatabase();
const suffix = randomBytes(3).toString('hex');
const PASSWORD = `pw-${suffix}`;
const operator = `pgml_operator_${suffix}`; // runs the CLI
const app = `pgml_app_${suffix}`; // holds the lock, like a migrating app

const asRole = (role: string) => {
  const u = new URL(url);
  u.username = role;
  u.password = PASSWORD;
  return u.toString();
};
const admin = (sql: string) => withClient(url, (client) => client.query(sql));

await admin(`CREATE ROLE ${operator} LOGIN PASSWORD '${PASSWORD}'; CREATE ROLE ${app} LOGIN PASSWORD '${PASSWORD}'`);
afterAll(async () => {
  await withClient(url, async (client) => {
    await client.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY($1)', [
      [operator, app],
    ]);
    await client.query(`DROP ROLE IF EXISTS ${operator}; DROP ROLE IF EXISTS ${app}`);
  });
});

const asOperator = (args: string[]) => cli(args, { env: { DATABASE_URL: asRole(operator) } });

describe('release --force by a role without the right', () => {
  test('a superuser’s session: exit 1, only a superuser can terminate it; the lock stays', async () => {
    const key = lockKey(`privileges-super-${suffix}`);
    const holder = await holdLock(url, key);
    try {
      const { code, stderr } = await asOperator(['release', '--force', '--yes', '--key', String(key)]);
      expect(code).toBe(1);
      expect(stderr).toMatch(
        new RegExp(
          `error: Not released: pid ${holder.pid} is a session of superuser role "[^"]+", which only a superuser can terminate; role "${operator}" is not one`,
        ),
      );
      expect(stderr).not.toContain(PASSWORD);
      expect((await lockRows(url, key)).map((row) => row.pid)).toEqual([holder.pid]);
    } finally {
      await holder.release();
    }
  });

  test('another role’s session: exit 1 naming pg_signal_backend; after that GRANT, it works', async () => {
    const key = lockKey(`privileges-app-${suffix}`);
    const holder = await holdLock(asRole(app), key);
    try {
      const refused = await asOperator(['release', '--force', '--yes', '--key', String(key)]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain(
        `error: Not released: role "${operator}" may not terminate pid ${holder.pid} of role "${app}": that needs membership in pg_signal_backend`,
      );
      expect(refused.stderr).toContain(`GRANT pg_signal_backend TO "${operator}";`);
      expect(refused.stderr.match(/error:/g)).toHaveLength(1);
      expect((await lockRows(url, key)).map((row) => row.pid)).toEqual([holder.pid]);

      // The advice is right: with it, the same command releases the lock.
      await admin(`GRANT pg_signal_backend TO ${operator}`);
      const released = await asOperator(['release', '--force', '--yes', '--key', String(key)]);
      expect(released.code, released.stderr).toBe(0);
      expect(await lockRows(url, key)).toEqual([]);
    } finally {
      await admin(`REVOKE pg_signal_backend FROM ${operator}`);
      await holder.release();
    }
  });
});

describe('status without pg_read_all_stats', () => {
  test('says what it cannot see and which role would show it; after that GRANT, it sees', async () => {
    const key = lockKey(`privileges-status-${suffix}`);
    const holder = await holdLock(asRole(app), key, 'the-app');
    try {
      const hidden = await asOperator(['status', '--key', String(key)]);
      expect(hidden.code).toBe(0);
      expect(hidden.stdout).toMatch(
        new RegExp(`^LOCKED .*\\n {2}holder +pid ${holder.pid}\\n {2}application +the-app\\n`),
      );
      expect(hidden.stdout).toContain('<insufficient privilege>');
      expect(hidden.stderr).toContain(
        `warning: Role "${operator}" cannot see the query, state, client address and start time of other roles' sessions (1 of 1 shown as <insufficient privilege>): GRANT pg_read_all_stats TO "${operator}", or run status as a superuser, or as role "${app}".`,
      );

      await admin(`GRANT pg_read_all_stats TO ${operator}`);
      const seen = await asOperator(['status', '--key', String(key)]);
      expect(seen.code).toBe(0);
      expect(seen.stdout).toContain('last query   SELECT pg_backend_pid() AS pid');
      expect(seen.stdout).not.toContain('<insufficient privilege>');
      // Nothing on stderr but which database it looked at.
      expect(seen.stderr).toMatch(/^\[pg-migration-lock\] Database: postgres:\/\/.*\n$/);
    } finally {
      await admin(`REVOKE pg_read_all_stats FROM ${operator}`);
      await holder.release();
    }
  });
});
