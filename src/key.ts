import { createHash } from 'node:crypto';

export { keyParts } from './sql/keys.js';

/** A lock key as callers may give it: a bigint, a safe-integer number or a decimal string. */
export type LockKeyInput = bigint | number | string;

const MIN = -(2n ** 63n);
const MAX = 2n ** 63n - 1n;
const ACCEPTED =
  'a bigint, a safe-integer number or a decimal string (e.g. "-42") between -9223372036854775808 and 9223372036854775807; use lockKey("name") to derive one from a name';

/**
 * The advisory-lock key for a name: the first 64 bits of MD5(name), big-endian, signed.
 * Equal to SQL `('x' || left(md5(name), 16))::bit(64)::bigint`, so the lock can be found from psql.
 *
 * @example lockKey('billing-service') // => a stable bigint
 */
export function lockKey(name: string): bigint {
  if (typeof name !== 'string') {
    throw new TypeError(`lockKey(name): expected a string, got ${describe(name)}`);
  }
  return createHash('md5').update(name, 'utf8').digest().readBigInt64BE(0);
}

/** `lockKey('pg-migration-lock')`: the default key of the CLI and of the knex, drizzle and TypeORM adapters. */
export const DEFAULT_LOCK_KEY: bigint = lockKey('pg-migration-lock');

/** A migration lock key some tool uses on its own, so that wrapped and plain runs of it exclude each other. */
export interface KnownKey {
  key: bigint;
  /** Who uses it, as messages name it: `node-pg-migrate's own key`. */
  label: string;
  /** The tools (adapters, CLI commands) that use it by default. */
  tools: string[];
}

/** The one key table: every key a migrator (or this library) uses by default. */
export const KNOWN_KEYS: readonly KnownKey[] = [
  { key: DEFAULT_LOCK_KEY, label: 'default key', tools: ['withMigrationLock', 'run', 'knex', 'drizzle', 'typeorm'] },
  { key: 7241865325823964n, label: "node-pg-migrate's own key", tools: ['node-pg-migrate'] },
  { key: 3853314791062309107n, label: "kysely's own key", tools: ['kysely'] },
  { key: 72707369n, label: "Prisma's own key", tools: ['prisma'] },
];

/** The key `tool` (an adapter or CLI migrator name) locks by default. */
export function defaultKeyOf(tool: string): KnownKey {
  return KNOWN_KEYS.find((entry) => entry.tools.includes(tool)) ?? KNOWN_KEYS[0]!;
}

/** `7241865325823964 (node-pg-migrate's own key)`: how messages name a key. */
export function describeKey(key: bigint): string {
  const known = KNOWN_KEYS.find((entry) => entry.key === key);
  return known ? `${key} (${known.label})` : String(key);
}

/**
 * Validates a key and returns it as a bigint. Throws before anything touches the database:
 * `TypeError` for a value of the wrong kind, `RangeError` for a number outside what a bigint key can be.
 */
export function parseKey(key: unknown): bigint {
  let value: bigint;
  if (typeof key === 'bigint') {
    value = key;
  } else if (typeof key === 'number') {
    if (!Number.isSafeInteger(key)) {
      throw new RangeError(`Invalid lock key ${describe(key)}: expected ${ACCEPTED}`);
    }
    value = BigInt(key);
  } else if (typeof key === 'string') {
    if (!/^-?\d+$/.test(key)) {
      throw new TypeError(`Invalid lock key ${describe(key)}: expected ${ACCEPTED}`);
    }
    value = BigInt(key);
  } else {
    throw new TypeError(`Invalid lock key ${describe(key)}: expected ${ACCEPTED}`);
  }
  if (value < MIN || value > MAX) {
    throw new RangeError(`Invalid lock key ${describe(key)}: outside the signed 64-bit range; expected ${ACCEPTED}`);
  }
  return value;
}

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (typeof value === 'bigint') return `${value}n`;
  if (value === null) return 'null';
  if (typeof value === 'object') return Array.isArray(value) ? 'an array' : 'an object';
  return typeof value === 'number' ? String(value) : `a ${typeof value}`;
}
