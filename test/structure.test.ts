// The shape of the code, read from its import graph (src/ and adapters/): no circles, and no layer reaching
// up. Every relative import counts: static `import … from`, `export … from`, `import type`, dynamic
// `import('…')` and `typeof import('…')` types.
//
//   src/driver/types.ts   the seam: imports nothing of ours
//   src/driver/*          imports only src/driver
//   src/*.ts (the core)   never imports src/cli/ or adapters/
//   adapters/*.ts         import only ./kit.js (kit.ts is the adapters' one door to the core)
//   src/cli/              may import the core and the adapters
//   and nothing there imports test/ or bench/
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
const isCore = (file: string) => /^src\/[^/]+\.ts$/.test(file);
const inDriver = (file: string) => file.startsWith('src/driver/');
const isAdapter = (file: string) => /^adapters\/[^/]+\.ts$/.test(file) && file !== 'adapters/kit.ts';

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
    expect(graph.get('src/lock.ts')).toContain('src/acquire.ts');
    expect(graph.get('adapters/knex.ts')).toContain('adapters/kit.ts');
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

  test('the core (src/*.ts) never imports src/cli/ or adapters/', () => {
    expect(
      offending(graph, isCore, (target) => !target.startsWith('src/cli/') && !target.startsWith('adapters/')),
      'imports from the core reaching up',
    ).toEqual([]);
  });

  test('adapters import nothing of ours but ./kit.js', () => {
    expect(
      offending(graph, isAdapter, (target) => target === 'adapters/kit.ts'),
      'imports from adapters not through kit.ts',
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
