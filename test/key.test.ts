import pg from 'pg';
import { afterAll, describe, expect, test } from 'vitest';
import { DEFAULT_LOCK_KEY, lockKey, withMigrationLock } from '../src/index.js';
import { keyOfTag, newTag } from '../src/sql/fencing.js';
import { createTestDatabase, lockRows, withClient } from './helpers.js';

const url = await createTestDatabase();

describe('lockKey', () => {
  test('equals the SQL expression for any name', async () => {
    const names = ['pg-migration-lock', 'billing', '', 'é☃ unicode 名前', 'x'.repeat(500)];
    await withClient(url, async (client) => {
      for (const name of names) {
        const { rows } = await client.query(`SELECT (('x' || left(md5($1), 16))::bit(64)::bigint)::text AS key`, [
          name,
        ]);
        expect(lockKey(name).toString()).toBe(rows[0].key);
      }
    });
  });

  test('DEFAULT_LOCK_KEY is lockKey("pg-migration-lock")', () => {
    expect(DEFAULT_LOCK_KEY).toBe(lockKey('pg-migration-lock'));
    expect(typeof DEFAULT_LOCK_KEY).toBe('bigint');
  });

  test('rejects a non-string name', () => {
    expect(() => lockKey(42 as unknown as string)).toThrow(TypeError);
  });
});

test('a holding tag: its key, a token of six, its name; no two alike across the random pool refilling', () => {
  const tags = Array.from({ length: 400 }, () => newTag(-42n, 'app@host'));
  for (const tag of tags) {
    expect(tag).toMatch(/^pg-migration-lock:-42:[0-9a-z]{6}\.app@host$/);
    expect(keyOfTag(tag)).toBe(-42n);
  }
  // 400 tags draw 2,400 bytes: the 1 KiB pool is refilled twice (a clash by chance: 1 in 27,000).
  expect(new Set(tags).size).toBe(tags.length);
  expect(newTag(1n, 'é'.repeat(80))).toHaveLength(63);
});

describe('key validation happens before any query', () => {
  // A pool that has never connected: if a key slipped through, totalCount would show a connection.
  const pool = new pg.Pool({ connectionString: url });
  afterAll(() => pool.end());

  const invalid: [unknown, typeof TypeError | typeof RangeError][] = [
    [2n ** 63n, RangeError],
    [-(2n ** 63n) - 1n, RangeError],
    ['9223372036854775808', RangeError],
    ['-9223372036854775809', RangeError],
    [1.5, RangeError],
    [Number.NaN, RangeError],
    [Number.POSITIVE_INFINITY, RangeError],
    [2 ** 53, RangeError],
    ['12a', TypeError],
    ['', TypeError],
    [' 1', TypeError],
    ['1e3', TypeError],
    ['0x10', TypeError],
    ['1.0', TypeError],
    [null, TypeError],
    [undefined, TypeError],
    [{}, TypeError],
    [[1], TypeError],
    [true, TypeError],
  ];

  test.each(invalid)('%s is rejected', async (key, errorClass) => {
    let called = false;
    const error = await withMigrationLock(pool, key as bigint, () => {
      called = true;
    }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(errorClass);
    expect((error as Error).message).toMatch(/expected a bigint, a safe-integer number or a decimal string/);
    expect(called).toBe(false);
    expect(pool.totalCount).toBe(0);
  });

  test('bad options are rejected up front too', async () => {
    await expect(withMigrationLock(pool, 1, () => {}, { timeoutMs: -1 })).rejects.toThrow(/timeoutMs/);
    await expect(withMigrationLock(pool, 1, () => {}, { wait: 'no' as unknown as boolean })).rejects.toThrow(TypeError);
    await expect(withMigrationLock(pool, 1, 'fn' as unknown as () => void)).rejects.toThrow(/`fn`/);
    await expect(withMigrationLock(42 as unknown as string, 1, () => {})).rejects.toThrow(/pg.Pool/);
    await expect(withMigrationLock(pool, 1, () => {}, { logger: {} as Console })).rejects.toThrow(/logger/);
    expect(pool.totalCount).toBe(0);
  });
});

describe('accepted keys map onto pg_locks as the SPEC says', () => {
  test.each([
    ['-42', -42n],
    [42, 42n],
    [-(2n ** 63n), -(2n ** 63n)],
    ['9223372036854775807', 2n ** 63n - 1n],
    [lockKey('neg'), lockKey('neg')],
  ])('%s', async (input, expected) => {
    const rows = await withMigrationLock(
      url,
      input,
      async ({ key }) => {
        expect(key).toBe(expected);
        return lockRows(url, expected);
      },
      { logger: null },
    );
    expect(rows).toHaveLength(1);
    expect(rows[0]!.granted).toBe(true);
    expect(await lockRows(url, expected)).toHaveLength(0);
  });
});
