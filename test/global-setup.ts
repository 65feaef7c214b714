import type { TestProject } from 'vitest/node';
import { startPostgres } from './postgres.mjs';

declare module 'vitest' {
  export interface ProvidedContext {
    /** A superuser URL of the server the suite runs against; each test file makes its own database there. */
    adminUrl: string;
  }
}

/** Uses TEST_DATABASE_URL when set; otherwise starts an embedded PostgreSQL for this run. */
export default async function setup(project: TestProject) {
  const server = await startPostgres({ url: process.env.TEST_DATABASE_URL, durable: false });
  project.provide('adminUrl', server.url);
  return server.stop;
}
