// A fleet's batched check: for many tenant schemas of one database at once, which have a migrator's tables, and
// what those tables hold, in two statements instead of a migrator (and a connection) per schema.
import type { Query } from '../driver/index.js';
import { quoteIdent } from './schema.js';

/** One table a migrator reads in each schema: its name, the column compared, and the order it reads rows in. */
export interface AppliedRead {
  table: string;
  column: string;
  /** Columns the migrator orders its rows by (plain names, quoted here). */
  orderBy: readonly string[];
}

/**
 * Which of `tables` exist in each of `schemas` (as the migrators' own tests see a table: a table, partitioned
 * table, view or foreign table), in one catalog query: `present.get(schema)` is the set of those table names.
 */
export async function tablesIn(
  query: Query,
  schemas: readonly string[],
  tables: readonly string[],
): Promise<Map<string, Set<string>>> {
  const rows = await query<{ schema: string; table: string }>(
    `SELECT n.nspname AS schema, c.relname AS table
       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = ANY($1::text[]) AND c.relname = ANY($2::text[]) AND c.relkind IN ('r', 'p', 'v', 'f')`,
    [schemas, tables],
  );
  const present = new Map<string, Set<string>>();
  for (const { schema, table } of rows) {
    const set = present.get(schema) ?? new Set<string>();
    present.set(schema, set);
    set.add(table);
  }
  return present;
}

/**
 * The values of `read.column` in each `(schema, read)` asked, in the migrator's order, as text (NULL as null): one statement (a
 * UNION ALL of one array per table) for the whole batch. Every table asked must exist (see {@link tablesIn}).
 * Resolves to `values[i]` for `asks[i]`.
 */
export async function appliedIn(
  query: Query,
  asks: readonly { schema: string; read: AppliedRead }[],
): Promise<(string | null)[][]> {
  if (asks.length === 0) return [];
  const parts = asks.map(({ schema, read }, i) => {
    const order = read.orderBy.map(quoteIdent).join(', ');
    const from = `${quoteIdent(schema)}.${quoteIdent(read.table)}`;
    const select = `SELECT ${quoteIdent(read.column)}::text FROM ${from}${order ? ` ORDER BY ${order}` : ''}`;
    return `SELECT ${i} AS i, ARRAY(${select}) AS v`;
  });
  const rows = await query<{ i: number; v: (string | null)[] }>(parts.join('\nUNION ALL\n'));
  const values: (string | null)[][] = new Array(asks.length);
  for (const { i, v } of rows) values[i] = v;
  return values;
}
