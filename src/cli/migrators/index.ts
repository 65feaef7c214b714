// The CLI's migrators, in the order `migrate --help` and `pending --help` list them. A new migrator is a file
// of its own (see CliMigrator in ./types.ts) and one line here.
import { drizzleMigrator } from './drizzle.js';
import { knexMigrator } from './knex.js';
import { kyselyMigrator } from './kysely.js';
import { mikroOrmMigrator } from './mikro-orm.js';
import { nodePgMigrateMigrator } from './node-pg-migrate.js';
import { sequelizeMigrator } from './sequelize.js';
import { typeormMigrator } from './typeorm.js';
import type { CliMigrator } from './types.js';

// Each migrator's flags are its own: a command hands it only what commander parsed for its subcommand.
export const MIGRATORS: readonly CliMigrator[] = [
  knexMigrator,
  nodePgMigrateMigrator,
  drizzleMigrator,
  typeormMigrator,
  kyselyMigrator,
  sequelizeMigrator,
  mikroOrmMigrator,
];
