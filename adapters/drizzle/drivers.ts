// drizzle's three drivers (node-postgres, postgres.js, Bun's SQL) and their migrators, loaded only when used, and a reserved
// postgres.js connection dressed as the client drizzle's postgres-js session expects.
import { importPeer, type PostgresJsReservedSql } from '../kit.js';

/** drizzle's `readMigrationFiles`, as far as the adapter uses it. */
export type ReadMigrationFiles = (config: { migrationsFolder: string }) => { folderMillis: number }[];

/**
 * The reserved sql as drizzle's postgres-js session needs it. A postgres.js reserved sql has no
 * `options` (drizzle reads its parsers) and no `begin` (drizzle's migrator runs in a transaction), so
 * both are provided here: the transaction runs on the reserved connection itself.
 */
export function onReserved(reserved: PostgresJsReservedSql, options: object) {
  const client = {
    options,
    unsafe: (query: string, parameters?: unknown[], queryOptions?: object) =>
      reserved.unsafe(query, parameters, queryOptions),
    async begin(...args: [fn: (sql: unknown) => unknown] | [mode: string, fn: (sql: unknown) => unknown]) {
      const fn = args.length === 2 ? args[1] : args[0];
      const mode = args.length === 2 ? args[0].replace(/[^a-z ]/gi, '') : '';
      await reserved.unsafe(`BEGIN ${mode}`);
      try {
        const result = await fn(client);
        await reserved.unsafe('COMMIT');
        return result;
      } catch (err) {
        // A dead connection rolls back by itself; the migration's own error is the one to report.
        await Promise.resolve(reserved.unsafe('ROLLBACK')).catch(() => {});
        throw err;
      }
    },
  };
  return client;
}

/** drizzle's driver and migrator for `driver`, loaded only now: importing this adapter loads neither. */
export async function importDrizzle<D extends 'node-postgres' | 'postgres-js' | 'bun-sql'>(driver: D) {
  const [[{ drizzle }, { migrate: run }], { readMigrationFiles }] = await Promise.all([
    driver === 'postgres-js'
      ? importPeer('drizzle', 'postgres', () =>
          importPeer('drizzle', 'drizzle-orm', () =>
            Promise.all([import('drizzle-orm/postgres-js'), import('drizzle-orm/postgres-js/migrator')]),
          ),
        )
      : driver === 'bun-sql'
        ? importPeer('drizzle', 'drizzle-orm', () =>
            Promise.all([import('drizzle-orm/bun-sql'), import('drizzle-orm/bun-sql/migrator')]),
          )
        : importPeer('drizzle', 'drizzle-orm', () =>
            Promise.all([import('drizzle-orm/node-postgres'), import('drizzle-orm/node-postgres/migrator')]),
          ),
    importPeer('drizzle', 'drizzle-orm', () => import('drizzle-orm/migrator')),
  ]);
  // Each driver's migrator takes its own driver's db: the caller picked the pair.
  return {
    drizzle,
    run,
    readMigrationFiles: readMigrationFiles as ReadMigrationFiles,
  } as unknown as (D extends 'postgres-js'
    ? PostgresJsDrizzle
    : D extends 'bun-sql'
      ? BunSqlDrizzle
      : NodePgDrizzle) & {
    readMigrationFiles: ReadMigrationFiles;
  };
}
type PostgresJsDrizzle = {
  drizzle: typeof import('drizzle-orm/postgres-js').drizzle;
  run: typeof import('drizzle-orm/postgres-js/migrator').migrate;
};
// Typed by its shape: drizzle's bun-sql types need Bun's own, which users on Node do not have.
type BunSqlDrizzle = {
  drizzle: (config: { client: unknown; logger?: unknown }) => unknown;
  run: (db: unknown, config: { migrationsFolder: string }) => Promise<void>;
};
type NodePgDrizzle = {
  drizzle: typeof import('drizzle-orm/node-postgres').drizzle;
  run: typeof import('drizzle-orm/node-postgres/migrator').migrate;
};
