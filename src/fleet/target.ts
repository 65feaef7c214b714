// The targets of a fleet: what callers may give, how each is checked and named (never with its password), and its key.
import type pg from 'pg';
import { parse } from 'pg-connection-string';
import { conninfoToUrl, isConninfo } from '../driver/conninfo.js';
import { checkSource } from '../driver/index.js';
import { defaultKeyOf, type LockKeyInput, lockKey, parseKey } from '../key.js';

/**
 * One target as callers give it: a connection string, a `pg` client config, or `{ url, schema, name }` for a
 * schema of a database (schema per tenant) or to name the target.
 */
export type FleetTargetInput = string | pg.ClientConfig | FleetTargetSpec;

/** A target with a schema and/or a name of its own. */
export interface FleetTargetSpec {
  /** The database: a connection string or a `pg` client config. */
  url: string | pg.ClientConfig;
  /**
   * Migrate inside this schema (schema per tenant): the migrator's own table goes there, and so do the tables
   * of unqualified migrations (see each adapter's `fleet`). It is created if it does not exist.
   * @default undefined: the database as a single run of the migrator would migrate it
   */
  schema?: string;
  /**
   * How results, progress and messages name the target, e.g. the tenant's name.
   * @default `host:port/database`, then `/schema` for a schema target; never a password
   */
  name?: string;
}

/** A target as a fleet hands it to its migrator and to `keyOf`: checked, with what it is named by. */
export interface FleetTarget {
  /** The database: the connection string or `pg` client config that was given. */
  connection: string | pg.ClientConfig;
  /** The schema to migrate in; undefined for a database target. */
  schema: string | undefined;
  /** The database name, when the connection says it (else the server's default for the user). */
  database: string | undefined;
  /** How results, progress and messages name it (never with a password). */
  name: string;
  /** The target as it was given. */
  input: FleetTargetInput;
}

const SPEC_KEYS = new Set(['url', 'schema', 'name']);

/**
 * A target as a fleet migrator takes it, e.g. to ask one target what is pending: checked without touching the
 * network (a TypeError for a bad one) and named.
 * @example
 * const names = await fleet({ migrations: { directory: './migrations' } }).pending(fleetTarget({ url, schema: 'tenant_42' }));
 */
export function fleetTarget(input: FleetTargetInput): FleetTarget {
  return toFleetTarget(input, 'fleetTarget');
}
const EXPECTED = 'a connection string, a pg client config or { url, schema?, name? }';

/** Checks one target without touching the network, and names it. `where` names it in errors: `targets[3]`. */
export function toFleetTarget(input: unknown, where: string): FleetTarget {
  const spec = isSpec(input) ? input : { url: input };
  if (isSpec(input)) {
    const unknown = Object.keys(input).filter((key) => !SPEC_KEYS.has(key));
    if (unknown.length > 0) {
      throw new TypeError(`${where}: unknown ${unknown.map((k) => `\`${k}\``).join(', ')}; expected ${EXPECTED}`);
    }
  }
  // libpq's keyword/value form is read as the URL it stands for.
  const url =
    typeof spec.url === 'string' && isConninfo(spec.url)
      ? conninfoUrlOf(spec.url, where)
      : (spec.url as string | pg.ClientConfig);
  if (typeof url !== 'string' && (url === null || typeof url !== 'object' || isDriverObject(url))) {
    throw new TypeError(`${where}: expected ${EXPECTED}; a fleet opens its own connections, so not a pool or a client`);
  }
  try {
    checkSource(url);
  } catch (err) {
    throw new TypeError(`${where}: ${(err as Error).message.replace(/`client`/g, 'the target')}`);
  }
  const { schema, name } = spec as FleetTargetSpec;
  if (schema !== undefined) checkSchema(schema, where);
  if (name !== undefined && (typeof name !== 'string' || name.trim() === '')) {
    throw new TypeError(`${where}: expected \`name\` to be a non-empty string`);
  }
  const { host, port, database } = whereIs(url);
  const place = `${host ?? 'localhost'}:${port ?? 5432}/${database ?? ''}`;
  return {
    connection: url,
    schema,
    database,
    name: name ?? (schema === undefined ? place : `${place}/${schema}`),
    input: input as FleetTargetInput,
  };
}

function isSpec(input: unknown): input is FleetTargetSpec {
  return typeof input === 'object' && input !== null && 'url' in input;
}

/** A pg.Pool or pg.Client passes checkSource, but a fleet opens its own connections per target. */
function isDriverObject(value: object): boolean {
  return typeof (value as { query?: unknown }).query === 'function';
}

function checkSchema(schema: unknown, where: string): asserts schema is string {
  if (typeof schema !== 'string' || schema === '') {
    throw new TypeError(`${where}: expected \`schema\` to be a non-empty string, got ${JSON.stringify(schema)}`);
  }
  // PostgreSQL cuts longer names to 63 bytes: two tenants could end up in one schema.
  if (Buffer.byteLength(schema) > 63) {
    throw new TypeError(`${where}: schema ${JSON.stringify(schema)} is longer than PostgreSQL's 63 bytes`);
  }
}

/** Host, port and database of a connection, as pg would read them (no password kept). */
function whereIs(connection: string | pg.ClientConfig): { host?: string; port?: number; database?: string } {
  const fromUrl = (url: string) => {
    const parsed = parse(url);
    return { host: parsed.host ?? undefined, port: parsed.port ? Number(parsed.port) : undefined, db: parsed.database };
  };
  if (typeof connection === 'string') {
    const { host, port, db } = fromUrl(connection);
    return { host, port, database: db ?? undefined };
  }
  const url = connection.connectionString ? fromUrl(connection.connectionString) : undefined;
  return {
    host: connection.host ?? url?.host,
    port: connection.port !== undefined ? Number(connection.port) : url?.port,
    database: connection.database ?? url?.db ?? undefined,
  };
}

/**
 * The key a fleet locks a target with, unless `keyOf` says otherwise.
 *
 * - A database target: the key a single run of that migrator takes (its `key`, else its default from the key
 *   table: node-pg-migrate's and kysely's own keys, `DEFAULT_LOCK_KEY` for the others). Advisory locks belong
 *   to a database, so tenants in different databases never exclude each other, while a fleet run, a single run
 *   (adapter or CLI) and, for node-pg-migrate and kysely, a plain run of the migrator on one database do.
 * - A schema target: `lockKey('pg-migration-lock:<migrator>:<schema>')`, one per schema and migrator, so the
 *   schemas of one database migrate side by side. A single-tenant run that must exclude fleet runs on that
 *   schema passes this key as its `lock.key`.
 *
 * @example
 * fleetKey('knex', 'tenant_42') // the key of schema tenant_42 in knex fleets
 * // psql: SELECT ('x' || left(md5('pg-migration-lock:knex:tenant_42'), 16))::bit(64)::bigint;
 */
export function fleetKey(migrator: string | { name: string; key?: LockKeyInput }, schema?: string): bigint {
  const { name, key } = typeof migrator === 'string' ? { name: migrator, key: undefined } : migrator;
  if (typeof name !== 'string' || name === '') throw new TypeError('fleetKey: expected a migrator name');
  if (schema !== undefined) {
    checkSchema(schema, 'fleetKey');
    return lockKey(`pg-migration-lock:${name}:${schema}`);
  }
  return key === undefined ? defaultKeyOf(name).key : parseKey(key);
}

function conninfoUrlOf(text: string, where: string): string {
  try {
    return conninfoToUrl(text);
  } catch (err) {
    throw new TypeError(`${where}: ${(err as Error).message}`);
  }
}
