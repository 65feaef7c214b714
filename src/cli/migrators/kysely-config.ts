// kysely-ctl's config, read as kysely-ctl reads it: the file (found like it finds it), its environments, its
// dialect (or the database URL where it names no server) and its migrations, as Migrator props.
import { existsSync, promises as fs } from 'node:fs';
import path, { basename, dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import type { Dialect, Kysely, KyselyPlugin } from 'kysely';
import type { MigrationProvider, MigratorProps } from 'kysely/migration';
import type pg from 'pg';
import { connectionConfig } from '../../driver/pg.js';
import { clientConfig, databaseUrl, type GlobalOptions } from '../context.js';
import { UsageError } from '../errors.js';
import type { Output } from '../output.js';
import { configLoadFailure, enableTypeScript, importFile, typeScriptIn } from './loader.js';
import { existingDir, importFromProject } from './project.js';

/** The flags that pick the config: the file and its environment. */
export interface KyselyConfigFlags {
  config?: string;
  environment?: string;
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

/** The Kysely instance and Migrator props the project's kysely-ctl config describes. */
export async function openKysely(
  command: Command,
  out: Output,
  flags: KyselyConfigFlags,
): Promise<{ db: Kysely<unknown>; props: MigratorProps; dirs: string[]; database: pg.ClientConfig | undefined }> {
  const { file, config, props, dirs, kyselyModule } = await migratorSetup(flags);
  const { db, database } = await kyselyOf(command, out, config, kyselyModule, file);
  if (out.target) out.targetSource ??= basename(file);
  // A Kysely instance or dialect of the config's own, or a pool set up by PG* variables: the server names it.
  else await nameFromServer(out, db, kyselyModule, file);
  return { db, database, dirs, props: { ...props, db } };
}

/** The config file, its Migrator props but `db` (the provider made as kysely-ctl makes it), and the kysely it uses. */
export async function migratorSetup(flags: KyselyConfigFlags) {
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
  if (migrator !== undefined) {
    throw new UsageError(
      `${file} builds its own Migrator (migrations.migrator), which pg-migration-lock cannot run on the lock's session`,
      'Wrap kysely-ctl instead: pg-migration-lock run -- npx kysely migrate latest',
    );
  }
  const provider = await hydrate(given);
  // Like kysely-ctl: relative to the working directory.
  const folder = provider
    ? undefined
    : existingDir(migrationFolder, 'kysely migrations folder', `migrations.migrationFolder in ${file}`);

  // TypeScript migrations: the project's loader is set up before kysely lists them.
  const tsMigration = folder && typeScriptIn(folder);
  if (tsMigration) enableTypeScript(dirname(file), tsMigration);
  const kyselyModule = await importFromProject<typeof import('kysely')>('kysely', dirname(file));
  const migration = await importFromProject<typeof import('kysely/migration')>('kysely/migration', dirname(file)).catch(
    // kysely 0.28 has the migrator in 'kysely' itself.
    () => kyselyModule as unknown as typeof import('kysely/migration'),
  );
  return {
    file,
    config,
    kyselyModule,
    dirs: folder ? [folder] : [dirname(file)],
    props: {
      ...(props as Partial<MigratorProps>),
      // kysely >= 0.29 lets us import each file: TypeScript through the project's loader, and a file that fails
      // to load named (kysely 0.28 imports them itself).
      provider:
        provider ??
        new migration.FileMigrationProvider({
          fs,
          path,
          migrationFolder: folder!,
          import: (migration: string) => importFile(migration, dirname(file)),
        } as ConstructorParameters<typeof migration.FileMigrationProvider>[0]),
    } as Omit<MigratorProps, 'db'>,
  };
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
  // Like kysely-ctl (c12, jiti): a TypeScript config through the project's loader.
  const ns = await importFile(file).catch((err: unknown) => {
    throw configLoadFailure('kysely config', err);
  });
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

/**
 * The Kysely instance the config describes; --database-url wins, and the database URL (--database-url or
 * DATABASE_URL) fills in when the config names no server: no dialect, or dialect 'pg' / 'postgres' without the
 * pool / postgres.js instance of its dialectConfig (kysely-ctl would fail on it).
 */
async function kyselyOf(
  command: Command,
  out: Output,
  config: KyselyCtlConfig,
  kysely: typeof import('kysely'),
  file: string,
): Promise<{ db: Kysely<unknown>; database: pg.ClientConfig | undefined }> {
  const plugins = config.plugins;
  const fromDir = dirname(file);
  const fromUrl = async (url: string) => {
    const database = connectionConfig(clientConfig(url));
    const pgModule = await importFromProject<typeof import('pg')>('pg', fromDir);
    const pool = new pgModule.default.Pool({ ...database, max: 2 });
    pool.on('error', () => {}); // a lost session is reported by the lock
    return { db: new kysely.Kysely({ dialect: new kysely.PostgresDialect({ pool }), plugins }), database };
  };
  const override = command.optsWithGlobals<GlobalOptions>().databaseUrl;
  if (override || (!config.kysely && !config.dialect)) return fromUrl(databaseUrl(command, out, true));
  if (config.kysely) return { db: config.kysely, database: undefined };
  const dialect = config.dialect;
  if (dialect === 'pg') {
    const dialectConfig = (await hydrate(config.dialectConfig)) as { pool?: unknown } | undefined;
    const pool = (await hydrate(dialectConfig?.pool)) as { options?: pg.ClientConfig } | undefined;
    if (!pool)
      return fromUrl(
        urlFor(command, out, file, 'pg', 'pool', 'new pg.Pool({ connectionString: process.env.DATABASE_URL })'),
      );
    const db = new kysely.Kysely({
      dialect: new kysely.PostgresDialect({ ...dialectConfig, pool } as never),
      plugins,
    });
    return { db, database: describeDatabase(out, pool?.options) };
  }
  if (dialect === 'postgres') {
    const dialectConfig = (await hydrate(config.dialectConfig)) as { postgres?: unknown } | undefined;
    const sql = dialectConfig?.postgres as
      | { options?: { host?: string[]; port?: number[]; user?: string; pass?: string; database?: string } }
      | undefined;
    if (!sql) return fromUrl(urlFor(command, out, file, 'postgres', 'postgres', 'postgres(process.env.DATABASE_URL)'));
    const { PostgresJSDialect } = await importFromProject<typeof import('kysely-postgres-js')>(
      'kysely-postgres-js',
      fromDir,
    );
    const o = sql.options;
    const database = o?.host
      ? describeDatabase(out, {
          host: o.host[0],
          port: o.port?.[0],
          user: o.user,
          password: o.pass,
          database: o.database,
        })
      : undefined;
    return { db: new kysely.Kysely({ dialect: new PostgresJSDialect(dialectConfig as never), plugins }), database };
  }
  if (typeof dialect === 'string') {
    throw new UsageError(
      `The kysely config's dialect is ${JSON.stringify(dialect)}: pg-migration-lock needs 'pg' or 'postgres'`,
    );
  }
  return { db: new kysely.Kysely({ dialect: (await hydrate(dialect)) as Dialect, plugins }), database: undefined };
}

/**
 * The database URL for a config whose dialect names no server (dialect 'pg' without dialectConfig.pool…),
 * like --database-url; without one, a usage error that says what to add.
 */
function urlFor(
  command: Command,
  out: Output,
  file: string,
  dialect: string,
  setting: string,
  example: string,
): string {
  const url = databaseUrl(command, out, false);
  if (url !== undefined) return url;
  throw new UsageError(
    `${basename(file)} has dialect '${dialect}' but no dialectConfig.${setting}, and no database URL is given`,
    `Set DATABASE_URL (or pass --database-url), or add dialectConfig: { ${setting}: ${example} } to ${file}.`,
  );
}

/** The connection settings a pool was made with, for `pending --wait`'s own connection and the target line. */
function describeDatabase(out: Output, options: pg.ClientConfig | undefined): pg.ClientConfig | undefined {
  if (!options) return undefined;
  if (typeof options.password === 'string') out.addSecret(options.password);
  if (options.connectionString) {
    out.addConnectionString(options.connectionString);
    out.target = out.scrub(options.connectionString);
  } else if (options.host) {
    out.target = `postgres://${options.user ? `${options.user}@` : ''}${options.host}${options.port ? `:${options.port}` : ''}/${options.database ?? ''}`;
  }
  return connectionConfig(options);
}

/** The database a Kysely instance connects to, as the server names it, for the Database line: the config does not say. */
async function nameFromServer(out: Output, db: Kysely<unknown>, kysely: typeof import('kysely'), file: string) {
  const { rows } = await kysely.sql<{ user: string; database: string; host: string | null; port: number | null }>`
    SELECT current_user AS "user", current_database() AS "database", host(inet_server_addr()) AS "host",
      inet_server_port() AS "port"`.execute(db);
  const row = rows[0];
  if (!row) return;
  // No address: a Unix socket (libpq's `postgres://user@/db`).
  const host = row.host === null ? '' : row.host.includes(':') ? `[${row.host}]` : row.host;
  out.target = `postgres://${encodeURIComponent(row.user)}@${host}${row.port ? `:${row.port}` : ''}/${encodeURIComponent(row.database)}`;
  out.targetSource = `${basename(file)}, as the server names it`;
}

/** kysely-ctl accepts a value or a (possibly async) factory of it in several places. */
async function hydrate<T>(value: T | (() => T | Promise<T>)): Promise<T> {
  return typeof value === 'function' ? await (value as () => T | Promise<T>)() : value;
}
