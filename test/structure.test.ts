// The shape of the code, read from its import graph (src/ and adapters/): no circles, and no layer reaching
// up. Every relative import counts: static `import … from`, `export … from`, `import type`, dynamic
// `import('…')` and `typeof import('…')` types.
//
// The layers, top to bottom; a file imports its own layer and the ones below, never one above:
//
//   cli        src/cli/            the command line
//   adapters   adapters/           one entry per migrator (adapters/<name>.ts, its own parts in adapters/<name>/),
//                                  each through kit (adapters/kit.ts, adapters/kit/), their one door to the core
//   fleet      src/fleet/          migrateEach
//   lock       src/lock/           the lock's lifecycle, and beside it the flat files of src/ (status, key, errors…)
//   sql        src/sql/            every statement, with the decoding of its rows
//   driver     src/driver/         sessions over pg and postgres.js; src/driver/types.ts, the seam, imports nothing
//
// src/index.ts is the package's entry: nothing of ours imports it. Nothing there imports test/ or bench/.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, test } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const rel = (file: string) => path.relative(ROOT, file).split(path.sep).join('/');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const file = path.join(dir, name);
    if (statSync(file).isDirectory()) return sourceFiles(file);
    return /\.(c|m)?ts$/.test(name) && !name.endsWith('.d.ts') ? [file] : [];
  });
}

/** Every module specifier a source text names: imports, re-exports, dynamic imports and import types. */
function specifiersIn(text: string, fileName = 'file.ts'): string[] {
  const source = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true);
  const found: string[] = [];
  const visit = (node: ts.Node) => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier) {
      if (ts.isStringLiteral(node.moduleSpecifier)) found.push(node.moduleSpecifier.text);
    } else if (
      ts.isCallExpression(node) &&
      node.expression.kind === ts.SyntaxKind.ImportKeyword &&
      node.arguments[0] &&
      ts.isStringLiteralLike(node.arguments[0])
    ) {
      found.push(node.arguments[0].text);
    } else if (
      ts.isImportTypeNode(node) &&
      ts.isLiteralTypeNode(node.argument) &&
      ts.isStringLiteral(node.argument.literal)
    ) {
      found.push(node.argument.literal.text);
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      const expression = node.moduleReference.expression;
      if (ts.isStringLiteral(expression)) found.push(expression.text);
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

/** The file a relative specifier names (`./x.js` is `./x.ts` in the sources), or undefined. */
function resolve(from: string, specifier: string): string | undefined {
  const target = path.resolve(path.dirname(from), specifier);
  const candidates = [
    target.replace(/\.(c|m)?js$/, (ext) => ext.replace('js', 'ts')),
    target,
    `${target}.ts`,
    path.join(target, 'index.ts'),
  ];
  return candidates.find((file) => existsSync(file) && statSync(file).isFile());
}

type Graph = Map<string, string[]>;

/** Our files (repository-relative) and the files of ours each imports; unresolvable relative imports apart. */
function importGraph(): { graph: Graph; unresolved: string[] } {
  const graph: Graph = new Map();
  const unresolved: string[] = [];
  for (const file of [...sourceFiles(path.join(ROOT, 'src')), ...sourceFiles(path.join(ROOT, 'adapters'))]) {
    const edges = new Set<string>();
    for (const specifier of specifiersIn(readFileSync(file, 'utf8'), file)) {
      if (!specifier.startsWith('.')) continue;
      const target = resolve(file, specifier);
      if (target) edges.add(rel(target));
      else unresolved.push(`${rel(file)} -> ${specifier}`);
    }
    graph.set(rel(file), [...edges].sort());
  }
  return { graph, unresolved };
}

/** The import circles: each strongly connected component of more than one file (or a file importing itself), as one circle through it. */
function cycles(graph: Graph): string[] {
  let index = 0;
  const indexOf = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  const connect = (file: string) => {
    indexOf.set(file, index);
    low.set(file, index++);
    stack.push(file);
    onStack.add(file);
    for (const next of graph.get(file) ?? []) {
      if (!indexOf.has(next)) {
        connect(next);
        low.set(file, Math.min(low.get(file)!, low.get(next)!));
      } else if (onStack.has(next)) {
        low.set(file, Math.min(low.get(file)!, indexOf.get(next)!));
      }
    }
    if (low.get(file) === indexOf.get(file)) {
      const component: string[] = [];
      let member: string;
      do {
        member = stack.pop()!;
        onStack.delete(member);
        component.push(member);
      } while (member !== file);
      components.push(component);
    }
  };
  for (const file of [...graph.keys()].sort()) if (!indexOf.has(file)) connect(file);

  return components
    .filter((c) => c.length > 1 || (graph.get(c[0]!) ?? []).includes(c[0]!))
    .map((component) => {
      // One circle through the component, from its first file (breadth-first, so it is a shortest one).
      const members = new Set(component);
      const start = [...component].sort()[0]!;
      const previous = new Map<string, string>();
      const queue = [start];
      while (queue.length > 0) {
        const file = queue.shift()!;
        const next = (graph.get(file) ?? []).filter((n) => members.has(n));
        if (next.includes(start)) {
          const path = [file];
          while (path[0] !== start) path.unshift(previous.get(path[0]!)!);
          return [...path, start].join(' -> ');
        }
        for (const n of next) {
          if (!previous.has(n) && n !== start) {
            previous.set(n, file);
            queue.push(n);
          }
        }
      }
      return component.join(', ');
    })
    .sort();
}

/** The edges from `files` matching `from` that reach a file `allowed` refuses, as `a -> b`. */
function offending(graph: Graph, from: (file: string) => boolean, allowed: (target: string, file: string) => boolean) {
  return [...graph]
    .filter(([file]) => from(file))
    .flatMap(([file, targets]) => targets.filter((t) => !allowed(t, file)).map((t) => `${file} -> ${t}`))
    .sort();
}

const { graph, unresolved } = importGraph();

/** The layers, bottom first; a file's rank is its layer's index. */
const LAYERS = ['driver', 'sql', 'lock', 'fleet', 'adapters', 'cli'] as const;
type Layer = (typeof LAYERS)[number];

/** The layer of one of our files; undefined for the package's entry (src/index.ts) and files outside src/ and adapters/. */
function layerOf(file: string): Layer | undefined {
  if (file.startsWith('src/cli/')) return 'cli';
  if (file.startsWith('adapters/')) return 'adapters';
  if (file.startsWith('src/fleet/')) return 'fleet';
  if (file.startsWith('src/lock/')) return 'lock';
  if (file.startsWith('src/sql/')) return 'sql';
  if (file.startsWith('src/driver/')) return 'driver';
  // The flat files of src/ (status, key, errors, logger, time) sit beside the lock's lifecycle, in its layer.
  if (/^src\/[^/]+\.ts$/.test(file) && file !== 'src/index.ts') return 'lock';
  return undefined;
}

/** Whether `file` may import `target` by the layers: same layer or below. */
function layered(target: string, file: string): boolean {
  const from = layerOf(file);
  const to = layerOf(target);
  if (from === undefined || to === undefined) return true;
  return LAYERS.indexOf(to) <= LAYERS.indexOf(from);
}

const inDriver = (file: string) => file.startsWith('src/driver/');
const isKit = (file: string) => file === 'adapters/kit.ts' || file.startsWith('adapters/kit/');
/** An adapter's own files: its entry `adapters/<name>.ts` and `adapters/<name>/…`; kit apart. */
const adapterOf = (file: string) => /^adapters\/([^/.]+)(\.ts$|\/)/.exec(file)?.[1];
const isAdapter = (file: string) => file.startsWith('adapters/') && !isKit(file);

describe('the checks themselves', () => {
  test('every form of import is read', () => {
    const text = `import a from './a.js';
      import type { B } from './b.js';
      import { type C, d } from './c.js';
      import './side-effect.js';
      export { e } from './e.js';
      export * from './f.js';
      export type { G } from './g.js';
      const h = await import('./h.js');
      type I = typeof import('./i.js');
      import j = require('./j.js');
      import pg from 'pg';`;
    expect(specifiersIn(text)).toEqual([
      './a.js',
      './b.js',
      './c.js',
      './side-effect.js',
      './e.js',
      './f.js',
      './g.js',
      './h.js',
      './i.js',
      './j.js',
      'pg',
    ]);
  });

  test('layers: a file imports its own layer and the ones below, src/lock/ and src/sql/ included', () => {
    expect(layerOf('src/lock/holding.ts')).toBe('lock');
    expect(layerOf('src/sql/status.ts')).toBe('sql');
    expect(layerOf('src/lock.ts')).toBe('lock');
    expect(layerOf('src/index.ts')).toBeUndefined();
    expect(layered('src/sql/lock.ts', 'src/lock/attempt.ts')).toBe(true);
    expect(layered('src/lock/attempt.ts', 'src/sql/lock.ts')).toBe(false);
    expect(layered('src/driver/pg.ts', 'src/sql/lock.ts')).toBe(true);
    expect(layered('src/fleet/run.ts', 'src/lock/lock.ts')).toBe(false);
    expect(layered('src/fleet/run.ts', 'src/status.ts')).toBe(false);
    expect(layered('adapters/kit.ts', 'src/fleet/types.ts')).toBe(false);
    expect(layered('src/cli/fleet.ts', 'adapters/knex.ts')).toBe(false);
    expect(layered('adapters/knex.ts', 'src/cli/program.ts')).toBe(true);
    expect(adapterOf('adapters/knex/tables.ts')).toBe('knex');
    expect(adapterOf('adapters/node-pg-migrate.ts')).toBe('node-pg-migrate');
  });

  test('circles are found, one line each', () => {
    const graph: Graph = new Map([
      ['a', ['b']],
      ['b', ['c', 'x']],
      ['c', ['a']],
      ['d', ['d']],
      ['e', ['a']],
      ['x', []],
    ]);
    expect(cycles(graph)).toEqual(['a -> b -> c -> a', 'd -> d']);
    expect(
      cycles(
        new Map([
          ['a', ['b']],
          ['b', []],
        ]),
      ),
    ).toEqual([]);
  });
});

describe('the import graph of src/ and adapters/', () => {
  test('is read: every file, every relative import resolved', () => {
    expect(unresolved, 'relative imports that name no file').toEqual([]);
    // The reader sees the files and edges it is meant to judge.
    expect(graph.get('src/lock/lock.ts')).toContain('src/lock/acquire.ts');
    expect(graph.get('adapters/knex.ts')).toContain('adapters/kit.ts');
    expect(graph.get('src/fleet/index.ts')).toContain('src/fleet/run.ts');
    expect([...graph.keys()].map(layerOf)).toEqual(
      expect.arrayContaining(['cli', 'adapters', 'fleet', 'lock', 'driver']),
    );
    expect([...graph.keys()].filter(inDriver)).toContain('src/driver/types.ts');
  });

  test('has no import circles', () => {
    expect(cycles(graph), 'import circles (a -> b: a imports b)').toEqual([]);
  });

  test('src/driver/types.ts imports nothing of ours', () => {
    expect(
      offending(
        graph,
        (file) => file === 'src/driver/types.ts',
        () => false,
      ),
      'imports of the seam',
    ).toEqual([]);
  });

  test('src/driver/ imports nothing of ours outside src/driver/', () => {
    expect(offending(graph, inDriver, inDriver), 'imports from src/driver/ reaching out').toEqual([]);
  });

  test('no layer imports one above it (cli → adapters → fleet → lock → sql → driver)', () => {
    expect(
      offending(graph, () => true, layered),
      'imports reaching up a layer',
    ).toEqual([]);
  });

  test('nothing of ours imports the package entry (src/index.ts)', () => {
    expect(
      offending(
        graph,
        () => true,
        (target) => target !== 'src/index.ts',
      ),
      'imports of src/index.ts',
    ).toEqual([]);
  });

  test('adapters import nothing of ours but kit and their own files', () => {
    expect(
      offending(graph, isAdapter, (target, file) => isKit(target) || adapterOf(target) === adapterOf(file)),
      'imports from adapters not through kit',
    ).toEqual([]);
  });

  test("kit never imports an adapter's own files", () => {
    expect(
      offending(graph, isKit, (target) => !isAdapter(target)),
      'imports from kit into an adapter',
    ).toEqual([]);
  });

  test('nothing in src/ or adapters/ imports a file of ours elsewhere (test/, bench/)', () => {
    expect(
      offending(
        graph,
        () => true,
        (target) => target.startsWith('src/') || target.startsWith('adapters/'),
      ),
      'imports reaching outside src/ and adapters/',
    ).toEqual([]);
  });
});

describe('where SQL lives', () => {
  // Statements in string or template literals (comments apart): SELECT, WITH … SELECT, DDL and the transaction verbs.
  const SQL =
    /(['"`])\s*(?:\/\*[^*]*\*\/\s*)?(SELECT|WITH|CREATE|ALTER|DROP|SET|RESET|DISCARD|BEGIN|COMMIT|ROLLBACK|LISTEN|UNLISTEN)\b/;
  // The lock's side of src/ (its lifecycle, the fleet, status) speaks SQL only through src/sql/. Below it, the
  // driver speaks LISTEN itself; above it, the CLI's help shows example queries and adapters read their migrator's
  // own tables beside the migrator.
  const lockSide = (file: string) => ['lock', 'fleet'].includes(layerOf(file) ?? '');
  test('no statement in src/lock/, src/fleet/ or the flat files of src/: they are all in src/sql/', () => {
    const outside = [...graph.keys()].filter(lockSide).filter((file) => {
      const code = readFileSync(path.join(ROOT, file), 'utf8')
        .replace(/\/\*[\s\S]*?\*\//g, '')
        .replace(/^\s*\/\/.*$/gm, '');
      return SQL.test(code);
    });
    expect(outside).toEqual([]);
  });
});

describe('the size of a file', () => {
  // A file a reader can hold in mind at once.
  const LIMIT = 300;

  test(`no file in src/ or adapters/ passes ${LIMIT} lines`, () => {
    const longer = [...graph.keys()]
      .map((file) => [file, readFileSync(path.join(ROOT, file), 'utf8').trimEnd().split('\n').length] as const)
      .filter(([, lines]) => lines > LIMIT)
      .map(([file, lines]) => `${file}: ${lines} lines`);
    expect(longer, `files over ${LIMIT} lines`).toEqual([]);
  });
});
