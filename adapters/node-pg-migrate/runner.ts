// What node-pg-migrate's `runner` would run, by its own steps (loading and ordering the files, reading its table)
// minus the ones that create anything; and node-pg-migrate itself, imported only when used.
import { readdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Migration, runner as nodePgMigrateRunner, RunnerOption } from 'node-pg-migrate';
import type pg from 'pg';
import { importPeer, quoteIdent } from '../kit.js';

// node-pg-migrate's `loadMigrations` and helpers live in a module tree of their own beside its bundle,
// which takes ~90 ms to load cold. Loading starts when this adapter is imported (whoever imports it uses
// node-pg-migrate), so a replica's first call does not pay for it; a missing module is `undefined` here
// and reported where it is needed.
const runnerModules = Promise.all([
  import('node-pg-migrate/runner').catch(() => undefined),
  import('node-pg-migrate/utils/index').catch(() => undefined),
]);

interface MigrationLike {
  name: string;
  timestamp: number;
}

/**
 * node-pg-migrate's own steps before it runs anything (runner.ts: loadMigrations, getRunMigrations, checkOrder,
 * getMigrationsToRun), minus ensureMigrationsTable: a missing table means nothing has run. Loading and
 * naming migrations is node-pg-migrate's code; the three small steps it does not export are repeated here.
 */
export async function toRun(client: pg.ClientBase, options: RunnerOption): Promise<string[]> {
  const { migrations, schema, table } = await loadMigrationList(options);
  const { migrationsTable } = options;
  const tables = await client.query(
    'SELECT table_name FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2',
    [schema, migrationsTable],
  );
  let runNames: string[] = [];
  if (tables.rowCount === 1) {
    runNames = (await client.query(`SELECT name FROM ${table} ORDER BY run_on, id`)).rows.map((row) => row.name);
  }
  // 8.x and 9.x check the order unless told not to; 7.x only when asked (it exports no PG_MIGRATE_LOCK_ID).
  const { PG_MIGRATE_LOCK_ID: since8 } = await importNodePgMigrate();
  if (since8 === undefined ? options.checkOrder === true : options.checkOrder !== false) {
    for (let i = 0; i < Math.min(runNames.length, migrations.length); i += 1) {
      if (runNames[i] !== migrations[i]!.name) {
        throw new Error(`Not run migration ${migrations[i]!.name} is preceding already run migration ${runNames[i]}`);
      }
    }
  }
  if (options.direction === 'down') {
    const down = runNames
      .filter((name) => !options.file || options.file === name)
      .map((name) => migrations.find((migration) => migration.name === name) ?? name);
    const count = options.count ?? 1;
    const picked = (
      options.timestamp
        ? down.filter((migration) => typeof migration === 'object' && migration.timestamp >= count)
        : down.slice(-Math.abs(count))
    ).reverse();
    const deleted = picked.filter((migration) => typeof migration === 'string');
    if (deleted.length > 0) throw new Error(`Definitions of migrations ${deleted.join(', ')} have been deleted.`);
    return picked.map((migration) => (migration as MigrationLike).name);
  }
  const up = migrations.filter(({ name }) => !runNames.includes(name) && (!options.file || options.file === name));
  const count = options.count ?? Number.POSITIVE_INFINITY;
  return (options.timestamp ? up.filter(({ timestamp }) => timestamp <= count) : up.slice(0, Math.abs(count))).map(
    ({ name }) => name,
  );
}

/**
 * The migrations as node-pg-migrate's runner sees them, and its table name. 9.x exports `loadMigrations`
 * (which loads the files through its configurable loaders) and its helpers as modules of their own. 8.x's
 * such modules do not load (they import a ./utils.js it does not ship), so for 8.x its directory listing
 * (getMigrationFilePaths, not exported) is repeated, naming and dating each file with its own `Migration`.
 */
export async function loadMigrationList(options: RunnerOption) {
  const { Migration } = await importNodePgMigrate();
  const logger =
    options.logger ??
    (options.log ? { debug: options.log, info: options.log, warn: options.log, error: options.log } : console);
  const [runnerModule, utils] = await runnerModules;
  const migrations: MigrationLike[] = runnerModule?.loadMigrations
    ? await runnerModule.loadMigrations(null as never, options as never, logger as never)
    : await listFiles(options, (path) => new Migration(null as never, path, {} as never, options, {}, logger));
  const schemas = (Array.isArray(options.schema) ? options.schema : [options.schema]).filter(
    (schema): schema is string => typeof schema === 'string' && schema.length > 0,
  );
  const schema = options.migrationsSchema === undefined ? (schemas[0] ?? 'public') : options.migrationsSchema;
  let table = `${quoteIdent(schema)}.${quoteIdent(options.migrationsTable)}`;
  if (options.decamelize) {
    if (!utils)
      throw new TypeError('pg-migration-lock/node-pg-migrate: pending() with `decamelize` needs node-pg-migrate 9');
    table = utils.createSchemalize({ shouldDecamelize: true, shouldQuote: true })({
      schema,
      name: options.migrationsTable,
    });
  }
  return { migrations, schema, table };
}

/** node-pg-migrate 8.x's getMigrationFilePaths (without `useGlob`), its Migration giving names and timestamps. */
async function listFiles(options: RunnerOption, migration: (path: string) => MigrationLike): Promise<MigrationLike[]> {
  const { dir, ignorePattern } = options;
  if (options.useGlob) {
    throw new TypeError('pg-migration-lock/node-pg-migrate: pending() with `useGlob` needs node-pg-migrate 9');
  }
  if (Array.isArray(dir) || Array.isArray(ignorePattern)) {
    throw new TypeError('Options "dir" and "ignorePattern" can only be arrays when "useGlob" is true');
  }
  const ignore = new RegExp(ignorePattern?.length ? `^${ignorePattern}$` : '^\\..*');
  const files = (await readdir(`${dir}/`, { withFileTypes: true }))
    .filter((entry) => (entry.isFile() || entry.isSymbolicLink()) && !ignore.test(entry.name))
    .map((entry) => entry.name);
  // 8.x dates the file name, extension included: a Migration named exactly that computes the same number.
  const stamps = new Map(files.map((file) => [file, migration(`${file}.x`).timestamp]));
  files.sort(
    (a, b) =>
      stamps.get(a)! - stamps.get(b)! ||
      a.localeCompare(b, undefined, { usage: 'sort', numeric: true, sensitivity: 'variant', ignorePunctuation: true }),
  );
  return files.map((file) => migration(resolve(dir, file)));
}

export function importNodePgMigrate(): Promise<{
  runner: typeof nodePgMigrateRunner;
  Migration: typeof Migration;
  /** Undefined in 7.x, which has neither the export nor the `lockValue` option. */
  PG_MIGRATE_LOCK_ID?: number;
}> {
  return importPeer('node-pg-migrate', 'node-pg-migrate', () => import('node-pg-migrate'));
}
