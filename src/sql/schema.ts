// A tenant's schema, as a fleet enters it on the locked session before the migrator starts.
import type { Query } from '../driver/index.js';

/** An SQL identifier, quoted. */
export const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;

/**
 * Creates `schema` when it does not exist, and with `searchPath` puts that list first in the session's search_path.
 * Existence is checked first: CREATE SCHEMA IF NOT EXISTS needs the CREATE right on the database even when the
 * schema exists.
 */
export async function enterSchema(query: Query, schema: string, searchPath?: string[]): Promise<void> {
  const [row] = await query<{ present: boolean }>(
    'SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = $1) AS present',
    [schema],
  );
  if (!row?.present) await query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(schema)}`);
  if (searchPath) {
    await query("SELECT pg_catalog.set_config('search_path', $1, false)", [searchPath.map(quoteIdent).join(', ')]);
  }
}
