// MikroORM's side of the lock session: the connection settings its knex connects with (for the lock's own
// connection), its pool's afterCreate, and its schema snapshot, which must wait until the migrations committed.
import type { MikroORM } from '@mikro-orm/core';
import type pg from 'pg';
import type { ClientSource } from '../kit.js';

// biome-ignore lint/suspicious/noExplicitAny: the ORM's driver type is the user's; the adapter checks it at run time.
export type AnyOrm = MikroORM<any>;

/** The slice of MikroORM's knex-based connection the adapter uses. */
export interface KnexLike {
  client: { driverName?: string; config: { connection?: unknown; pool?: { afterCreate?: unknown } } };
  // biome-ignore lint/suspicious/noExplicitAny: knex's transaction types come from MikroORM's own knex.
  transaction<T>(handler: (trx: any) => Promise<T>, config: { connection: unknown }): Promise<T>;
}

/** The lock session's source: a connection of our own, with the settings MikroORM's knex connects with. */
export async function lockSource(knex: KnexLike): Promise<ClientSource> {
  const { connection } = knex.client.config;
  const settings = typeof connection === 'function' ? await connection() : connection;
  if (typeof settings === 'string') return settings;
  if (!settings || typeof settings !== 'object') {
    throw new TypeError('pg-migration-lock/mikro-orm: the ORM has no connection settings');
  }
  // MikroORM adds `schema` (a setting of its own, not pg's); knex hides `password` (non-enumerable).
  const {
    schema: _schema,
    expirationChecker: _checker,
    ...rest
  } = settings as pg.ClientConfig & Record<string, unknown>;
  return { ...rest, password: (settings as pg.ClientConfig).password } as pg.ClientConfig;
}

/** How many calls have MikroORM's snapshot switched off, per migrations settings object, and its own value. */
const snapshotsOff = new WeakMap<object, { calls: number; snapshot: boolean | undefined }>();

/**
 * Runs `fn` with MikroORM's `migrations.snapshot` off (the Migrator reads that settings object itself), and puts it
 * back after; calls that overlap on one ORM put back the value the first one found.
 */
export async function withoutSnapshot<T>(settings: { snapshot?: boolean }, fn: () => Promise<T>): Promise<T> {
  const off = snapshotsOff.get(settings) ?? { calls: 0, snapshot: settings.snapshot };
  off.calls += 1;
  snapshotsOff.set(settings, off);
  settings.snapshot = false;
  try {
    return await fn();
  } finally {
    off.calls -= 1;
    if (off.calls === 0) {
      settings.snapshot = off.snapshot;
      snapshotsOff.delete(settings);
    }
  }
}

/**
 * What MikroORM's Migrator does after applying migrations when `snapshot` is on: the database's schema, read
 * through the ORM's connection, stored as the migrations folder's snapshot. Errors are ignored, as MikroORM does
 * (read-only file systems in production).
 */
export async function storeSnapshot(orm: AnyOrm): Promise<void> {
  try {
    const { DatabaseSchema } = await import('@mikro-orm/postgresql');
    const schema = await DatabaseSchema.create(
      orm.em.getConnection() as never,
      orm.em.getPlatform() as never,
      orm.config,
    );
    const migrator = orm.migrator as unknown as { storeCurrentSchema?: (schema: unknown) => Promise<void> };
    await migrator.storeCurrentSchema?.(schema);
  } catch {
    // As MikroORM: a snapshot that cannot be written does not fail the migration.
  }
}

/** The ORM's `pool.afterCreate`, run on the lock session as MikroORM's pool runs it on each of its connections. */
export async function afterCreate(knex: KnexLike, client: pg.ClientBase): Promise<void> {
  const hook = knex.client.config.pool?.afterCreate;
  if (typeof hook !== 'function') return;
  await new Promise<void>((resolve, reject) => hook(client, (err?: unknown) => (err ? reject(err) : resolve())));
}
