import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { expect, test } from 'vitest';
import tsupConfig from '../tsup.config.js';

// The built package, loaded by Node the way users load it (through the exports map).
const dist = fileURLToPath(new URL('../dist', import.meta.url));
const node = (...args: string[]) => execFileSync(process.execPath, args, { encoding: 'utf8' }).trim();

test('require() works and loads no migrator', () => {
  const out = node(
    '-e',
    `const m = require('pg-migration-lock');
     const loaded = Object.keys(require.cache).filter((f) => /node_modules\\/(knex|node-pg-migrate|drizzle-orm|typeorm|kysely)\\//.test(f));
     console.log(JSON.stringify({ exports: Object.keys(m).sort(), key: String(m.DEFAULT_LOCK_KEY), loaded }));`,
  );
  const { exports, key, loaded } = JSON.parse(out);
  expect(exports).toEqual([
    'DEFAULT_LOCK_KEY',
    'KNOWN_KEYS',
    'MigrationBlockedError',
    'MigrationLockBusyError',
    'MigrationLockError',
    'MigrationLockLostError',
    'MigrationLockTimeoutError',
    'fleetKey',
    'fleetTarget',
    'getLockStatus',
    'lockKey',
    'migrateEach',
    'releaseLock',
    'withMigrationLock',
  ]);
  expect(key).toBe('-4853655304891776800'); // ('x' || left(md5('pg-migration-lock'), 16))::bit(64)::bigint
  expect(loaded).toEqual([]);
});

test('the CLI loads no migrator, ORM or second driver until a command needs it (each costs every start)', () => {
  // A module hook sees every package the CLI resolves while it prints its help.
  const hook = `export async function resolve(s, c, next) {
    const r = await next(s, c);
    const m = /node_modules\\/((?:@[^/]+\\/)?[^/]+)\\//.exec(r.url);
    if (m) process.stderr.write('resolved ' + m[1] + '\\n');
    return r;
  }`;
  const register = `import { register } from 'node:module'; register(${JSON.stringify(`data:text/javascript,${encodeURIComponent(hook)}`)});`;
  const { status, stderr } = spawnSync(
    process.execPath,
    ['--import', `data:text/javascript,${encodeURIComponent(register)}`, join(dist, 'cli/index.js'), '--help'],
    { encoding: 'utf8' },
  );
  expect(status, stderr).toBe(0);
  const resolved = new Set([...stderr.matchAll(/^resolved (.+)$/gm)].map((m) => m[1]!));
  expect(resolved).toContain('commander');
  // Our runtime dependencies, and what pg itself requires (Node versions differ in whether the hook sees those).
  const allowed = /^(commander|pg|pg-.+|picocolors|postgres-(array|bytea|date|interval)|split2|xtend|pgpass)$/;
  expect([...resolved].filter((name) => !allowed.test(name))).toEqual([]);
});

test('import works, and the ESM and CJS builds agree', () => {
  const esm = node(
    '--input-type=module',
    '-e',
    `import { lockKey, MigrationLockBusyError, MigrationLockError } from 'pg-migration-lock';
     console.log(String(lockKey('x')), new MigrationLockBusyError('m', 1n) instanceof MigrationLockError);`,
  );
  const cjs = node('-e', `console.log(String(require('pg-migration-lock').lockKey('x')), true)`);
  expect(esm).toBe(cjs);
  expect(esm).toMatch(/^-?\d+ true$/);
});

test('postgres.js: importing the core loads no `postgres`, and no declaration file needs it installed', () => {
  const out = node(
    '--input-type=module',
    '-e',
    `import { createRequire } from 'node:module';
     await import('pg-migration-lock');
     await import('pg-migration-lock/drizzle');
     const require = createRequire(import.meta.url);
     require('pg-migration-lock');
     const loaded = Object.keys(require.cache).filter((f) => /node_modules\\/postgres\\//.test(f));
     console.log(JSON.stringify(loaded));`,
  );
  expect(JSON.parse(out)).toEqual([]);
  // ESM imports are not in require.cache: with 'postgres' made unresolvable, any import of it would throw.
  const esm = node(
    '--input-type=module',
    '-e',
    `import { register } from 'node:module';
     register(${JSON.stringify(new URL('./fixtures/adapters/resolve-hooks.mjs', import.meta.url).href)}, { data: { hide: ['postgres'] } });
     const core = await import('pg-migration-lock');
     await import('pg-migration-lock/drizzle');
     console.log(typeof core.withMigrationLock);`,
  );
  expect(esm).toBe('function');
  // The types users get are our own structural ones: no declaration file imports 'postgres'.
  const declarations = readdirSync(dist).filter((f) => /\.d\.c?ts$/.test(f));
  expect(declarations.length).toBeGreaterThan(0);
  for (const file of declarations) {
    expect(readFileSync(join(dist, file), 'utf8')).not.toMatch(/from ['"]postgres['"]|import\(['"]postgres['"]\)/);
  }
});

// --- Types in every module resolution -----------------------------------------------------------------------
// `typesVersions` is what TypeScript's node10 resolution (`"module": "commonjs"` with no moduleResolution, e.g.
// NestJS's tsconfig) reads for a subpath: it never reads `exports`. Each subpath is therefore named three
// times: in `exports`, in `typesVersions` and as a tsup entry. A new adapter needs all three.

const root = fileURLToPath(new URL('..', import.meta.url));
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
type Conditions = { import: { types: string; default: string }; require: { types: string; default: string } };
const subpaths = Object.entries(pkg.exports as Record<string, Conditions | string>).filter(
  (entry): entry is [string, Conditions] => typeof entry[1] === 'object',
);

test('every subpath is in exports, typesVersions and the tsup build, with the same name', () => {
  // tsup.config.ts exports its list of builds; the library is the one with declarations.
  const configs = (Array.isArray(tsupConfig) ? tsupConfig : [tsupConfig]) as { dts?: unknown; entry?: unknown }[];
  const library = configs.find((config) => config.dts);
  const entries = Object.keys((library?.entry ?? {}) as Record<string, string>);
  const named = subpaths.map(([subpath]) => (subpath === '.' ? 'index' : subpath.slice(2)));
  expect(entries.sort()).toEqual([...named].sort());
  const typesVersions = pkg.typesVersions['*'] as Record<string, string[]>;
  expect(Object.keys(typesVersions).sort()).toEqual(named.filter((name) => name !== 'index').sort());
  for (const [subpath, conditions] of subpaths) {
    const name = subpath === '.' ? 'index' : subpath.slice(2);
    expect(conditions).toEqual({
      import: { types: `./dist/${name}.d.ts`, default: `./dist/${name}.js` },
      require: { types: `./dist/${name}.d.cts`, default: `./dist/${name}.cjs` },
    });
    // node10 gets the CommonJS declarations, as `require` does (the root through `types`).
    if (name === 'index') expect(pkg.types).toBe(conditions.require.types);
    else expect(typesVersions[name]).toEqual([conditions.require.types]);
    for (const file of [conditions.import.types, conditions.require.types])
      expect(existsSync(join(root, file))).toBe(true);
  }
});

test.each([
  ['node10', { module: ts.ModuleKind.CommonJS, moduleResolution: ts.ModuleResolutionKind.Node10 }, undefined, '.d.cts'],
  [
    'node16 (from CJS)',
    { module: ts.ModuleKind.Node16, moduleResolution: ts.ModuleResolutionKind.Node16 },
    ts.ModuleKind.CommonJS,
    '.d.cts',
  ],
  [
    'node16 (from ESM)',
    { module: ts.ModuleKind.Node16, moduleResolution: ts.ModuleResolutionKind.Node16 },
    ts.ModuleKind.ESNext,
    '.d.ts',
  ],
  ['bundler', { module: ts.ModuleKind.ESNext, moduleResolution: ts.ModuleResolutionKind.Bundler }, undefined, '.d.ts'],
] as const)('TypeScript resolves the types of every subpath under %s', (_, options, mode, extension) => {
  // A project with the package in its node_modules (a link to this repository).
  const project = mkdtempSync(join(tmpdir(), 'pgml-types-'));
  try {
    mkdirSync(join(project, 'node_modules'));
    symlinkSync(root, join(project, 'node_modules', 'pg-migration-lock'), 'dir');
    const from = join(project, mode === ts.ModuleKind.ESNext ? 'main.mts' : 'main.ts');
    const resolved = subpaths.map(([subpath]) => {
      const specifier = `pg-migration-lock${subpath.slice(1)}`;
      const { resolvedModule } = ts.resolveModuleName(specifier, from, options, ts.sys, undefined, undefined, mode);
      return [specifier, resolvedModule && relative(root, resolvedModule.resolvedFileName)];
    });
    expect(Object.fromEntries(resolved)).toEqual(
      Object.fromEntries(
        subpaths.map(([subpath]) => [
          `pg-migration-lock${subpath.slice(1)}`,
          `dist/${subpath === '.' ? 'index' : subpath.slice(2)}${extension}`,
        ]),
      ),
    );
  } finally {
    rmSync(project, { recursive: true, force: true });
  }
});

test('declaration files have names that say what they hold (a missing @types/pg error points at one of them)', () => {
  const declarations = readdirSync(dist).filter((f) => /\.d\.c?ts$/.test(f));
  // rollup names shared chunks `<name>-<hash>`: scripts/name-type-chunks.mjs renames them after the build.
  expect(declarations.filter((f) => /-[A-Za-z0-9_-]{8}\.d\.c?ts$/.test(f) && !/^node-pg-migrate\./.test(f))).toEqual(
    [],
  );
  expect(declarations).toEqual(expect.arrayContaining(['core-types.d.ts', 'core-types.d.cts']));
  for (const file of declarations) {
    const text = readFileSync(join(dist, file), 'utf8');
    for (const [, path, ext] of text.matchAll(/from '\.\/([^']+)\.(c?js)'/g)) {
      expect(declarations, `${file} imports ./${path}.${ext}`).toContain(`${path}.d.${ext === 'cjs' ? 'cts' : 'ts'}`);
    }
  }
});
