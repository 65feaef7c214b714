import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    // Files run in parallel, each on a database of its own; tests inside a file run in order. Three on two cores:
    // much of the suite waits on processes, servers and timeouts rather than computing.
    pool: 'forks',
    maxWorkers: 3,
    // A worker runs its files one after another in one module graph: the ORMs, drivers and the library are loaded
    // once per worker rather than once per file (half of the suite's import time). Each file has a database of its
    // own; what is global is put back after the file that sets it (OpenTelemetry's providers, a fixture's setting),
    // and the CLI's children do not inherit what a library puts in process.env (MikroORM: see test/cli/cli.ts).
    isolate: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
