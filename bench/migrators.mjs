// The migrators the bench measures. Each entry knows how to write a synthetic migration set in its own
// format, and how to run it, bare and through its pg-migration-lock adapter. Adding a migrator (kysely,
// TypeORM) is adding one entry: the sections iterate over MIGRATORS and need nothing else.
//
// The sets are synthetic (the real projects' migrations cannot be fetched here): `count` tiny
// `CREATE TABLE` migrations, plus, for the convergence section, one more that takes `slowSeconds`.
import { promises as fs } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path, { join } from 'node:path';

/** Whether every specifier resolves from here (the migrator is installed, this build has its adapter). */
export function available(entry) {
  try {
    for (const specifier of entry.requires) import.meta.resolve(specifier);
    return true;
  } catch {
    return false;
  }
}

/** The SQL of each migration in a set: `count` tiny ones, then optionally one slow one. */
export function migrationSet(count, slowSeconds) {
  const set = Array.from({ length: count }, (_, i) => ({
    name: `bench_${String(i).padStart(3, '0')}`,
    sql: `CREATE TABLE bench_${i} (id integer PRIMARY KEY, note text)`,
  }));
  if (slowSeconds)
    set.push({ name: `bench_${String(count).padStart(3, '0')}_slow`, sql: `SELECT pg_sleep(${slowSeconds})` });
  return set;
}

/**
 * name → {
 *   requires: what must resolve for the entry to run (else the bench skips it, saying so);
 *   table: the migrator's own table (where it records applied migrations, by `name`), for the checks;
 *   baseline: the bare mode the wrapped one is compared with;
 *   write(dir, set): writes the set in the migrator's format;
 *   open(url, dir): imports the migrator and the adapter, connects nothing; resolves to
 *     { modes: { [mode]: () => Promise }, close() }. Every mode runs "migrate to latest" once.
 * }
 */
export const MIGRATORS = {
  knex: {
    requires: ['knex', 'pg-migration-lock/knex'],
    table: 'public.knex_migrations',
    baseline: 'bare',
    async write(dir, set) {
      await mkdir(dir, { recursive: true });
      for (const { name, sql } of set) {
        await writeFile(
          join(dir, `${name}.cjs`),
          `exports.up = (knex) => knex.raw(${JSON.stringify(sql)});\nexports.down = () => {};\n`,
        );
      }
    },
    async open(url, dir) {
      const { default: knex } = await import('knex');
      const { latest } = await import('pg-migration-lock/knex');
      const db = knex({ client: 'pg', connection: url });
      const config = { directory: dir };
      return {
        modes: {
          bare: () => db.migrate.latest(config),
          wrapped: () => latest(db, { ...config, lock: { logger: null } }),
        },
        close: () => db.destroy(),
      };
    },
  },

  'node-pg-migrate': {
    requires: ['node-pg-migrate', 'pg-migration-lock/node-pg-migrate'],
    table: 'public.pgmigrations',
    // Bare node-pg-migrate takes its own lock in 'fail' mode: replicas that find it taken fail. The fair
    // baseline is `noLock` (every replica runs, none fails); plain `bare` is measured for its failures.
    baseline: 'bare noLock',
    async write(dir, set) {
      await mkdir(dir, { recursive: true });
      for (const [i, { name, sql }] of set.entries()) {
        await writeFile(
          join(dir, `${1700000000000 + i}_${name}.cjs`),
          `exports.up = (pgm) => { pgm.sql(${JSON.stringify(sql)}); };\n`,
        );
      }
    },
    async open(url, dir) {
      const { runner: bare } = await import('node-pg-migrate');
      const { runner } = await import('pg-migration-lock/node-pg-migrate');
      const options = { databaseUrl: url, dir, direction: 'up', migrationsTable: 'pgmigrations', log: () => {} };
      return {
        modes: {
          bare: () => bare(options),
          'bare noLock': () => bare({ ...options, noLock: true }),
          wrapped: () => runner({ ...options, lock: { logger: null } }),
        },
        close: async () => {},
      };
    },
  },

  drizzle: {
    requires: ['drizzle-orm', 'pg-migration-lock/drizzle'],
    table: 'drizzle.__drizzle_migrations',
    baseline: 'bare',
    async write(dir, set) {
      await mkdir(join(dir, 'meta'), { recursive: true });
      const entries = set.map(({ name }, idx) => ({
        idx,
        version: '7',
        when: 1700000000000 + idx,
        tag: name,
        breakpoints: true,
      }));
      await writeFile(
        join(dir, 'meta/_journal.json'),
        JSON.stringify({ version: '7', dialect: 'postgresql', entries }),
      );
      for (const { name, sql } of set) await writeFile(join(dir, `${name}.sql`), `${sql};\n`);
    },
    async open(url, dir) {
      const [{ default: pg }, { drizzle }, { migrate: bare }, { migrate }] = await Promise.all([
        import('pg'),
        import('drizzle-orm/node-postgres'),
        import('drizzle-orm/node-postgres/migrator'),
        import('pg-migration-lock/drizzle'),
      ]);
      const pool = new pg.Pool({ connectionString: url });
      const db = drizzle({ client: pool });
      const config = { migrationsFolder: dir };
      return {
        modes: {
          bare: () => bare(db, config),
          wrapped: () => migrate(db, { ...config, lock: { logger: null } }),
        },
        close: () => pool.end(),
      };
    },
  },

  kysely: {
    requires: ['kysely', 'pg-migration-lock/kysely'],
    table: 'public.kysely_migration',
    baseline: 'bare',
    async write(dir, set) {
      await mkdir(dir, { recursive: true });
      for (const { name, sql } of set) {
        await writeFile(
          join(dir, `${name}.mjs`),
          `import { sql } from 'kysely';\nexport const up = (db) => sql.raw(${JSON.stringify(sql)}).execute(db);\nexport const down = async () => {};\n`,
        );
      }
    },
    async open(url, dir) {
      const [fs, path, kysely, { default: pg }, { Migrator }] = await Promise.all([
        import('node:fs/promises'),
        import('node:path'),
        import('kysely'),
        import('pg'),
        import('pg-migration-lock/kysely'),
      ]);
      // kysely 0.29 has its migrator in 'kysely/migration', 0.28 in 'kysely'.
      const migration = await import('kysely/migration').catch(() => kysely);
      const db = new kysely.Kysely({
        dialect: new kysely.PostgresDialect({ pool: new pg.Pool({ connectionString: url }) }),
      });
      const props = { db, provider: new migration.FileMigrationProvider({ fs, path, migrationFolder: dir }) };
      const check = ({ error }) => {
        if (error) throw error;
      };
      return {
        modes: {
          bare: async () => check(await new migration.Migrator(props).migrateToLatest()),
          wrapped: async () => check(await new Migrator({ ...props, lock: { logger: null } }).migrateToLatest()),
        },
        close: () => db.destroy(),
      };
    },
  },

  typeorm: {
    requires: ['typeorm', 'pg-migration-lock/typeorm'],
    table: 'public.migrations',
    baseline: 'bare',
    async write(dir, set) {
      await mkdir(dir, { recursive: true });
      for (const [i, { name, sql }] of set.entries()) {
        // TypeORM reads a migration's timestamp from the last 13 digits of its class name.
        const className = `Bench${i}T${1700000000000 + i}`;
        await writeFile(
          join(dir, `${1700000000000 + i}-${name}.mjs`),
          `export class ${className} {\n  async up(queryRunner) { await queryRunner.query(${JSON.stringify(sql)}); }\n  async down() {}\n}\n`,
        );
      }
    },
    async open(url, dir) {
      const [{ DataSource }, { runMigrations }] = await Promise.all([
        import('typeorm'),
        import('pg-migration-lock/typeorm'),
      ]);
      const dataSource = new DataSource({ type: 'postgres', url, migrations: [join(dir, '*.mjs')], logging: false });
      // An app initializes its data source at boot: part of what both modes do, after `go`.
      const ready = async () => {
        if (!dataSource.isInitialized) await dataSource.initialize();
      };
      return {
        modes: {
          bare: async () => {
            await ready();
            await dataSource.runMigrations();
          },
          wrapped: async () => {
            await ready();
            await runMigrations(dataSource, { lock: { logger: null } });
          },
        },
        close: async () => {
          if (dataSource.isInitialized) await dataSource.destroy();
        },
      };
    },
  },
};

export const quietKnex = { warn() {}, error() {}, deprecate() {}, debug() {} };

/** Each migrator's fleet migrator over `dir` (written by migrationSet's writers), from the package as an app uses it. */
const FLEETS = {
  knex: async (dir) =>
    (await import('pg-migration-lock/knex')).fleet({ migrations: { directory: dir }, log: quietKnex }),
  'node-pg-migrate': async (dir) =>
    (await import('pg-migration-lock/node-pg-migrate')).fleet({
      dir,
      direction: 'up',
      migrationsTable: 'pgmigrations',
      log: () => {},
    }),
  drizzle: async (dir) => (await import('pg-migration-lock/drizzle')).fleet({ migrationsFolder: dir }),
  kysely: async (dir) => {
    // kysely 0.29 has its migrator in 'kysely/migration', 0.28 in 'kysely'.
    const { FileMigrationProvider } = await import('kysely/migration').catch(() => import('kysely'));
    const { fleet } = await import('pg-migration-lock/kysely');
    return fleet({ provider: new FileMigrationProvider({ fs, path, migrationFolder: dir }) });
  },
  typeorm: async (dir) =>
    (await import('pg-migration-lock/typeorm')).fleet({
      type: 'postgres',
      migrations: [path.join(dir, '*.mjs')],
      logging: false,
    }),
};

/** `migrator`'s fleet migrator over `dir`. */
export const fleetMigrator = (migrator, dir) => FLEETS[migrator](dir);
