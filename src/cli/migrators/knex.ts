import { existsSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import type { Knex } from 'knex';
import type pg from 'pg';
import type { KnexFleetConfig } from '../../../adapters/knex.js';
import type { FleetMigrator } from '../../fleet/types.js';
import type { KeyedLockOptions } from '../../keyed.js';
import { announceTarget, clientConfig, databaseUrl, type GlobalOptions } from '../context.js';
import { UsageError } from '../errors.js';
import type { Output } from '../output.js';
import { migrationFailure } from './failure.js';
import { configLoadFailure, enableTypeScript, importFile, typeScriptIn } from './loader.js';
import { existingDir, importFromProject } from './project.js';
import type { Applied, CliMigrator, PendingCheck } from './types.js';

export interface KnexFlags {
  knexfile?: string;
  env?: string;
}

// Like knex's CLI: JavaScript first, then TypeScript (through the project's loader, as knex's rechoir does).
const KNEXFILES = ['knexfile.js', 'knexfile.cjs', 'knexfile.mjs', 'knexfile.ts', 'knexfile.cts', 'knexfile.mts'];

/** `migrate knex` and `pending knex`: knex's CLI's knexfile and environment. */
export const knexMigrator: CliMigrator<KnexFlags> = {
  name: 'knex',
  flags: (command) =>
    command
      .option('--knexfile <path>', 'knexfile (.js, .cjs, .mjs or .ts) (default: the nearest knexfile.js/.cjs/.mjs/.ts)')
      .option('--env <name>', 'knexfile environment (default: $NODE_ENV, else development)'),
  help: {
    migrate: {
      description: "knex migrate:latest, configured by your knexfile (like knex's own CLI)",
      after: `
--database-url (or DATABASE_URL when the knexfile has no connection) replaces the knexfile's connection.

Examples:
  $ pg-migration-lock migrate knex
  $ pg-migration-lock migrate knex --knexfile db/knexfile.mjs --env production --timeout 5m`,
    },
    pending: {
      description: 'what knex migrate:latest would run (your knexfile)',
      after: `
Examples:
  $ pg-migration-lock pending knex
  $ pg-migration-lock pending knex --knexfile db/knexfile.mjs --env production --wait --timeout 5m`,
    },
  },
  migrate: migrateKnex,
  pending: pendingKnex,
  fleet: (_command, out, flags) => fleetKnex(out, flags),
};

/** `knex migrate:latest` under the lock, configured by the project's knexfile like knex's own CLI. */
async function migrateKnex(command: Command, out: Output, flags: KnexFlags, lock: KeyedLockOptions): Promise<Applied> {
  const { knex, failedFile, dirs } = await openKnex(command, out, flags);
  try {
    const { latest } = await import('../../../adapters/knex.js');
    let batchNo: number;
    let log: string[];
    try {
      [batchNo, log] = await latest(knex, { lock });
    } catch (err) {
      throw migrationFailure('knex', err, failedFile(), dirs);
    }
    return { migrator: 'knex', applied: log, note: log.length > 0 ? `batch ${batchNo}` : undefined };
  } finally {
    await knex.destroy();
  }
}

/** What `migrate knex` would apply, by the same knexfile: the adapter's `pending`. */
async function pendingKnex(command: Command, out: Output, flags: KnexFlags): Promise<PendingCheck> {
  const { knex, config } = await openKnex(command, out, flags);
  const { pending } = await import('../../../adapters/knex.js');
  const connection = typeof config.connection === 'function' ? await config.connection() : config.connection;
  return {
    migrator: 'knex',
    check: () => pending(knex),
    database: (typeof connection === 'string' ? clientConfig(connection) : connection) as pg.ClientConfig,
    close: () => knex.destroy(),
  };
}

/** The fleet migrator of `migrate knex --each-…`: the knexfile's environment, each target's connection instead of its own. */
async function fleetKnex(out: Output, flags: KnexFlags): Promise<FleetMigrator> {
  const { knexfile, config } = await readKnexfile(flags);
  prepareConfig(out, config, knexfile);
  const { connection: _ignored, ...rest } = config;
  const { fleet } = await import('../../../adapters/knex.js');
  return fleet(rest as KnexFleetConfig);
}

/** A knex instance from the project's knexfile (environment, connection, paths), like knex's own CLI makes it. */
async function openKnex(
  command: Command,
  out: Output,
  flags: KnexFlags,
): Promise<{ knex: Knex; config: Knex.Config; failedFile: () => string | undefined; dirs: string[] }> {
  const { knexfile, envName, config } = await readKnexfile(flags);

  // Precedence: --database-url, then the knexfile's own connection (what plain knex uses; knexfiles that
  // want DATABASE_URL read it themselves), then DATABASE_URL. Which one won is printed.
  if (command.optsWithGlobals<GlobalOptions>().databaseUrl || !config.connection) {
    config.connection = clientConfig(databaseUrl(command, out, true)) as Knex.PgConnectionConfig;
  } else {
    registerSecrets(out, config.connection);
    out.target = describeConnection(out, config.connection);
    const fromEnv = process.env.DATABASE_URL;
    const ignored = !fromEnv
      ? ''
      : readsUrl(config.connection, fromEnv)
        ? ', which reads DATABASE_URL'
        : '; DATABASE_URL is set but not used: --database-url overrides';
    out.targetSource = `${basename(knexfile)}, environment "${envName}"${ignored}`;
  }
  announceTarget(out);
  const { failedFile, dirs } = prepareConfig(out, config, knexfile);
  const knexModule = await importFromProject<{ default: (config: Knex.Config) => Knex }>('knex', dirname(knexfile));
  // The file knex names as failing (its own log), and the directories it read: what our last line names.
  return { knex: knexModule.default(config), config, failedFile, dirs };
}

/** The knexfile's environment, as knex's CLI reads it. */
async function readKnexfile(flags: KnexFlags): Promise<{ knexfile: string; envName: string; config: Knex.Config }> {
  const knexfile = findKnexfile(flags.knexfile);
  // Like knex's CLI: paths in the knexfile (migrations.directory…) are relative to the knexfile.
  process.chdir(dirname(knexfile));
  const envName = flags.env ?? (process.env.NODE_ENV || 'development');
  return { knexfile, envName, config: await loadKnexfile(knexfile, envName) };
}

/** Checks a knexfile config (client, migrations directories) and routes knex's log to ours. */
function prepareConfig(
  out: Output,
  config: Knex.Config,
  knexfile: string,
): { failedFile: () => string | undefined; dirs: string[] } {
  config.client ??= 'pg';
  // knex logs to the console (stdout); ours keeps stdout for the summary.
  let failedFile: string | undefined;
  config.log ??= {
    warn: (message) => {
      // knex names the failing file, then repeats the error our final line gives: keep the name for that line.
      const file = /^migration file "(.+)" failed$/.exec(message)?.[1];
      if (file) failedFile = file;
      // knex throws the error it logs as "Acquire connection error: <stack>" right after: our last line names it.
      else if (!/^(migration failed with error:|Acquire connection error:)/.test(message))
        out.detail(`knex: ${message}`);
    },
    error: (message) => out.detail(`knex: ${message}`),
    deprecate: (method, alternative) => out.warn(`knex: ${method} is deprecated, use ${alternative}`),
    debug: () => {},
  };
  if (typeof config.client !== 'string' || !['pg', 'postgres', 'postgresql'].includes(config.client)) {
    throw new UsageError(`The knexfile's client is ${JSON.stringify(config.client)}: pg-migration-lock needs 'pg'`);
  }
  const dirs: string[] = [];
  if (!config.migrations?.migrationSource) {
    const given = config.migrations?.directory ?? './migrations';
    for (const dir of Array.isArray(given) ? given : [given]) {
      dirs.push(existingDir(dir, 'knex migrations directory', `migrations.directory in ${knexfile}`));
    }
  }
  // TypeScript migrations: knex requires them itself, through the project's loader set up here.
  const tsMigration = dirs.map(typeScriptIn).find((file) => file !== undefined);
  if (tsMigration) enableTypeScript(dirname(knexfile), tsMigration);
  return { failedFile: () => failedFile, dirs };
}

function findKnexfile(given: string | undefined): string {
  if (given !== undefined) {
    const path = resolve(given);
    if (!existsSync(path)) throw new UsageError(`knexfile not found: ${path}`);
    return path;
  }
  // Like knex: the nearest knexfile from the working directory up.
  for (let dir = process.cwd(); ; dir = dirname(dir)) {
    const found = KNEXFILES.map((name) => join(dir, name)).find((path) => existsSync(path));
    if (found) return found;
    if (dirname(dir) === dir) break;
  }
  throw new UsageError(
    `No knexfile found (${KNEXFILES.join(', ')}) in ${process.cwd()} or above`,
    'Pass one with --knexfile path/to/knexfile.js',
  );
}

/** The knexfile's config for `envName`, as knex's CLI reads it (default export, function, environments). */
async function loadKnexfile(path: string, envName: string): Promise<Knex.Config> {
  const ns = await importFile(path).catch((err: unknown) => {
    throw configLoadFailure('knexfile', err);
  });
  let all = (ns.default ?? { ...ns }) as unknown;
  if (typeof all === 'function') all = await all();
  if (!all || typeof all !== 'object') throw new UsageError(`${path} does not export a knex config`);
  const configs = all as Record<string, Knex.Config>;
  if (configs[envName]) return { ...configs[envName] };
  if ('client' in configs || 'connection' in configs) return { ...(configs as Knex.Config) };
  throw new UsageError(
    `${path} has no "${envName}" environment (it has: ${Object.keys(configs).join(', ')})`,
    'Choose one with --env NAME (default: $NODE_ENV, else development).',
  );
}

function registerSecrets(out: Output, connection: unknown): void {
  if (typeof connection === 'string') {
    out.addConnectionString(connection);
    return;
  }
  if (!connection || typeof connection !== 'object') return;
  const settings = connection as { password?: unknown; connectionString?: unknown };
  if (typeof settings.password === 'string') out.addSecret(settings.password);
  if (typeof settings.connectionString === 'string') out.addConnectionString(settings.connectionString);
}

/** Whether a knexfile's connection is this URL: `connection: process.env.DATABASE_URL` or `{ connectionString: … }`. */
function readsUrl(connection: unknown, url: string): boolean {
  if (typeof connection === 'string') return connection === url;
  return (connection as { connectionString?: unknown } | null)?.connectionString === url;
}

/** A knexfile's connection as a redacted URL-like name (a function or other shape: named as such). */
function describeConnection(out: Output, connection: unknown): string {
  if (typeof connection === 'string') return out.scrub(connection);
  if (typeof connection === 'function') return 'the connection function in the knexfile';
  if (!connection || typeof connection !== 'object') return 'the knexfile connection';
  const c = connection as Record<string, unknown>;
  if (typeof c.connectionString === 'string') return out.scrub(c.connectionString);
  const user = typeof c.user === 'string' ? `${c.user}${c.password ? ':***' : ''}@` : '';
  const port = c.port === undefined ? '' : `:${c.port}`;
  return `postgres://${user}${c.host ?? 'localhost'}${port}/${c.database ?? ''}`;
}
