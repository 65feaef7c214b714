// Which driver a migrator's own client belongs to, for adapters that pick the migrator's driver by it.
export { isBunSql } from '../../src/driver/bun-sql.js';
export type { BunSql, BunSqlReserved } from '../../src/driver/types.js';
