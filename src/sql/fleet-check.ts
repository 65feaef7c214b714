// A fleet's batched check: for many tenant schemas of one database at once, which have a migrator's tables, and
// what those tables hold, in a few statements instead of a migrator (and a connection) per schema.
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
  // From the list of schemas (unnest) to each one's tables: two index lookups per schema, whatever the planner
  // believes. As a plain join it was free to start from pg_class, whose statistics, right after thousands of
  // tenant tables were created, say the tables asked are one row: 449 ms a batch of 250 schemas instead of 5.
  // OFFSET 0 keeps the subquery from being pulled up into such a join.
  const rows = await query<{ schema: string; table: string }>(
    `SELECT s.name AS schema, c.relname AS table
       FROM unnest($1::text[]) AS s(name),
       LATERAL (SELECT c.relname FROM pg_catalog.pg_class c
                 WHERE c.relnamespace = (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = s.name)
                   AND c.relname = ANY($2::text[]) AND c.relkind IN ('r', 'p', 'v', 'f') OFFSET 0) c`,
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
 * Selects per statement. PostgreSQL plans a UNION ALL in a time that grows faster than its selects: 250 knex schemas
 * (500 tables, never read before by that backend) took 225–266 ms as one statement, 61–77 ms as ten of 50.
 */
const SELECTS_PER_STATEMENT = 50;

/**
 * JIT off for the reads (then put back; null where the server has no JIT): their plans count thousands of rows in
 * tables never analyzed, enough to make PostgreSQL compile each statement, which costs more than running it
 * (10,000 knex schemas on PostgreSQL 18: 4.9–5.0 s with JIT, 4.6 s without).
 */
const JIT_OFF = `SELECT current_setting('jit', true) AS jit,
  CASE WHEN current_setting('jit', true) IS NOT NULL THEN set_config('jit', 'off', false) END AS off`;

/**
 * The values of `read.column` in each `(schema, read)` asked, in the migrator's order, as text (NULL as null): a few
 * statements for the whole batch, each a UNION ALL of plain selects, each row tagged with its select and its place in
 * the migrator's order (`row_number()`). Plain selects, not an `ARRAY(…)` subquery per table: PostgreSQL plans a UNION
 * of hundreds of subqueries many times slower (1.5 s against 0.1 s for 500 tables). Reads of one table in one order
 * (kysely's name and timestamp) share a select, so each table is read once. Every table asked must exist (see
 * {@link tablesIn}). Resolves to `values[i]` for `asks[i]`.
 */
export async function appliedIn(
  query: Query,
  asks: readonly { schema: string; read: AppliedRead }[],
): Promise<(string | null)[][]> {
  if (asks.length === 0) return [];
  // One select per table and order; each ask reads its column at `at` among the select's values (v0, v1, …: plain
  // text columns, NULL where a select has fewer, so every driver decodes them alike).
  const selects = new Map<string, { i: number; schema: string; read: AppliedRead; columns: string[] }>();
  const places = asks.map(({ schema, read }) => {
    const id = JSON.stringify([schema, read.table, read.orderBy]);
    const select = selects.get(id) ?? { i: selects.size, schema, read, columns: [] };
    selects.set(id, select);
    const known = select.columns.indexOf(read.column);
    return { i: select.i, at: known >= 0 ? known : select.columns.push(read.column) - 1 };
  });
  const width = Math.max(...[...selects.values()].map(({ columns }) => columns.length));
  const parts = [...selects.values()].map(({ i, schema, read, columns }) => {
    const order =
      read.orderBy.length > 0 ? `row_number() OVER (ORDER BY ${read.orderBy.map(quoteIdent).join(', ')})` : '0';
    const values = Array.from({ length: width }, (_, c) =>
      c < columns.length ? `${quoteIdent(columns[c]!)}::text AS v${c}` : `NULL::text AS v${c}`,
    );
    return `SELECT ${i} AS i, ${order} AS o, ${values.join(', ')} FROM ${quoteIdent(schema)}.${quoteIdent(read.table)}`;
  });
  const tagged: { o: number; row: Record<string, string | number | null> }[][] = parts.map(() => []);
  const [{ jit } = { jit: null }] = await query<{ jit: string | null }>(JIT_OFF);
  try {
    for (let from = 0; from < parts.length; from += SELECTS_PER_STATEMENT) {
      const union = parts.slice(from, from + SELECTS_PER_STATEMENT).join('\nUNION ALL\n');
      for (const row of await query<Record<string, string | number | null>>(union)) {
        tagged[Number(row.i)]!.push({ o: Number(row.o), row });
      }
    }
  } finally {
    if (jit !== null) await query("SELECT set_config('jit', $1, false)", [jit]);
  }
  for (const list of tagged) list.sort((a, b) => a.o - b.o);
  return places.map(({ i, at }) => tagged[i]!.map(({ row }) => (row[`v${at}`] ?? null) as string | null));
}
