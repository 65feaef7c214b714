import { existsSync, promises as fs } from 'node:fs';
import path, { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Command } from 'commander';
import type { Dialect, Kysely, KyselyPlugin } from 'kysely';
import type { MigrationProvider } from 'kysely/migration';
import { connectionConfig } from '../../session.js';
import { clientConfig, databaseUrl, type GlobalOptions } from '../context.js';
import { UsageError } from '../errors.js';
import type { Output } from '../output.js';
import { existingDir, importFromProject } from './project.js';
import type { AdapterLock, Applied } from './types.js';

export interface KyselyFlags {
  config?: string;
  environment?: string;
  transaction: boolean;
}

// kysely-ctl's names, in its order of preference: `.config/` first, TypeScript first.
const EXTENSIONS = ['ts', 'mts', 'cts', 'js', 'mjs', 'cjs'];
const CONFIG_FILES = EXTENSIONS.flatMap((ext) => [`.config/kysely.config.${ext}`, `kysely.config.${ext}`]);

/** The part of a kysely-ctl config (`kysely.config.*`, `defineConfig({ … })`) that migrating uses. */
interface KyselyCtlConfig {
  dialect?: string | Dialect | (() => Dialect | Promise<Dialect>);
  dialectConfig?: Record<string, unknown> | (() => Record<string, unknown> | Promise<Record<string, unknown>>);
  kysely?: Kysely<unknown>;
  plugins?: KyselyPlugin[];
  migrations?: {
    migrationFolder?: string;
    provider?: MigrationProvider | (() => MigrationProvider | Promise<MigrationProvider>);
    migrator?: unknown;
    allowJS?: boolean;
    getMigrationPrefix?: unknown;
    [prop: string]: unknown;
  };
  [key: string]: unknown;
}

/** `kysely migrate latest` (kysely-ctl) under the lock, configured by the project's kysely-ctl config file. */
export async function migrateKysely(
  command: Command,
  out: Output,
  flags: KyselyFlags,
  lock: AdapterLock,
): Promise<Applied> {
  const file = findConfig(flags.config);
  const config = await loadConfig(file, flags.environment);
  const {
    migrator,
    migrationFolder = 'migrations',
    provider: given,
    allowJS,
    getMigrationPrefix,
    ...props
  } = config.migrations ?? {};
  const provider = await hydrate(given);
  if (migrator !== undefined) {
    throw new UsageError(
      `${file} builds its own Migrator (migrations.migrator), which pg-migration-lock cannot run on the lock's session`,
      'Wrap kysely-ctl instead: pg-migration-lock run -- npx kysely migrate latest',
    );
  }

  const kyselyModule = await importFromProject<typeof import('kysely')>('kysely', dirname(file));
  const migration = await importFromProject<typeof import('kysely/migration')>('kysely/migration', dirname(file)).catch(
    // kysely 0.28 has the migrator in 'kysely' itself.
    () => kyselyModule as unknown as typeof import('kysely/migration'),
  );
  const db = (await kyselyOf(command, out, config, kyselyModule, dirname(file))) as Kysely<unknown>;
  try {
    const { Migrator } = await import('../../../adapters/kysely.js');
    const result = await new Migrator({
      ...props,
      disableTransactions: flags.transaction === false || (props.disableTransactions as boolean | undefined),
      db,
      provider:
        provider ??
        new migration.FileMigrationProvider({
          fs,
          path,
          // Like kysely-ctl: relative to the working directory.
          migrationFolder: existingDir(
            migrationFolder,
            'kysely migrations folder',
            `migrations.migrationFolder in ${file}`,
          ),
        }),
      lock,
    }).migrateToLatest();
    if (result.error) throw result.error;
    const applied = (result.results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
    return { migrator: 'kysely', applied };
  } finally {
    await db.destroy();
  }
}

function findConfig(given: string | undefined): string {
  if (given !== undefined) {
    const file = resolve(given);
    if (!existsSync(file)) throw new UsageError(`kysely config file not found: ${file}`);
    return file;
  }
  // Like kysely-ctl: the nearest config from the working directory up.
  for (let dir = process.cwd(); ; dir = dirname(dir)) {
    const found = CONFIG_FILES.map((name) => join(dir, name)).find((file) => existsSync(file));
    if (found) return found;
    if (dirname(dir) === dir) break;
  }
  throw new UsageError(
    `No kysely config file (kysely.config.ts, .js, .mjs, … or in .config/) in ${process.cwd()} or above`,
    'Pass one with --config path/to/kysely.config.mjs',
  );
}

/** The config for `environment`, as c12 (kysely-ctl's loader) layers it: `$<env>` / `$env.<env>` over the base. */
async function loadConfig(file: string, environment: string | undefined): Promise<KyselyCtlConfig> {
  let ns: Record<string, unknown>;
  try {
    ns = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (err) {
    if (/\.[cm]?ts$/.test(file) && (err as { code?: string }).code === 'ERR_UNKNOWN_FILE_EXTENSION') {
      throw new UsageError(
        `${file} is TypeScript, which this Node cannot load as-is`,
        'Use Node >= 22.18 (it strips types), compile it to .mjs, or wrap kysely-ctl: pg-migration-lock run -- npx kysely migrate latest',
      );
    }
    throw err;
  }
  let config = (ns.default ?? ns) as unknown;
  if (typeof config === 'function') config = await config();
  if (!config || typeof config !== 'object') throw new UsageError(`${file} does not export a kysely-ctl config`);
  const base = config as KyselyCtlConfig;
  if (!environment) return base;
  const layer = (base[`$${environment}`] ?? (base.$env as Record<string, unknown> | undefined)?.[environment]) as
    | KyselyCtlConfig
    | undefined;
  if (!layer) throw new UsageError(`${file} has no "${environment}" environment ($${environment})`);
  return { ...base, ...layer, migrations: { ...base.migrations, ...layer.migrations } };
}

/** The Kysely instance the config describes; --database-url (or DATABASE_URL when it names none) wins. */
async function kyselyOf(
  command: Command,
  out: Output,
  config: KyselyCtlConfig,
  kysely: typeof import('kysely'),
  fromDir: string,
): Promise<Kysely<unknown>> {
  const plugins = config.plugins;
  const override = command.optsWithGlobals<GlobalOptions>().databaseUrl;
  if (override || (!config.kysely && !config.dialect)) {
    const pg = await importFromProject<typeof import('pg')>('pg', fromDir);
    const pool = new pg.default.Pool({ ...connectionConfig(clientConfig(databaseUrl(command, out, true))), max: 2 });
    pool.on('error', () => {}); // a lost session is reported by the lock
    return new kysely.Kysely({ dialect: new kysely.PostgresDialect({ pool }), plugins });
  }
  if (config.kysely) return config.kysely;
  const dialect = config.dialect;
  if (dialect === 'pg') {
    return new kysely.Kysely({
      dialect: new kysely.PostgresDialect((await hydrate(config.dialectConfig)) as never),
      plugins,
    });
  }
  if (dialect === 'postgres') {
    const { PostgresJSDialect } = await importFromProject<typeof import('kysely-postgres-js')>(
      'kysely-postgres-js',
      fromDir,
    );
    return new kysely.Kysely({
      dialect: new PostgresJSDialect((await hydrate(config.dialectConfig)) as never),
      plugins,
    });
  }
  if (typeof dialect === 'string') {
    throw new UsageError(
      `The kysely config's dialect is ${JSON.stringify(dialect)}: pg-migration-lock needs 'pg' or 'postgres'`,
    );
  }
  return new kysely.Kysely({ dialect: (await hydrate(dialect)) as Dialect, plugins });
}

/** kysely-ctl accepts a value or a (possibly async) factory of it in several places. */
async function hydrate<T>(value: T | (() => T | Promise<T>)): Promise<T> {
  return typeof value === 'function' ? await (value as () => T | Promise<T>)() : value;
}
