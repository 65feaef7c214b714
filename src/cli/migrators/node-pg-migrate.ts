import type { Command } from 'commander';
import { announceTarget, clientConfig, databaseUrl } from '../context.js';
import type { Output } from '../output.js';
import { migrationFailure, migrationFile } from './failure.js';
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
  let current: string | undefined;
  let failed = false;
  let ran: Awaited<ReturnType<typeof runner>>;
  try {
    ran = await runner({
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
      // Progress on stderr, one line per migration (the summary lists them again). On failure: the failing
      // SQL, then our one line; not the clean-up that follows (its own unlock, in the aborted transaction).
      logger: {
        debug: () => {},
        info: (message: string) => {
          const name = /^### MIGRATION (.+) \(UP\) ###$/.exec(message)?.[1];
          if (!name) return;
          current = name;
          out.info(`node-pg-migrate: migrating ${name}`);
        },
        warn: (message: string) => {
          if (!failed) out.warn(`node-pg-migrate: ${message}`);
        },
        error: (message: string) => {
          if (failed && /pg_advisory_unlock/.test(message)) return;
          failed = true;
          out.detail(withoutFinalError(message));
        },
      },
      lock,
    });
  } catch (err) {
    throw migrationFailure('node-pg-migrate', err, current && migrationFile(dir, current), [dir]);
  }
  return { migrator: 'node-pg-migrate', applied: ran.map((migration) => migration.name) };
}

/** node-pg-migrate's "Error executing: SQL / error: …" without its last line, which our final line repeats. */
function withoutFinalError(message: string): string {
  const lines = message.trimEnd().split('\n');
  if (lines.length > 1 && /^error: /.test(lines.at(-1)!)) lines.pop();
  return `node-pg-migrate: ${lines.join('\n').trimEnd()}`;
}
