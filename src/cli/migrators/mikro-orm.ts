import { existsSync, readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import type { MikroORM, Options } from '@mikro-orm/core';
import type { Command } from 'commander';
import type pg from 'pg';
import { connectionConfig } from '../../driver/pg.js';
import type { FleetMigrator } from '../../fleet/types.js';
import type { KeyedLockOptions } from '../../keyed.js';
import { announceTarget, clientConfig, databaseUrl, type GlobalOptions } from '../context.js';
import { UsageError } from '../errors.js';
import type { Output } from '../output.js';
import { migrationFailure, migrationFile } from './failure.js';
import { configLoadFailure, importFile } from './loader.js';
import { importFromProject } from './project.js';
import type { Applied, CliMigrator, PendingCheck } from './types.js';

export interface MikroOrmFlags {
  config?: string;
  context?: string;
}

/** `migrate mikro-orm` and `pending mikro-orm`: the config `mikro-orm migration:up` reads. */
export const mikroOrmMigrator: CliMigrator<MikroOrmFlags> = {
  name: 'mikro-orm',
  flags: (command) =>
    command
      .option(
        '--config <path>',
        "MikroORM config file (default: $MIKRO_ORM_CLI_CONFIG, package.json's mikro-orm.configPaths, else ./dist|build|src/mikro-orm.config.js, ./mikro-orm.config.js|mjs|cjs)",
      )
      .option('--context <name>', 'the config of that contextName (default: $MIKRO_ORM_CONTEXT_NAME, else default)'),
  help: {
    migrate: {
      description:
        "MikroORM migration:up (@mikro-orm/migrations), configured by your MikroORM config like MikroORM's CLI",
      after: `
--database-url (or DATABASE_URL when the config names no database) replaces the config's connection; MikroORM's
MIKRO_ORM_* variables apply as in its CLI. A TypeScript config loads through the project's own loader (jiti, tsx or ts-node); or wrap MikroORM's CLI
(pg-migration-lock run -- npx mikro-orm migration:up).

Examples:
  $ pg-migration-lock migrate mikro-orm
  $ pg-migration-lock migrate mikro-orm --config dist/mikro-orm.config.js --timeout 5m`,
    },
    pending: {
      description:
        'what MikroORM migration:up would run (mikro_orm_migrations is created if missing, as MikroORM does)',
      after: `
Examples:
  $ pg-migration-lock pending mikro-orm
  $ pg-migration-lock pending mikro-orm --config dist/mikro-orm.config.js --wait`,
    },
  },
  migrate: migrateMikroOrm,
  pending: pendingMikroOrm,
  fleet: (_command, _out, flags) => fleetMikroOrm(flags),
};

async function migrateMikroOrm(
  command: Command,
  out: Output,
  flags: MikroOrmFlags,
  lock: KeyedLockOptions,
): Promise<Applied> {
  const { orm, dirs } = await openOrm(command, out, flags);
  try {
    const { up } = await import('../../../adapters/mikro-orm.js');
    try {
      const applied = await up(orm as never, { lock });
      return { migrator: 'mikro-orm', applied: applied.map((m) => m.name) };
    } catch (err) {
      // MikroORM's umzug names the failing migration: `Migration <name> (up) failed: …`.
      const failed = err as { name?: string; cause?: unknown; migration?: { name?: string }; message?: string };
      const name = failed?.migration?.name ?? /Migration (\S+) \(up\) failed/.exec(String(failed?.message))?.[1];
      const cause = failed?.name === 'MigrationError' && failed.cause ? failed.cause : err;
      throw migrationFailure('mikro-orm', cause, name && migrationFile(dirs[0]!, name), dirs);
    }
  } finally {
    await orm.close(true);
  }
}

async function pendingMikroOrm(command: Command, out: Output, flags: MikroOrmFlags): Promise<PendingCheck> {
  const { orm, database } = await openOrm(command, out, flags);
  const { pending } = await import('../../../adapters/mikro-orm.js');
  return {
    migrator: 'mikro-orm',
    check: () => pending(orm as never),
    database,
    close: () => orm.close(true),
  };
}

/** The fleet migrator of `migrate mikro-orm --each-…`: the config without its connection, each target's instead. */
async function fleetMikroOrm(flags: MikroOrmFlags): Promise<FleetMigrator> {
  const { options } = await loadConfig(flags);
  const { clientUrl: _c, host: _h, port: _p, user: _u, password: _w, dbName: _d, ...rest } = options;
  const { fleet } = await import('../../../adapters/mikro-orm.js');
  return fleet(rest as never);
}

const CONNECTION_KEYS = ['clientUrl', 'host', 'port', 'user', 'password', 'dbName'] as const;

/** An initialized MikroORM of the project's config (or the URL that replaces its connection). */
async function openOrm(
  command: Command,
  out: Output,
  flags: MikroOrmFlags,
): Promise<{ orm: MikroORM; database: pg.ClientConfig; dirs: string[] }> {
  const { options, file, postgresql } = await loadConfig(flags);
  const fromConfig = CONNECTION_KEYS.some((key) => options[key] !== undefined);
  const overrides: Partial<Options> = {
    // Our stdout is for the summary: MikroORM's log goes to stderr.
    logger: (message: string) => out.detail(`mikro-orm: ${message}`),
  };
  let database: pg.ClientConfig;
  if (command.optsWithGlobals<GlobalOptions>().databaseUrl || !fromConfig) {
    const url = databaseUrl(command, out, true);
    for (const key of CONNECTION_KEYS) overrides[key] = undefined;
    overrides.clientUrl = url;
    database = connectionConfig(clientConfig(url));
  } else {
    if (typeof options.password === 'string') out.addSecret(options.password);
    if (typeof options.clientUrl === 'string') out.addConnectionString(options.clientUrl);
    const { host, port, user, password, dbName } = options;
    database = connectionConfig(
      options.clientUrl
        ? clientConfig(options.clientUrl)
        : { host, port, user, password: password as string | undefined, database: dbName },
    );
    out.target = options.clientUrl
      ? out.scrub(options.clientUrl)
      : `postgres://${user ? `${user}@` : ''}${host ?? 'localhost'}${port ? `:${port}` : ''}/${dbName ?? ''}`;
    out.targetSource = file ? relative(process.cwd(), file) : 'MIKRO_ORM_* variables';
  }
  announceTarget(out);
  const orm = (await postgresql.MikroORM.init({ ...options, ...overrides } as never)) as MikroORM;
  const config = orm.config as unknown as { get(key: string): unknown };
  const migrations = (config.get('migrations') ?? {}) as { path?: string };
  const baseDir = (config.get('baseDir') as string | undefined) ?? process.cwd();
  const path = migrations.path ?? './migrations';
  const dirs = [isAbsolute(path) ? path : resolve(baseDir, path)];
  if (file) dirs.push(dirname(file));
  return { orm, database, dirs };
}

/**
 * The config `mikro-orm migration:up` would use: the file (`--config`, else MikroORM's own search), the context's
 * entry of it (an array or a factory), MikroORM's MIKRO_ORM_* variables over it.
 */
async function loadConfig(flags: MikroOrmFlags): Promise<{
  options: Options & Record<string, unknown>;
  file?: string;
  postgresql: { MikroORM: { init(options: unknown): Promise<unknown> } };
}> {
  const cwd = process.cwd();
  const core = await importFromProject<typeof import('@mikro-orm/core')>('@mikro-orm/core', cwd);
  const postgresql = await importFromProject<{ MikroORM: { init(options: unknown): Promise<unknown> } }>(
    '@mikro-orm/postgresql',
    cwd,
  );
  const loader = core.ConfigurationLoader;
  const contextName = flags.context ?? process.env.MIKRO_ORM_CONTEXT_NAME ?? 'default';
  const env = loader.loadEnvironmentVars() as Record<string, unknown>;
  const file = findConfig(flags.config, Object.keys(env).length > 0);
  let config: unknown = {};
  if (file) {
    // A TypeScript config (what `mikro-orm init` writes) through the project's own loader.
    const ns = (await importFile(file).catch((err) => Promise.reject(configLoadFailure('MikroORM config', err)))) as {
      default?: unknown;
    };
    config = await (ns.default ?? ns);
    config = await pickContext(config, contextName, file);
  }
  const options = core.Utils.mergeConfig({}, config as object, env) as Options & Record<string, unknown>;
  const driver = (options.driver as { name?: string } | undefined)?.name;
  if (driver !== undefined && driver !== 'PostgreSqlDriver') {
    throw new UsageError(`The MikroORM config's driver is ${driver}: pg-migration-lock needs @mikro-orm/postgresql`);
  }
  return { options, file, postgresql };
}

/** What MikroORM's ConfigurationLoader does with an array of configs or a factory: the `contextName` one. */
async function pickContext(config: unknown, contextName: string, file: string): Promise<unknown> {
  const named = (c: unknown) =>
    typeof c === 'object' &&
    c !== null &&
    ('contextName' in c ? c.contextName === contextName : contextName === 'default');
  const valid = (c: unknown) =>
    typeof c === 'object' && c !== null && (!('contextName' in c) || c.contextName === contextName);
  if (Array.isArray(config)) {
    const found = config.filter(named);
    if (found.length === 1) return found[0];
    if (found.length > 1) throw new UsageError(`MikroORM config '${contextName}' is not unique in ${file}`);
    for (const factory of config) {
      if (typeof factory !== 'function') continue;
      const made = await factory(contextName);
      if (valid(made)) return made;
    }
    throw new UsageError(
      `MikroORM config '${contextName}' was not found in ${file}`,
      'Choose one with --context NAME.',
    );
  }
  if (typeof config === 'function') config = await config(contextName);
  if (!named(config) && !valid(config)) {
    throw new UsageError(
      `MikroORM config '${contextName}' is not what ${file} exports`,
      'Choose one with --context NAME.',
    );
  }
  return config;
}

/** The config file, found like MikroORM's CLI does (a TypeScript one last, as when its CLI has no ts-node). */
function findConfig(given: string | undefined, fromEnv: boolean): string | undefined {
  const cwd = process.cwd();
  const candidates: string[] = [];
  if (given !== undefined) candidates.push(given);
  else {
    if (process.env.MIKRO_ORM_CLI_CONFIG) candidates.push(process.env.MIKRO_ORM_CLI_CONFIG);
    candidates.push(...packageConfigPaths(cwd));
    const out = existsSync(join(cwd, 'dist')) ? 'dist' : existsSync(join(cwd, 'build')) ? 'build' : 'src';
    candidates.push(
      `./${out}/mikro-orm.config.js`,
      './mikro-orm.config.js',
      './mikro-orm.config.mjs',
      './mikro-orm.config.cjs',
    );
  }
  for (const candidate of candidates) {
    const path = resolve(cwd, candidate);
    if (!existsSync(path)) continue;
    return path;
  }
  if (given !== undefined) throw new UsageError(`MikroORM config file not found: ${resolve(cwd, given)}`);
  const ts = ['./src/mikro-orm.config.ts', './mikro-orm.config.ts'].map((p) => resolve(cwd, p)).find(existsSync);
  if (ts) return ts;
  if (fromEnv) return undefined;
  throw new UsageError(
    `MikroORM config file not found in ['${candidates.join("', '")}']`,
    'Pass one with --config PATH (or set MIKRO_ORM_CLI_CONFIG).',
  );
}

/** package.json's `mikro-orm.configPaths`, from the nearest package.json up (as MikroORM reads it). */
function packageConfigPaths(cwd: string): string[] {
  for (let dir = cwd; ; dir = dirname(dir)) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      try {
        const paths = (JSON.parse(readFileSync(manifest, 'utf8')) as { 'mikro-orm'?: { configPaths?: unknown } })[
          'mikro-orm'
        ]?.configPaths;
        return Array.isArray(paths) ? paths.filter((p): p is string => typeof p === 'string') : [];
      } catch {
        return [];
      }
    }
    if (dirname(dir) === dir) return [];
  }
}
