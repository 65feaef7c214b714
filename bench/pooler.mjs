// A real PgBouncer in front of a bench server, for plain `node bench/run.mjs` (no TypeScript loader): the few
// lines of test/fixtures/pooler/pgbouncer.ts the bench needs. Our own process on a free port, never the system
// service.
import { spawn, spawnSync } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { delimiter, join } from 'node:path';
import pg from 'pg';
import { freePort } from '../test/postgres.mjs';

/** The pgbouncer executable: `$PGBOUNCER`, else `pgbouncer` on PATH or in /usr/sbin; null when none runs. */
export function findPgbouncer() {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/local/sbin'].filter(Boolean);
  const candidates = process.env.PGBOUNCER ? [process.env.PGBOUNCER] : dirs.map((dir) => join(dir, 'pgbouncer'));
  for (const candidate of candidates) {
    const probe = spawnSync(candidate, ['--version'], { encoding: 'utf8' });
    if (probe.status === 0 && /pgbouncer/i.test(probe.stdout)) return candidate;
  }
  return null;
}

const quote = (value) => {
  const text = String(value);
  return /^[\w./-]+$/.test(text) ? text : `'${text.replace(/'/g, "''")}'`;
};

/**
 * Starts PgBouncer (`poolMode`, one database alias `db` with `poolSize` server connections) in front of
 * `serverUrl`, and resolves once a query goes through it: `{ url, log(), stop() }`.
 */
export async function startPgbouncer(binary, { serverUrl, poolMode, poolSize }) {
  const server = new URL(serverUrl);
  const target = {
    host: server.hostname.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1',
    port: server.port || '5432',
    dbname: decodeURIComponent(server.pathname.slice(1)) || 'postgres',
    user: decodeURIComponent(server.username) || userInfo().username,
    ...(server.password ? { password: decodeURIComponent(server.password) } : {}),
    pool_size: poolSize,
  };
  const dir = await mkdtemp(join(tmpdir(), 'pgml-bench-pgbouncer-'));
  // PgBouncer refuses to run as root; as root it drops to `nobody`, which must be able to read the ini.
  const asRoot = process.getuid?.() === 0;
  if (asRoot) await chmod(dir, 0o755);
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const ini = join(dir, `pgbouncer-${port}.ini`);
    const db = Object.entries(target)
      .map(([name, value]) => `${name}=${quote(value)}`)
      .join(' ');
    await writeFile(
      ini,
      [
        '[databases]',
        `db = ${db}`,
        '[pgbouncer]',
        'listen_addr = 127.0.0.1',
        `listen_port = ${port}`,
        'unix_socket_dir =',
        'auth_type = any',
        `pool_mode = ${poolMode}`,
        'logfile =',
        'pidfile =',
        'max_client_conn = 200',
        'server_login_retry = 1',
        'log_connections = 0',
        'log_disconnections = 0',
        '',
      ].join('\n'),
      { mode: 0o644 },
    );
    const child = spawn(binary, [...(asRoot ? ['-u', 'nobody'] : []), ini], { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stdout.on('data', (chunk) => (log = (log + chunk).slice(-20_000)));
    child.stderr.on('data', (chunk) => (log = (log + chunk).slice(-20_000)));
    const exited = new Promise((resolve) => child.once('close', resolve));
    const url = `postgres://${encodeURIComponent(target.user)}@127.0.0.1:${port}/db`;
    try {
      await untilReady(url, child, () => log);
    } catch (error) {
      lastError = error;
      child.kill('SIGKILL');
      await exited;
      if (/Address already in use/i.test(log)) continue;
      break;
    }
    const killOnExit = () => child.kill('SIGKILL');
    process.once('exit', killOnExit);
    return {
      url,
      log: () => log,
      stop: async () => {
        process.off('exit', killOnExit);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        await exited;
        await rm(dir, { recursive: true, force: true });
      },
    };
  }
  await rm(dir, { recursive: true, force: true });
  throw lastError;
}

async function untilReady(url, child, log) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`pgbouncer exited (${child.exitCode ?? child.signalCode}):\n${log()}`);
    }
    const client = new pg.Client(url);
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query('SELECT 1');
      return;
    } catch (error) {
      if (Date.now() > deadline) throw new Error(`pgbouncer did not answer in 10 s (${error}):\n${log()}`);
    } finally {
      await client.end().catch(() => {});
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
