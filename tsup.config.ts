import { defineConfig } from 'tsup';

export default defineConfig({
  entry: {
    index: 'src/index.ts',
    knex: 'adapters/knex.ts',
    'node-pg-migrate': 'adapters/node-pg-migrate.ts',
    drizzle: 'adapters/drizzle.ts',
    kysely: 'adapters/kysely.ts',
    typeorm: 'adapters/typeorm.ts',
    'cli/index': 'src/cli/index.ts',
  },
  format: ['esm', 'cjs'],
  dts: true,
  // No clean: parallel builds (tests, checks) must never find dist/ missing.
  clean: false,
  target: 'node20',
  platform: 'node',
  // Shared core code lands in one chunk per format, so adapters and CLI use the same module as the core.
  splitting: true,
});
