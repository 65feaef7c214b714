import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, expect, test } from 'vitest';
import { createTestDatabase, fixture, spawnNode } from '../helpers.js';

// An app that loaded TypeORM with require() (CommonJS, as TypeORM apps compiled by tsc are): the adapter takes
// TypeORM from require's cache. An ES import('typeorm') would load typeorm/index.mjs, whose
// `import TypeORM from "./index.js"` has Node parse the whole tree of index.js's re-exports again (measured on
// Node 20, 2 shared cores: the first pending() took 78–530 ms, median 303, with it; 11–61 ms, median 24, without).

const dir = mkdtempSync(join(tmpdir(), 'pgml-resolutions-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const APP = fixture('adapters/typeorm-cjs-app.cjs');
const NAMES = ['CreateThings1700000000001'];

test.each([
  ['imports the adapter (its ES build)', 'esm', /\/dist\/typeorm\.js$/],
  ['requires the adapter (its CommonJS build)', 'cjs', new RegExp(`^${pathToFileURL(APP).href}$`)],
])(
  'a CommonJS app that required typeorm %s: pending() and runMigrations() never load typeorm’s ES entry',
  async (_how, mode, seen) => {
    const resolutions = join(dir, `${mode}.txt`);
    const { exited } = spawnNode(APP, [mode], {
      TYPEORM_URL: await createTestDatabase(),
      PGML_RESOLUTIONS: resolutions,
      NODE_OPTIONS: `--import=${fixture('adapters/record-resolutions.mjs')}`,
    });
    const { code, stdout, stderr } = await exited;
    expect(stderr).toBe('');
    expect(code).toBe(0);
    const result = JSON.parse(
      stdout
        .split('\n')
        .find((line) => line.startsWith('RESULT '))!
        .slice(7),
    );
    expect(result).toMatchObject({ pending: NAMES, applied: NAMES });
    console.log(`${mode}: first pending() ${result.firstPendingMs} ms, second ${result.secondPendingMs} ms`);

    const urls = readFileSync(resolutions, 'utf8').trim().split('\n');
    // The hook saw what the ES loader resolved (the adapter's ES build, or the app itself as the entry point)…
    expect(urls).toContainEqual(expect.stringMatching(seen));
    // …and never typeorm's ES entry.
    expect(urls.filter((url) => /\/node_modules\/typeorm\/index\.mjs$/.test(url))).toEqual([]);
  },
);
