import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import type { Logger as DrizzleLogger } from 'drizzle-orm';
import type { drizzle as drizzleFn } from 'drizzle-orm/node-postgres';
import pg from 'pg';
import { connectionConfig } from '../../driver/pg.js';
import type { FleetMigrator } from '../../fleet/types.js';
import type { KeyedLockOptions } from '../../keyed.js';
import { announceTarget, clientConfig, databaseUrl } from '../context.js';
import { UsageError } from '../errors.js';
import type { Output } from '../output.js';
import { migrationFailure } from './failure.js';
import { existingDir, importFromProject } from './project.js';
import type { Applied, CliMigrator, PendingCheck } from './types.js';

export interface DrizzleFlags {
  migrationsFolder: string;
  migrationsTable: string;
  migrationsSchema: string;
}

/** `migrate drizzle` and `pending drizzle`, with drizzle's config names and defaults. */
export const drizzleMigrator: CliMigrator<DrizzleFlags> = {
  name: 'drizzle',
  flags: (command) =>
    command
      .option('--migrations-folder <dir>', 'drizzle-kit\'s "out" folder', './drizzle')
      .option('--migrations-table <name>', 'table recording the applied migrations', '__drizzle_migrations')
      .option('--migrations-schema <name>', 'schema of that table', 'drizzle'),
  help: {
    migrate: {
      description: "drizzle's migrate() for node-postgres (what drizzle-kit migrate does)",
      after: `
Examples:
  $ pg-migration-lock migrate drizzle
  $ pg-migration-lock migrate drizzle --migrations-folder db/migrations --timeout 10m`,
    },
    pending: {
      description: "what drizzle's migrate() would apply",
      after: `
Examples:
  $ pg-migration-lock pending drizzle
  $ pg-migration-lock pending drizzle --migrations-folder db/migrations --wait`,
    },
  },
  migrate: migrateDrizzle,
  pending: pendingDrizzle,
  fleet: (_command, _out, flags) => fleetDrizzle(flags),
};

/** drizzle's `migrate()` (what `drizzle-kit migrate` does) under the lock, with drizzle's config names. */
async function migrateDrizzle(
  command: Command,
  out: Output,
  flags: DrizzleFlags,
  lock: KeyedLockOptions,
): Promise<Applied> {
  const url = databaseUrl(command, out, true);
  announceTarget(out);
  const { drizzle, folder, journalPath } = await drizzleAndFolder(flags);
  const journal = JSON.parse(readFileSync(journalPath, 'utf8')) as { entries: { when: number; tag: string }[] };
  const tagOf = new Map(journal.entries.map((entry) => [String(entry.when), entry.tag]));

  // drizzle prints nothing and returns nothing: its query log says which migrations this run recorded.
  const applied: string[] = [];
  const recordInsert = new RegExp(
    `^insert into "${flags.migrationsSchema.replace(/"/g, '""')}"\\."${flags.migrationsTable.replace(/"/g, '""')}" \\("hash", "created_at"\\)`,
  );
  const logger: DrizzleLogger = {
    logQuery(query, params) {
      if (recordInsert.test(query)) applied.push(tagOf.get(String(params[1])) ?? `migration created at ${params[1]}`);
    },
  };

  // One connection, named and kept alive like the ones the core opens: the adapter takes the lock on it.
  const pool = new pg.Pool({ ...connectionConfig(clientConfig(url)), max: 1 });
  pool.on('error', () => {}); // a lost session is reported by the lock (MigrationLockLostError)
  try {
    const { migrate } = await import('../../../adapters/drizzle.js');
    try {
      await migrate(drizzle({ client: pool, logger }), {
        migrationsFolder: folder,
        migrationsTable: flags.migrationsTable,
        migrationsSchema: flags.migrationsSchema,
        lock,
      });
    } catch (err) {
      const query = (err as { query?: unknown }).query;
      const file = typeof query === 'string' ? fileOf(folder, journal.entries, applied, query) : undefined;
      // drizzle's own message is "Failed query: … params: …"; the database's reason is its cause (said with the query).
      throw migrationFailure('drizzle', err, file, [folder]);
    }
  } finally {
    await pool.end();
  }
  return { migrator: 'drizzle', applied };
}

/** What `migrate drizzle` would apply, with the same flags: the adapter's `pending` (journal tags). */
async function pendingDrizzle(command: Command, out: Output, flags: DrizzleFlags): Promise<PendingCheck> {
  const database = connectionConfig(clientConfig(databaseUrl(command, out, true)));
  const { drizzle, folder } = await drizzleAndFolder(flags);
  const { pending } = await import('../../../adapters/drizzle.js');
  // One connection, kept for every check of a --wait.
  const pool = new pg.Pool({ ...database, max: 1 });
  pool.on('error', () => {}); // a check on a broken connection fails with the connection's own error
  const config = {
    migrationsFolder: folder,
    migrationsTable: flags.migrationsTable,
    migrationsSchema: flags.migrationsSchema,
  };
  return {
    migrator: 'drizzle',
    check: () => pending(drizzle({ client: pool }), config),
    database,
    close: () => pool.end(),
  };
}

/** The fleet migrator of `migrate drizzle --each-…`: the same folder and table, each target's connection. */
async function fleetDrizzle(flags: DrizzleFlags): Promise<FleetMigrator> {
  const { folder } = await drizzleAndFolder(flags);
  const { fleet } = await import('../../../adapters/drizzle.js');
  // A schema target keeps drizzle's table in its schema (the adapter sets migrationsSchema there).
  return fleet({
    migrationsFolder: folder,
    migrationsTable: flags.migrationsTable,
    migrationsSchema: flags.migrationsSchema,
  });
}

/**
 * drizzle-orm, then the migrations folder: without drizzle-orm installed, the line to say is what to install,
 * not that the (default) folder is missing.
 */
async function drizzleAndFolder(
  flags: DrizzleFlags,
): Promise<{ drizzle: typeof drizzleFn; folder: string; journalPath: string }> {
  const { drizzle } = await importFromProject<{ drizzle: typeof drizzleFn }>(
    'drizzle-orm/node-postgres',
    process.cwd(),
  );
  return { drizzle, ...migrationsFolder(flags) };
}

function migrationsFolder(flags: DrizzleFlags): { folder: string; journalPath: string } {
  const folder = existingDir(flags.migrationsFolder, 'drizzle migrations folder', '--migrations-folder');
  const journalPath = join(folder, 'meta', '_journal.json');
  if (!existsSync(journalPath)) {
    throw new UsageError(
      `No meta/_journal.json in ${folder}: not a drizzle-kit migrations folder`,
      'Point --migrations-folder at drizzle-kit\'s "out" folder (default ./drizzle).',
    );
  }
  return { folder, journalPath };
}

/**
 * The migration file a failed statement comes from: drizzle runs each file's statements (split at
 * `--> statement-breakpoint`) as they are written, in journal order, skipping the files already applied.
 */
function fileOf(folder: string, entries: { tag: string }[], applied: string[], query: string): string | undefined {
  for (const { tag } of entries) {
    if (applied.includes(tag)) continue;
    try {
      const statements = readFileSync(join(folder, `${tag}.sql`), 'utf8').split('--> statement-breakpoint');
      if (statements.some((statement) => statement.trim() === query.trim())) return `${tag}.sql`;
    } catch {
      // unreadable: drizzle has said so already
    }
  }
  return undefined;
}
