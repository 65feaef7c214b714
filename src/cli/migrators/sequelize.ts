import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Command } from 'commander';
import type pg from 'pg';
import type { Sequelize } from 'sequelize';
import type { Umzug } from 'umzug';
import { connectionConfig } from '../../driver/pg.js';
import type { FleetMigrator } from '../../fleet/types.js';
import type { KeyedLockOptions } from '../../keyed.js';
import { announceTarget, clientConfig } from '../context.js';
import { UsageError } from '../errors.js';
import type { Output } from '../output.js';
import { migrationFailure, migrationFile } from './failure.js';
import { importFromProject } from './project.js';
import {
  MIGRATION_FILE,
  readSequelizeProject,
  type SequelizeConfig,
  type SequelizeConfigFlags,
  type SequelizeProject,
  withoutConnection,
} from './sequelize-config.js';
import type { Applied, CliMigrator, PendingCheck } from './types.js';

export interface SequelizeFlags extends SequelizeConfigFlags {
  /** `migrate` only: up to and including this migration (sequelize-cli's `--to`). */
  to?: string;
}

/** `migrate sequelize` and `pending sequelize`: what `sequelize-cli db:migrate` reads, with its flag names. */
export const sequelizeMigrator: CliMigrator<SequelizeFlags> = {
  name: 'sequelize',
  flags: (command, verb) => {
    command
      .option('--env <name>', 'config environment (default: $NODE_ENV, else development)')
      .option('--config <path>', "config file (default: .sequelizerc's config, else config/config.js or .json)")
      .option('--migrations-path <dir>', "migrations folder (default: .sequelizerc's migrations-path, else migrations)")
      .option('--options-path <path>', 'the .sequelizerc to read (default: ./.sequelizerc)');
    if (verb === 'pending') return command;
    return command.option('--to <migration>', 'run the pending migrations up to this one (its file name)');
  },
  help: {
    migrate: {
      description:
        'sequelize-cli db:migrate (migrations exporting up(queryInterface, Sequelize)), configured by .sequelizerc and config/config.json|js like sequelize-cli, recorded in SequelizeMeta',
      after: `
The environment's url, use_env_variable or database/host/… fields give the database; --database-url (or
DATABASE_URL when the config names no database) replaces them. Needs umzug 3 and sequelize 6 installed.
TypeScript configs and migrations are not loaded: wrap sequelize-cli instead
(pg-migration-lock run -- npx sequelize-cli db:migrate).

Examples:
  $ pg-migration-lock migrate sequelize
  $ pg-migration-lock migrate sequelize --env production --timeout 5m`,
    },
    pending: {
      description:
        'what sequelize-cli db:migrate would run (SequelizeMeta is created if missing, as sequelize-cli does)',
      after: `
Examples:
  $ pg-migration-lock pending sequelize
  $ pg-migration-lock pending sequelize --env production --wait --timeout 10m`,
    },
  },
  migrate: migrateSequelize,
  pending: pendingSequelize,
  fleet: (command, out, flags) => fleetSequelize(command, out, flags),
};

/** `sequelize-cli db:migrate` under the lock, taken on a connection of the Sequelize instance's pool. */
async function migrateSequelize(
  command: Command,
  out: Output,
  flags: SequelizeFlags,
  lock: KeyedLockOptions,
): Promise<Applied> {
  const project = await readSequelizeProject(command, out, flags);
  announceTarget(out);
  const { sequelize, umzug } = await openUmzug(project, out, true);
  try {
    const { up } = await import('../../../adapters/umzug.js');
    try {
      const applied = await up(umzug, sequelize, { ...(flags.to !== undefined && { to: flags.to }), lock });
      return { migrator: 'sequelize', applied: applied.map((m) => m.name) };
    } catch (err) {
      // umzug's MigrationError names the migration and carries the error it ran into.
      const failed = err as { name?: string; cause?: unknown; migration?: { name?: string } };
      if (failed?.name === 'MigrationError' && failed.migration?.name) {
        throw migrationFailure(
          'sequelize',
          failed.cause ?? err,
          migrationFile(project.migrationsDir, failed.migration.name),
          [project.migrationsDir],
        );
      }
      throw migrationFailure('sequelize', err, undefined, [project.migrationsDir]);
    }
  } finally {
    await sequelize.close();
  }
}

/** What `migrate sequelize` would apply: umzug's `pending()` over SequelizeMeta (which it creates if missing). */
async function pendingSequelize(command: Command, out: Output, flags: SequelizeFlags): Promise<PendingCheck> {
  const project = await readSequelizeProject(command, out, flags);
  announceTarget(out);
  const { sequelize, umzug, database } = await openUmzug(project, out, false);
  const { pending } = await import('../../../adapters/umzug.js');
  return { migrator: 'sequelize', check: () => pending(umzug), database, close: () => sequelize.close() };
}

/**
 * The fleet migrator of `migrate sequelize --each-…`: the config's environment, each target's connection; on a schema
 * target SequelizeMeta lives in the schema, Sequelize's `schema` is it, and the migrations' connections search it first
 * (`searchPath`).
 */
async function fleetSequelize(command: Command, out: Output, flags: SequelizeFlags): Promise<FleetMigrator> {
  const project = await readSequelizeProject(command, out, flags, false);
  const { fleet } = await import('../../../adapters/umzug.js');
  const rest = withoutConnection(project.config);
  const opened = new WeakMap<object, Sequelize>();
  return fleet(
    async (target) => {
      const connection = target.connection;
      const where =
        typeof connection === 'string'
          ? { url: connection }
          : {
              config: {
                host: connection.host,
                port: connection.port,
                username: connection.user,
                password: connection.password as string | undefined,
                database: connection.database,
              },
            };
      const schema = target.schema;
      const config: SequelizeConfig = {
        ...rest,
        ...where.config,
        dialect: 'postgres',
        ...(schema !== undefined && {
          // Sequelize's queryInterface qualifies some statements (addColumn…) with `schema`, else 'public';
          // raw SQL finds its tables through the search_path.
          schema,
          searchPath: `"${schema.replace(/"/g, '""')}",public`,
          dialectOptions: { ...(rest.dialectOptions as object), prependSearchPath: true },
        }),
      };
      const storage = schema === undefined ? project.storage : { ...project.storage, schema };
      const { sequelize, umzug } = await openUmzug({ ...project, config, url: where.url, storage }, out, false);
      opened.set(umzug, sequelize);
      return umzug;
    },
    { close: (umzug) => opened.get(umzug)?.close() },
  );
}

/** A Sequelize of the config (or the URL that replaces its connection) and an Umzug 3 over its migrations. */
async function openUmzug(
  project: SequelizeProject,
  out: Output,
  progress: boolean,
): Promise<{ sequelize: Sequelize; umzug: Umzug<object>; database: pg.ClientConfig }> {
  const cwd = process.cwd();
  const sequelizeModule = await importFromProject<{ Sequelize?: typeof Sequelize; default?: typeof Sequelize }>(
    'sequelize',
    cwd,
  );
  const SequelizeClass = (sequelizeModule.Sequelize ?? sequelizeModule.default) as typeof Sequelize;
  const { SequelizeStorage, Umzug: UmzugClass } = await importUmzug(cwd);
  const files = readdirSync(project.migrationsDir)
    .filter((file) => MIGRATION_FILE.test(file))
    .sort();
  const typescript = files.find((file) => /\.[cm]?ts$/.test(file));
  if (typescript) {
    throw new UsageError(
      `${join(project.migrationsDir, typescript)} is TypeScript, which migrate sequelize does not load`,
      'Compile the migrations to .js, or wrap sequelize-cli: pg-migration-lock run -- npx sequelize-cli db:migrate',
    );
  }
  // Our stdout is for the summary: Sequelize's SQL log stays off.
  const options = { ...project.config, logging: false } as ConstructorParameters<typeof Sequelize>[1] & object;
  const sequelize = project.url ? new SequelizeClass(project.url, options) : new SequelizeClass(options);
  const database = connectionConfig(
    project.url
      ? clientConfig(project.url)
      : {
          host: project.config.host,
          port: project.config.port === undefined ? undefined : Number(project.config.port),
          user: project.config.username,
          password: project.config.password ?? undefined,
          database: project.config.database,
        },
  );
  try {
    const { tableName, schema } = project.storage;
    let { timestamps } = project.storage;
    const queryInterface = sequelize.getQueryInterface();
    if (schema && schema !== 'public') await createSchema(sequelize, schema);
    // sequelize-cli's ensureCurrentMetaSchema: a SequelizeMeta with createdAt means timestamps.
    try {
      const columns = await queryInterface.describeTable(schema ? { tableName, schema } : tableName);
      if ('createdAt' in columns) timestamps = true;
    } catch {
      // no table yet
    }
    const umzug = new UmzugClass({
      migrations: files.map((file) => {
        const path = join(project.migrationsDir, file);
        const run = async (method: 'up' | 'down') => {
          const migration = await loadMigration(path);
          const fn = migration[method];
          if (typeof fn !== 'function') throw new Error(`Could not find migration method: ${method}`);
          // sequelize-cli's migrations take (queryInterface, Sequelize).
          return fn.call(migration, queryInterface, SequelizeClass);
        };
        return { name: file, path, up: () => run('up'), down: () => run('down') };
      }),
      context: queryInterface,
      storage: new SequelizeStorage({ sequelize, tableName, schema, timestamps }),
      logger: progress
        ? {
            info: (event: Record<string, unknown>) => {
              if (event.event === 'migrating') out.info(`sequelize: migrating ${String(event.name)}`);
            },
            warn: () => {},
            error: () => {},
            debug: () => {},
          }
        : undefined,
    });
    return { sequelize, umzug: umzug as Umzug<object>, database };
  } catch (err) {
    await sequelize.close();
    throw err;
  }
}

/** umzug 3 (SequelizeStorage): the project's, else ours. A project with sequelize-cli may have umzug 2 at its top. */
async function importUmzug(cwd: string): Promise<typeof import('umzug')> {
  let mod: Partial<typeof import('umzug')> | undefined;
  try {
    mod = await importFromProject<typeof import('umzug')>('umzug', cwd);
  } catch {
    // not installed in the project: ours below
  }
  if (!mod?.SequelizeStorage) {
    try {
      mod = await import('umzug');
    } catch {
      mod = undefined;
    }
  }
  if (!mod?.SequelizeStorage || !mod.Umzug) {
    throw new UsageError(
      `umzug 3 is not installed in ${cwd} (sequelize-cli's own umzug 2 is not enough)`,
      'Install it in your project: npm install umzug@3',
    );
  }
  return mod as typeof import('umzug');
}

type MigrationModule = Record<string, unknown> & { up?: unknown; down?: unknown };

/** A migration file's module, as sequelize-cli's umzug 2 reads it (module.exports, or its `default`). */
async function loadMigration(path: string): Promise<MigrationModule & Record<'up' | 'down', unknown>> {
  const ns = (await import(pathToFileURL(path).href)) as MigrationModule;
  let migration = (ns.default ?? ns) as MigrationModule;
  if (migration.default && typeof migration.default === 'object') migration = migration.default as MigrationModule;
  return migration as MigrationModule & Record<'up' | 'down', unknown>;
}

/** sequelize-cli creates a custom migrationStorageTableSchema; replicas doing it at once may collide: that is fine. */
async function createSchema(sequelize: Sequelize, schema: string): Promise<void> {
  try {
    await sequelize.query(`CREATE SCHEMA IF NOT EXISTS "${schema.replace(/"/g, '""')}"`);
  } catch (err) {
    const [rows] = (await sequelize.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', {
      bind: [schema],
    })) as [unknown[], unknown];
    if (rows.length === 0) throw err;
  }
}
