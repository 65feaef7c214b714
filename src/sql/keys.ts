// How a lock key and a string are written in SQL, and where a key's rows are in pg_locks: what every other
// statement builds on. The lowest file of src/sql/: it imports nothing.

/** A string as an SQL literal. */
export const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;
// Quoted: an unquoted -9223372036854775808 parses as minus an out-of-range 9223372036854775808.
export const sqlKey = (key: bigint) => `'${key}'::bigint`;

/**
 * How a key appears in `pg_locks`: `classid` = high 32 bits, `objid` = low 32 bits (both unsigned).
 * The signed variants are the int4 arguments of the two-key advisory functions that hit the same row.
 */
export function keyParts(key: bigint): { classid: number; objid: number; hi: number; lo: number } {
  const unsigned = BigInt.asUintN(64, key);
  const classid = Number(unsigned >> 32n);
  const objid = Number(unsigned & 0xffffffffn);
  return { classid, objid, hi: classid | 0, lo: objid | 0 };
}

/** The `pg_locks` rows of `key` in this database: `objsubid` 1 is the lock, 2 the waiters' registry. */
export function lockRowsOf(key: bigint, objsubid: 1 | 2, alias = ''): string {
  const { classid, objid } = keyParts(key);
  return advisoryRows(String(classid), String(objid), objsubid, alias);
}

/** {@link lockRowsOf} with the key's halves given as SQL expressions (a prepared statement's parameters). */
export function advisoryRows(classid: string, objid: string, objsubid: 1 | 2, alias = ''): string {
  const c = alias ? `${alias}.` : '';
  return `${c}locktype = 'advisory' AND ${c}objsubid = ${objsubid} AND ${c}classid = ${classid} AND ${c}objid = ${objid}
    AND ${c}database = (SELECT oid FROM pg_database WHERE datname = current_database())`;
}
