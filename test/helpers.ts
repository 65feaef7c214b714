import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, expect, inject, onTestFinished } from 'vitest';
import type { FleetMigrator } from '../src/index.js';

/** Makes a fresh database for the calling test file (dropped after it) and returns its URL. */
export async function createTestDatabase(): Promise<string> {
  const admin = inject('adminUrl');
  const name = `pgml_${randomBytes(5).toString('hex')}`;
  await withClient(admin, (client) => client.query(`CREATE DATABASE ${name}`));
  afterAll(async () => {
    await withClient(admin, async (client) => {
      await client.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [name]);
      await client.query(`DROP DATABASE IF EXISTS ${name}`);
    });
  });
  const url = new URL(admin);
  url.pathname = `/${name}`;
  return url.toString();
}

/** Runs `fn` on a fresh connection and closes it after. */
export async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client(url);
  client.on('error', () => {});
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/** A knex `log` that prints nothing (knex warns on every migration run otherwise). */
export const silentKnexLog = { warn() {}, error() {}, deprecate() {}, debug() {} };

export const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

/**
 * A fresh, empty directory of the test's own (never the shared temporary directory itself, where other test files
 * write), removed after the test that made it, or after the file when made outside a test.
 */
export function scratchDir(prefix = 'pgml-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  afterThisTest(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs `fn` when the calling test ends, or after the file when called outside a test. */
export function afterThisTest(fn: () => void): void {
  try {
    onTestFinished(fn);
  } catch {
    afterAll(fn); // not inside a test
  }
}

export interface Exited {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Spawns a Node script as a real OS process and collects its output. */
export function spawnNode(script: string, args: string[] = [], env: Record<string, string> = {}) {
  return spawnProcess(process.execPath, [script, ...args], env);
}

/** Spawns a command as a real OS process (stdin a pipe the test may write to) and collects its output. */
export function spawnProcess(
  command: string,
  args: string[] = [],
  env: Record<string, string> = {},
): { child: ChildProcess; exited: Promise<Exited>; output: () => string } {
  const child = spawn(command, args, {
    env: { ...process.env, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (chunk) => (stdout += chunk));
  child.stderr?.on('data', (chunk) => (stderr += chunk));
  const exited = new Promise<Exited>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  return { child, exited, output: () => stdout };
}

/** Resolves once `check` returns a truthy value (polling every 10 ms), or rejects after `timeoutMs`. */
export async function waitFor<T>(check: () => T | Promise<T>, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeoutMs}ms waiting for ${what}`);
    await sleep(10);
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Rows of `pg_locks` for a key, as the SPEC describes them (classid = high 32 bits, objid = low 32 bits). */
export async function lockRows(url: string, key: bigint) {
  return withClient(url, async (client) => {
    const { rows } = await client.query<{ pid: number; granted: boolean; objsubid: number }>(
      `SELECT pid, granted, objsubid FROM pg_locks
       WHERE locktype = 'advisory' AND objsubid = 1
         AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
      [key.toString()],
    );
    return rows;
  });
}

/** The tables `lock-worker.mjs section` writes to, empty, with the counter at 0. */
export async function resetSectionTables(url: string): Promise<void> {
  await withClient(url, (client) =>
    client.query(`CREATE TABLE IF NOT EXISTS counter (n int NOT NULL);
                  CREATE TABLE IF NOT EXISTS sections (pid int, started_at timestamptz, ended_at timestamptz);
                  TRUNCATE counter, sections; INSERT INTO counter VALUES (0)`),
  );
}

/** `count` sections ran one at a time: no update of the counter was lost, and no two intervals overlap. */
export async function expectSerialSections(url: string, count: number): Promise<void> {
  await withClient(url, async (client) => {
    expect((await client.query('SELECT n FROM counter')).rows[0].n).toBe(count);
    const { rows } = await client.query<{ started_at: Date; ended_at: Date }>(
      'SELECT started_at, ended_at FROM sections ORDER BY started_at',
    );
    expect(rows).toHaveLength(count);
    for (let i = 1; i < rows.length; i++) {
      expect(rows[i]!.started_at.getTime()).toBeGreaterThanOrEqual(rows[i - 1]!.ended_at.getTime());
    }
  });
}

/**
 * A fault test's tool is missing: the test is skipped with `reason`, except where CI says the tools must be
 * there (PGML_REQUIRE_FAULT_TOOLS=1, set by .ci/run after installing them): then the file fails, so a
 * broken install cannot turn into a quietly green run.
 */
export function skipUnlessRequired(reason: string | undefined): boolean {
  if (reason === undefined) return false;
  if (process.env.PGML_REQUIRE_FAULT_TOOLS === '1') {
    throw new Error(`${reason}, and PGML_REQUIRE_FAULT_TOOLS=1 says this run must not skip it`);
  }
  console.warn(`Skipped: ${reason}`);
  return true;
}

/** `migrator` with its `run` calls recorded: `ran` lists the schemas (or databases) that reached the migrator. */
export function watchRuns(migrator: FleetMigrator): { watched: FleetMigrator; ran: string[] } {
  const ran: string[] = [];
  const watched: FleetMigrator = {
    ...migrator,
    run: (target, lock, pool) => {
      ran.push(target.schema ?? target.name);
      return migrator.run(target, lock, pool);
    },
  };
  return { watched, ran };
}
