import { defineConfig } from 'tsup';

const common = {
  target: 'node20',
  platform: 'node',
  // No clean: parallel builds (tests, checks) must never find dist/ missing.
  clean: false,
  // import.meta.url in the CommonJS build too (adapters resolve their migrator from this package).
  shims: true,
} as const;

export default defineConfig([
  {
    ...common,
    // The library: ESM and CommonJS, with types. Shared core code lands in one chunk per format, so the
    // adapters use the same module as the core.
    entry: {
      index: 'src/index.ts',
      knex: 'adapters/knex.ts',
      'node-pg-migrate': 'adapters/node-pg-migrate.ts',
      drizzle: 'adapters/drizzle.ts',
      kysely: 'adapters/kysely.ts',
      typeorm: 'adapters/typeorm.ts',
      umzug: 'adapters/umzug.ts',
      'mikro-orm': 'adapters/mikro-orm.ts',
    },
    format: ['esm', 'cjs'],
    dts: true,
    splitting: true,
  },
  {
    ...common,
    // The CLI: run by Node as ESM only, no types; the reaper is the process `run` puts between itself and CMD.
    entry: { index: 'src/cli/index.ts', reaper: 'src/cli/reaper.ts' },
    outDir: 'dist/cli',
    format: ['esm'],
    dts: false,
    splitting: true,
  },
]);
