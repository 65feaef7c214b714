import type { Command } from 'commander';
import { announceTarget, clientConfig, databaseUrl } from '../context.js';
import type { Output } from '../output.js';
import { existingDir } from './project.js';
import type { AdapterLock, Applied } from './types.js';

export interface NodePgMigrateFlags {
  migrationsDir: string;
  migrationsTable: string;
  schema?: string;
  migrationsSchema?: string;
  createSchema?: boolean;
  createMigrationsSchema?: boolean;
  checkOrder: boolean;
}

/** `node-pg-migrate up` under the lock, with node-pg-migrate's own flag names and defaults. */
export async function migrateNodePgMigrate(
  command: Command,
  out: Output,
  flags: NodePgMigrateFlags,
  lock: AdapterLock,
): Promise<Applied> {
  const url = databaseUrl(command, out, true);
  announceTarget(out);
  const dir = existingDir(flags.migrationsDir, 'node-pg-migrate migrations directory', '--migrations-dir');
  const { runner } = await import('../../../adapters/node-pg-migrate.js');
  const ran = await runner({
    databaseUrl: clientConfig(url),
    dir,
    migrationsTable: flags.migrationsTable,
    schema: flags.schema,
    migrationsSchema: flags.migrationsSchema,
    createSchema: flags.createSchema,
    createMigrationsSchema: flags.createMigrationsSchema,
    checkOrder: flags.checkOrder,
    direction: 'up',
    count: Number.POSITIVE_INFINITY,
    // Progress on stderr, one line per migration (the summary lists them again); on failure it logs the failing SQL.
    logger: {
      debug: () => {},
      info: (message: string) => {
        const name = /^### MIGRATION (.+) \(UP\) ###$/.exec(message)?.[1];
        if (name) out.info(`node-pg-migrate: migrating ${name}`);
      },
      warn: (message: string) => out.warn(`node-pg-migrate: ${message}`),
      error: (message: string) => out.detail(message),
    },
    lock,
  });
  return { migrator: 'node-pg-migrate', applied: ran.map((migration) => migration.name) };
}
