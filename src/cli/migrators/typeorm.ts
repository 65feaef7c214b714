import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import type pg from 'pg';
import type { DataSource } from 'typeorm';
import { connectionConfig } from '../../driver/pg.js';
import type { FleetMigrator } from '../../fleet/types.js';
import type { KeyedLockOptions } from '../../keyed.js';
import { announceTarget, clientConfig, databaseUrl, type GlobalOptions } from '../context.js';
import { UsageError } from '../errors.js';
import type { Output } from '../output.js';
import { migrationFailure } from './failure.js';
import { configLoadFailure, enableTypeScript, importFile, isTypeScript } from './loader.js';
import type { Applied, CliMigrator, PendingCheck } from './types.js';

export interface TypeormFlags {
  dataSource: string;
  transaction?: string;
  fake?: boolean;
}

/** `migrate typeorm` and `pending typeorm`, with TypeORM's CLI's flags (`-d`; `-t` and `-f` to migrate). */
export const typeormMigrator: CliMigrator<TypeormFlags> = {
  name: 'typeorm',
  flags: (command, verb) => {
    command.requiredOption(
      '-d, --data-source <path>',
      'file exporting the DataSource (.js, .cjs, .mjs, or .ts through your TypeScript loader)',
    );
    if (verb === 'pending') return command;
    return command
      .option(
        '-t, --transaction <mode>',
        "all, each or none (default: the data source's migrationsTransactionMode, else all)",
      )
      .option('-f, --fake', 'record the pending migrations as run without running them');
  },
  help: {
    migrate: {
      description: "TypeORM migration:run, for the DataSource a file exports (like TypeORM's own CLI)",
      after: `
--database-url (or DATABASE_URL when the data source names no server) replaces the data source's connection.

Examples:
  $ pg-migration-lock migrate typeorm -d dist/data-source.js
  $ pg-migration-lock migrate typeorm --data-source dist/data-source.js --transaction each --timeout 5m`,
    },
    pending: {
      description: 'what TypeORM migration:run would run',
      after: `
Examples:
  $ pg-migration-lock pending typeorm -d dist/data-source.js
  $ pg-migration-lock pending typeorm --data-source dist/data-source.js --wait --timeout 10m`,
    },
  },
  migrate: migrateTypeorm,
  pending: pendingTypeorm,
  fleet: (_command, _out, flags) => fleetTypeorm(flags),
};

const MODES: Record<string, 'all' | 'each' | 'none'> = { all: 'all', each: 'each', none: 'none', false: 'none' };

/** `typeorm migration:run -d PATH` under the lock, with TypeORM's CLI flags. */
async function migrateTypeorm(
  command: Command,
  out: Output,
  flags: TypeormFlags,
  lock: KeyedLockOptions,
): Promise<Applied> {
  const transaction = transactionMode(flags);
  const { dataSource, dirs } = await openDataSource(command, out, flags);
  const failed = watchFailure(dataSource);
  announceTarget(out);
  try {
    await dataSource.initialize();
    const { pending, runMigrations } = await import('../../../adapters/typeorm.js');
    if (flags.fake) {
      // TypeORM returns no Migration for a fake run: what it recorded is what stopped being pending.
      const before = await pending(dataSource);
      await runMigrations(dataSource, { transaction, fake: true, lock });
      const after = await pending(dataSource);
      return { migrator: 'typeorm', applied: before.filter((name) => !after.includes(name)), note: 'fake' };
    }
    const applied = await runMigrations(dataSource, { transaction, lock });
    return { migrator: 'typeorm', applied: applied.map((m) => m.name) };
  } catch (err) {
    // TypeORM names the failing migration only in its (silenced) log: kept from there, else a stack frame names it.
    throw migrationFailure('typeorm', err, failed.name, dirs);
  } finally {
    if (dataSource.isInitialized) await dataSource.destroy();
  }
}

/** The migration TypeORM logs as failing (`Migration "X" failed, error: …`), through a layer over its logger. */
function watchFailure(dataSource: DataSource): { name?: string } {
  const failed: { name?: string } = {};
  const base = dataSource.logger;
  const logger = Object.create(base) as typeof base;
  logger.logMigration = (message, queryRunner) => {
    const name = /^Migration "(.+)" failed, error:/.exec(message)?.[1];
    // TypeORM prints this on stdout whatever `logging` says: our last line says it, on stderr.
    if (name !== undefined) failed.name = name;
    else base.logMigration(message, queryRunner);
  };
  Object.defineProperty(dataSource, 'logger', { value: logger, configurable: true, writable: true });
  return failed;
}

/** The fleet migrator of `migrate typeorm --each-…`: the data source's options, each target's connection. */
async function fleetTypeorm(flags: TypeormFlags): Promise<FleetMigrator> {
  const transaction = transactionMode(flags);
  const dataSource = await loadDataSource(flags.dataSource);
  checkPostgres(dataSource.options);
  const { fleet } = await import('../../../adapters/typeorm.js');
  // TypeORM logs every migration (and its failure) on stdout whatever `logging` says: one line per target says it.
  const silent = () => {};
  const logger = {
    logQuery: silent,
    logQueryError: silent,
    logQuerySlow: silent,
    logSchemaBuild: silent,
    logMigration: silent,
    log: silent,
  };
  const options = { ...dataSource.options, ...ONLY_MIGRATIONS, logger } as Parameters<typeof fleet>[0];
  return fleet(options, { transaction, fake: flags.fake });
}

function transactionMode(flags: TypeormFlags): 'all' | 'each' | 'none' | undefined {
  const transaction = flags.transaction === undefined ? undefined : MODES[flags.transaction];
  if (flags.transaction !== undefined && transaction === undefined) {
    throw new UsageError(`Invalid --transaction ${JSON.stringify(flags.transaction)}`, 'Use all, each or none.');
  }
  return transaction;
}

// Like TypeORM's CLI: nothing but the migrations runs (no synchronize, no migrationsRun, no subscribers).
const ONLY_MIGRATIONS = {
  subscribers: [],
  synchronize: false,
  migrationsRun: false,
  dropSchema: false,
  logging: false,
};

function checkPostgres(options: { type: string }): void {
  if (options.type !== 'postgres') {
    throw new UsageError(
      `The data source's type is ${JSON.stringify(options.type)}: pg-migration-lock needs 'postgres'`,
    );
  }
}

/** What `migrate typeorm` would apply, with the same flags: the adapter's `pending` (TypeORM's executor). */
async function pendingTypeorm(command: Command, out: Output, flags: TypeormFlags): Promise<PendingCheck> {
  const { dataSource, database } = await openDataSource(command, out, flags);
  announceTarget(out);
  await dataSource.initialize();
  const { pending } = await import('../../../adapters/typeorm.js');
  return {
    migrator: 'typeorm',
    check: () => pending(dataSource),
    database,
    close: () => dataSource.destroy(),
  };
}

/** The data source of `--data-source`, set up like TypeORM's CLI does, with the connection the CLI chose. */
async function openDataSource(
  command: Command,
  out: Output,
  flags: TypeormFlags,
): Promise<{ dataSource: DataSource; database: pg.ClientConfig; dirs: string[] }> {
  const dataSource = await loadDataSource(flags.dataSource);
  const options = dataSource.options as DataSource['options'] & {
    url?: string;
    host?: string;
    port?: number;
    username?: string;
    password?: unknown;
    database?: string;
  };
  checkPostgres(options);
  const overrides: Record<string, unknown> = { ...ONLY_MIGRATIONS };
  let database: pg.ClientConfig;
  if (command.optsWithGlobals<GlobalOptions>().databaseUrl || (!options.url && !options.host)) {
    // --database-url wins over the data source; DATABASE_URL fills in when it names no server.
    overrides.url = databaseUrl(command, out, true);
    database = connectionConfig(clientConfig(overrides.url as string));
  } else {
    registerSecrets(out, options);
    if (options.url) {
      database = connectionConfig(clientConfig(options.url));
      out.target = out.scrub(options.url);
    } else {
      const { host, port, username: user, password, database: name } = options;
      database = connectionConfig({ host, port, user, password: password as string | undefined, database: name });
      out.target = `postgres://${user ? `${user}@` : ''}${host}${port ? `:${port}` : ''}/${name ?? ''}`;
    }
    out.targetSource = basename(flags.dataSource);
  }
  dataSource.setOptions(overrides as Parameters<DataSource['setOptions']>[0]);
  // Where migrations live: the folders of the data source's migration globs (and the file's own).
  const globs = ((options.migrations ?? []) as unknown[]).filter((m): m is string => typeof m === 'string');
  const dirs = [dirname(resolve(flags.dataSource)), ...globs.map((glob) => dirname(resolve(glob)))];
  return { dataSource, database, dirs };
}

/** The DataSource a file exports, found like TypeORM's CLI does (default or named export, awaited). */
async function loadDataSource(file: string): Promise<DataSource> {
  const path = resolve(file);
  if (!existsSync(path))
    throw new UsageError(`TypeORM data source file not found: ${path}`, 'Pass it with --data-source (-d).');
  // Like TypeORM's CLI (typeorm-ts-node-*): a TypeScript data source, and the TypeScript migrations and
  // entities it lists, through the project's loader.
  if (isTypeScript(path)) enableTypeScript(dirname(path), path);
  let ns: Record<string, unknown>;
  try {
    ns = await importFile(path);
  } catch (err) {
    const cause = configLoadFailure('TypeORM data source', err);
    const code = (cause as { code?: string }).code;
    if ((code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') && /'typeorm'/.test(String(cause))) {
      throw new UsageError(`typeorm is not installed for ${path}`, 'Install it in your project: npm install typeorm');
    }
    throw cause;
  }

  // TypeORM's CLI requires a CommonJS file and looks at module.exports' properties; an ES import gives
  // module.exports as `default` (with the names Node could detect beside it). What `tsc` emits for
  // `export default new DataSource(…)`, `exports.default = …`, is then at `default.default`.
  const exported: Record<string, unknown>[] = [ns];
  if (isCommonJs(path) && ns.default && typeof ns.default === 'object')
    exported.push(ns.default as Record<string, unknown>);
  const found: DataSource[] = [];
  for (const exports of exported) {
    for (const key in exports) {
      const value = await exports[key];
      if (isDataSource(value) && !found.includes(value)) found.push(value);
    }
  }
  if (found.length === 0) throw new UsageError(`${path} exports no TypeORM DataSource`);
  if (found.length > 1) {
    throw new UsageError(
      `${path} exports ${found.length} DataSource instances`,
      "Export exactly one, like for TypeORM's CLI.",
    );
  }
  const dataSource = found[0]!;
  // Migrations or entities as TypeScript globs (`src/migrations/*.ts`, `*.{ts,js}`): TypeORM requires them itself.
  const globs = [dataSource.options.migrations, dataSource.options.entities]
    .flatMap((list) => (Array.isArray(list) ? list : []))
    .filter((glob): glob is string => typeof glob === 'string');
  const tsGlob = globs.find((glob) => /\.[cm]?ts$|\{[^}]*\b[cm]?ts\b[^}]*\}$/.test(glob));
  if (tsGlob) enableTypeScript(dirname(path), resolve(dirname(path), tsGlob));
  return dataSource;
}

/** Whether Node loads this file as CommonJS: `.cjs`, or `.js` without `"type": "module"` in the nearest package.json. */
function isCommonJs(file: string): boolean {
  if (file.endsWith('.cjs')) return true;
  if (!file.endsWith('.js')) return false;
  for (let dir = dirname(file); ; dir = dirname(dir)) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      try {
        return (JSON.parse(readFileSync(manifest, 'utf8')) as { type?: unknown }).type !== 'module';
      } catch {
        return true; // Node fails on it anyway
      }
    }
    if (dirname(dir) === dir) return true;
  }
}

function isDataSource(value: unknown): value is DataSource {
  const candidate = value as Partial<DataSource> | null;
  return (
    typeof candidate?.initialize === 'function' &&
    typeof candidate.runMigrations === 'function' &&
    typeof candidate.options === 'object'
  );
}

function registerSecrets(out: Output, options: { url?: string; password?: unknown }): void {
  if (typeof options.password === 'string') out.addSecret(options.password);
  if (typeof options.url === 'string') out.addConnectionString(options.url);
}
