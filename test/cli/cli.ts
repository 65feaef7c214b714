import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterThisTest, waitFor } from '../helpers.js';

/** The built binary: the tests run what users run (`npx tsup` first). */
export const CLI = fileURLToPath(new URL('../../dist/cli/index.js', import.meta.url));
if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npx tsup)`);

export const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/cli/${name}`, import.meta.url));
export const CHILD = fixture('child.mjs');

export const hasScript = (() => {
  try {
    execFileSync('script', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

export interface Run {
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
  stdout(): string;
  stderr(): string;
  /** Resolves when stdout or stderr matches. */
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<void>;
}

export interface RunOptions {
  env?: Record<string, string | undefined>;
  cwd?: string;
  input?: string;
  /** startOnTerminal: the terminal's width (default 200). */
  columns?: number;
}

/** A clean environment: no inherited DATABASE_URL or color settings, so every test says what it uses. */
function testEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' };
  for (const name of ['DATABASE_URL', 'FORCE_COLOR', 'CI', 'NODE_ENV']) delete env[name];
  // MikroORM, initialised in the suite's shared processes, sets MIKRO_ORM_COLORS there: a CLI that inherited it
  // would read a config from the environment.
  for (const name of Object.keys(env)) if (name.startsWith('MIKRO_ORM_')) delete env[name];
  for (const [name, value] of Object.entries(extra)) {
    if (value === undefined) delete env[name];
    else env[name] = value;
  }
  return env;
}

/** A child still running when the test (or, started outside one, the file) that started it ends is killed. */
function killAfter(child: ChildProcess, exited: Promise<unknown>): void {
  let done = false;
  exited.then(() => (done = true));
  afterThisTest(() => {
    if (!done) child.kill('SIGKILL');
  });
}

function track(child: ChildProcess): Run {
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (chunk) => (stdout += chunk));
  child.stderr?.on('data', (chunk) => (stderr += chunk));
  const exited = new Promise<Awaited<Run['exited']>>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  killAfter(child, exited);
  return {
    child,
    exited,
    stdout: () => stdout,
    stderr: () => stderr,
    waitForOutput: async (pattern, timeoutMs = 30_000) => {
      await waitFor(() => pattern.test(stdout) || pattern.test(stderr), timeoutMs, `output matching ${pattern}`);
    },
  };
}

/** Starts `node dist/cli/index.js …args` as a real process. */
export function start(args: string[], options: RunOptions = {}): Run {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: testEnv(options.env),
    cwd: options.cwd,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  child.stdin?.end(options.input ?? '');
  return track(child);
}

/** Runs the CLI to completion. */
export function cli(args: string[], options: RunOptions = {}) {
  return start(args, options).exited;
}

/** Runs the CLI on a pseudo-terminal (util-linux `script`): its stdin, stdout and stderr are that terminal. */
export function startOnTerminal(args: string[], options: RunOptions = {}): Run {
  const quote = (arg: string) => `'${arg.replace(/'/g, `'\\''`)}'`;
  // A wide terminal: the live line is cut to the terminal's width, 80 columns by default.
  // exec: the CLI itself is the terminal's foreground process, as when a user types the command.
  const command = `stty cols ${options.columns ?? 200} 2>/dev/null; exec ${[process.execPath, CLI, ...args].map(quote).join(' ')}`;
  const child = spawn('script', ['-qfec', command, '/dev/null'], {
    env: testEnv({ TERM: 'xterm', ...options.env }),
    cwd: options.cwd,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  return track(child);
}

/** Holds the lock from the test process, like a replica that is migrating. */
export async function holdLock(url: string, key: bigint, applicationName = 'cli-test-holder') {
  const client = new pg.Client({ connectionString: url, application_name: applicationName });
  client.on('error', () => {});
  await client.connect();
  await client.query('SELECT pg_advisory_lock($1::bigint)', [key.toString()]);
  const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  return { pid: rows[0]!.pid, client, release: () => client.end().catch(() => {}) };
}
