// What `sequelize-cli db:migrate` reads: `.sequelizerc`, `config/config.json|js` and its environment, the
// migrations folder and the SequelizeMeta table's settings. The CLI's `migrate sequelize` reads the same.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, join, relative, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import type { Command } from 'commander';
import { databaseUrl, type GlobalOptions } from '../context.js';
import { UsageError } from '../errors.js';
import type { Output } from '../output.js';
import { existingDir } from './project.js';

export interface SequelizeConfigFlags {
  env?: string;
  config?: string;
  migrationsPath?: string;
  optionsPath?: string;
}

/** One environment of a sequelize-cli config, as Sequelize's constructor takes it (plus sequelize-cli's keys). */
export type SequelizeConfig = Record<string, unknown> & {
  url?: string;
  use_env_variable?: string;
  dialect?: string;
  username?: string;
  password?: string | null;
  host?: string;
  port?: number | string;
  database?: string;
};

export interface SequelizeProject {
  /** The config's environment, without its connection when --database-url or DATABASE_URL replaces it. */
  config: SequelizeConfig;
  /** The connection string to use instead of the config's connection fields, if any. */
  url?: string;
  migrationsDir: string;
  /** SequelizeMeta's table, schema and timestamps, from `migrationStorage*` in the config. */
  storage: { tableName: string; schema?: string; timestamps: boolean };
}

/** Where a migration is a file: what sequelize-cli's umzug matches in the migrations folder. */
export const MIGRATION_FILE = /^(?!.*\.d\.ts$).*\.(cjs|js|cts|ts)$/;

/** The project as `sequelize-cli db:migrate` sees it from the working directory, with the connection the CLI chose. */
export async function readSequelizeProject(
  command: Command,
  out: Output,
  flags: SequelizeConfigFlags,
  connection = true,
): Promise<SequelizeProject> {
  const cwd = process.cwd();
  const rc = readRc(flags.optionsPath ? resolve(cwd, flags.optionsPath) : join(cwd, '.sequelizerc'));
  const rcString = (name: string) => (typeof rc[name] === 'string' ? (rc[name] as string) : undefined);
  // sequelize-cli's yargs: a flag, else .sequelizerc, else the default.
  const given = flags.config ?? rcString('config');
  const defaultPath = resolve(cwd, 'config', 'config.json');
  const configFile = given
    ? resolve(cwd, given)
    : existsSync(defaultPath.replace(/\.json$/, '.js'))
      ? defaultPath.replace(/\.json$/, '.js')
      : defaultPath;
  const migrationsPath = flags.migrationsPath ?? rcString('migrations-path') ?? rcString('migrationsPath');
  const migrationsDir = existingDir(
    resolve(cwd, migrationsPath ?? 'migrations'),
    'sequelize migrations folder',
    '--migrations-path (or migrations-path in .sequelizerc)',
  );
  const envName = flags.env ?? rcString('env') ?? (process.env.NODE_ENV || 'development');
  const rcUrl = rcString('url');

  const override = command.optsWithGlobals<GlobalOptions>().databaseUrl !== undefined;
  let config: SequelizeConfig;
  if (existsSync(configFile)) config = pickEnvironment(await loadConfig(configFile), envName, configFile);
  else if (rcUrl || override || process.env.DATABASE_URL) config = {};
  else {
    throw new UsageError(
      `Cannot find "${relative(cwd, configFile) || configFile}" (sequelize-cli's config)`,
      'Run from your project folder, pass --config PATH, or give the database with --database-url.',
    );
  }
  if (rcUrl && !config.url && !config.use_env_variable) config = { ...config, url: rcUrl };

  const storage = storageOf(config);
  const max = (config.pool as { max?: unknown } | undefined)?.max;
  if (typeof max === 'number' && max < 2) {
    throw new UsageError(
      `The config's pool.max is ${max}: the lock holds one of Sequelize's connections while the migrations run on another`,
      'Set pool.max to 2 or more for this environment.',
    );
  }
  const source = `${existsSync(configFile) ? relative(cwd, configFile) : '.sequelizerc'}, environment "${envName}"`;
  if (!connection) return { config, migrationsDir, storage };
  // --database-url is used whatever the config says (even a use_env_variable naming an unset variable).
  const own = override ? undefined : ownConnection(config);
  if (override || !own) {
    // --database-url wins over the config; DATABASE_URL fills in when the config names no database.
    const url = databaseUrl(command, out, true);
    return { config: { ...withoutConnection(config), dialect: 'postgres' }, url, migrationsDir, storage };
  }
  checkDialect(config, own);
  if (typeof config.password === 'string') out.addSecret(config.password);
  if (own.url) {
    out.addConnectionString(own.url);
    out.target = out.scrub(own.url);
  } else {
    const user = config.username ? `${config.username}${config.password ? ':***' : ''}@` : '';
    out.target = `postgres://${user}${config.host ?? 'localhost'}${config.port ? `:${config.port}` : ''}/${config.database ?? ''}`;
  }
  out.targetSource = own.variable ? `${source}, ${own.variable}` : source;
  return { config, url: own.url, migrationsDir, storage };
}

/** `.sequelizerc`: a CommonJS file sequelize-cli `require`s, its values as yargs takes them (plain JSON). */
/** The config without what names its database (a URL, a variable, the connection settings): for another connection. */
export function withoutConnection(config: SequelizeConfig): Record<string, unknown> {
  const {
    url: _u,
    use_env_variable: _v,
    username: _n,
    password: _p,
    host: _h,
    port: _o,
    database: _d,
    ...rest
  } = config;
  return rest;
}

function readRc(path: string): Record<string, unknown> {
  if (!existsSync(path)) return {};
  try {
    const value = createRequire(path)(path) as unknown;
    return value && typeof value === 'object' ? (JSON.parse(JSON.stringify(value)) as Record<string, unknown>) : {};
  } catch (err) {
    throw new UsageError(`Cannot load ${path}: ${(err as Error).message}`);
  }
}

/** The config file's export, as sequelize-cli's import helper reads it (JSON, CommonJS or ESM; a function, awaited). */
async function loadConfig(path: string): Promise<unknown> {
  if (/\.[cm]?ts$/.test(path)) {
    throw new UsageError(
      `${path} is TypeScript, which Node cannot load as-is`,
      'Compile it to .js, or wrap sequelize-cli: pg-migration-lock run -- npx sequelize-cli db:migrate',
    );
  }
  let config: unknown;
  try {
    if (path.endsWith('.json')) config = JSON.parse(readFileSync(path, 'utf8'));
    else {
      const ns = (await import(pathToFileURL(path).href)) as { default?: unknown };
      config = await (ns.default ?? ns);
    }
  } catch (err) {
    throw new UsageError(`Error reading "${basename(path)}": ${(err as Error).message}`);
  }
  if (typeof config === 'function') {
    // sequelize-cli: a function of one argument takes a callback; otherwise it returns the config or a promise.
    config = config.length === 1 ? await promisify(config as (cb: () => void) => void)() : await config();
  }
  if (!config || typeof config !== 'object') {
    throw new UsageError(`Config must be an object or a promise for an object: ${path}`);
  }
  return config;
}

/** The environment's config: `config[env]` when there is one, else the whole file (as sequelize-cli does). */
function pickEnvironment(all: unknown, envName: string, path: string): SequelizeConfig {
  const configs = all as Record<string, unknown>;
  const picked = configs[envName];
  if (picked && typeof picked === 'object') return { ...(picked as SequelizeConfig) };
  const flat = ['dialect', 'url', 'use_env_variable', 'database', 'host'].some((key) => key in configs);
  if (flat) return { ...(configs as SequelizeConfig) };
  throw new UsageError(
    `${path} has no "${envName}" environment (it has: ${Object.keys(configs).join(', ')})`,
    'Choose one with --env NAME (default: $NODE_ENV, else development).',
  );
}

/** The config's own connection: `url`, the variable `use_env_variable` names, or database/host fields. */
function ownConnection(config: SequelizeConfig): { url?: string; variable?: string } | undefined {
  if (typeof config.url === 'string' && config.url) return { url: config.url };
  if (config.use_env_variable) {
    const value = process.env[config.use_env_variable];
    if (!value) {
      throw new UsageError(
        `The config's use_env_variable names ${config.use_env_variable}, which is not set`,
        `Set it, or give the database with --database-url.`,
      );
    }
    return { url: value, variable: `read from $${config.use_env_variable}` };
  }
  if (config.database !== undefined || config.host !== undefined) return {};
  return undefined;
}

function checkDialect(config: SequelizeConfig, own: { url?: string }): void {
  const dialect = own.url ? own.url.split(':')[0] : config.dialect;
  if (dialect !== 'postgres' && dialect !== 'postgresql') {
    throw new UsageError(
      `The config's dialect is ${JSON.stringify(dialect)}: pg-migration-lock needs 'postgres'`,
      'Or give a PostgreSQL database with --database-url.',
    );
  }
}

/** SequelizeMeta's settings, read like sequelize-cli's umzug helper (only the 'sequelize' storage holds a table). */
function storageOf(config: SequelizeConfig): SequelizeProject['storage'] {
  const kind = (config.migrationStorage as string | undefined) || 'sequelize';
  if (kind !== 'sequelize') {
    throw new UsageError(
      `The config's migrationStorage is ${JSON.stringify(kind)}: migrate sequelize supports only 'sequelize' (the SequelizeMeta table)`,
      'Or wrap sequelize-cli: pg-migration-lock run -- npx sequelize-cli db:migrate',
    );
  }
  return {
    tableName: (config.migrationStorageTableName as string | undefined) || 'SequelizeMeta',
    schema: (config.migrationStorageTableSchema as string | undefined) || undefined,
    timestamps: Boolean(config.migrationTimestamps),
  };
}
