// A Bun user's TypeScript (bun-types, no @types/pg needed for this): Bun's own SQL, reserved or not, is a lock
// source, `fn`'s client is the reserved SQL with its tagged template, and a drizzle bun-sql database migrates.
// Checked by `npm run typecheck` through test/tsconfig.bun.json (Bun's globals beside Node's own).
import { SQL } from 'bun';
import { drizzle } from 'drizzle-orm/bun-sql';
import { migrate } from '../adapters/drizzle.js';
import { getLockStatus, releaseLock, withMigrationLock } from '../src/index.js';

const sql = new SQL('postgres://localhost/app');
export const value: Promise<string> = withMigrationLock(sql, 1, async ({ client, signal }) => {
  const rows: unknown[] = await client`SELECT 1 AS one`;
  await client.unsafe('SELECT $1::int', [rows.length]);
  signal.throwIfAborted();
  return 'done';
});
export const borrowed = sql.reserve().then((reserved) => withMigrationLock(reserved, 1, () => 1));
export const status = getLockStatus(sql, 1);
export const released = releaseLock(sql, 1);
export const migrated: Promise<void> = migrate(drizzle({ client: sql }), { migrationsFolder: './drizzle' });
