// TypeScript configs and migrations on any supported Node, through the loader the project already has, the way
// each migrator's own CLI does it (kysely-ctl: jiti; knex: rechoir's require hooks; TypeORM: ts-node): jiti, tsx
// or ts-node, resolved from the project's directory, never one of ours. Node >= 22.18 strips types itself.
import { readdirSync } from 'node:fs';
import { createRequire, register } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { pathToFileURL } from 'node:url';
import { errorMessage } from '../../logger.js';
import { CliError, UsageError } from '../errors.js';

/** A TypeScript source file (not a declaration file). */
export const isTypeScript = (file: string): boolean => /\.[cm]?ts$/.test(file) && !/\.d\.[cm]?ts$/.test(file);

/** The loaders a project may have, in the order they are looked for. */
export const LOADERS = ['jiti', 'tsx', 'ts-node'] as const;
export type LoaderName = (typeof LOADERS)[number] | 'node';

/** A file that failed to load (a syntax error, a missing import): the migration failure names `file`. */
export class LoadError extends Error {
  constructor(
    readonly file: string,
    cause: unknown,
  ) {
    super(firstLines(errorMessage(cause)), { cause });
    this.name = cause instanceof Error ? cause.name : 'Error';
  }
}

/** The first line of a message, and the next ones while a line announces them (ts-node's "Unable to compile TypeScript:"). */
function firstLines(message: string): string {
  const lines = message
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean);
  let end = 1;
  while (end < Math.min(lines.length, 4) && lines[end - 1]!.endsWith(':')) end++;
  return lines.slice(0, end).join(' ');
}

let active: LoaderName | undefined;

/** Which loader `enableTypeScript` set up in this process, if any. */
export const typeScriptLoader = (): LoaderName | undefined => active;

const resolveFrom = (dir: string, specifier: string): string | undefined => {
  try {
    return createRequire(join(dir, 'noop.js')).resolve(specifier);
  } catch {
    return undefined;
  }
};

/**
 * The ESM hook for what the migrators `import()` (knex and TypeORM in an ES module package): a `.ts`, `.mts` or
 * `.cts` file becomes a module that `require`s it (through the project's loader, hooked in above) and exports
 * its default and the names its source exports, as Node's own import of it would.
 */
const ESM_HOOK = `import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
export async function load(url, context, next) {
  if (!url.startsWith('file:') || !/\\.[cm]?ts$/.test(url) || /\\.d\\.[cm]?ts$/.test(url)) return next(url, context);
  const file = fileURLToPath(url);
  const source = readFileSync(file, 'utf8');
  const names = new Set();
  for (const m of source.matchAll(/^\\s*export\\s+(?:declare\\s+)?(?:async\\s+)?(?:function\\*?|const|let|var|class|enum)\\s+([A-Za-z_$][\\w$]*)/gm)) names.add(m[1]);
  for (const m of source.matchAll(/^\\s*export\\s*\\{([^}]*)\\}/gm)) {
    for (const part of m[1].split(',')) {
      const name = part.trim().split(/\\s+as\\s+/).pop();
      if (name && !/^type\\s/.test(part.trim()) && /^[A-Za-z_$][\\w$]*$/.test(name)) names.add(name);
    }
  }
  for (const reserved of ['default', 'enum', 'type', '__pgml']) names.delete(reserved);
  const lines = [
    "import { createRequire } from 'node:module';",
    'const __pgml = createRequire(' + JSON.stringify(url) + ')(' + JSON.stringify(file) + ');',
    'export default __pgml && __pgml.__esModule ? __pgml.default : __pgml;',
  ];
  for (const name of names) lines.push('export const ' + name + ' = __pgml[' + JSON.stringify(name) + '];');
  return { format: 'module', source: lines.join('\\n'), shortCircuit: true };
}`;

/**
 * Makes this process load TypeScript (`require` and `import()`, ours and the migrators'), with the first of
 * jiti, tsx and ts-node that resolves from `fromDir` (the project): once per process. `file` is the first
 * TypeScript file that needs it, for the message when none is installed.
 */
export function enableTypeScript(fromDir: string, file: string): LoaderName {
  if (active) return active;
  const nativeStripping = Boolean((process.features as { typescript?: unknown }).typescript);
  for (const name of LOADERS) {
    const path = resolveFrom(fromDir, name);
    if (!path) continue;
    const load = createRequire(path);
    const extensions = createRequire(import.meta.url).extensions;
    if (name === 'jiti') {
      const { createJiti } = load(path) as {
        createJiti: (from: string, options?: object) => (id: string) => unknown;
      };
      const jiti = createJiti(pathToFileURL(join(fromDir, 'noop.js')).href, { interopDefault: false });
      for (const ext of ['.ts', '.mts', '.cts']) {
        extensions[ext] = (module, filename) => {
          module.exports = loadNaming(filename, () => jiti(filename));
        };
      }
    } else if (name === 'tsx') {
      const api = resolveFrom(fromDir, 'tsx/cjs/api');
      if (!api) continue;
      (load(api) as { register: () => unknown }).register();
    } else {
      (load(path) as { register: (options: object) => unknown }).register({ transpileOnly: true });
    }
    // The migrators `import()` some files (kysely; knex and TypeORM in an ES module package): to the hooks above.
    register(`data:text/javascript,${encodeURIComponent(ESM_HOOK)}`);
    active = name;
    return name;
  }
  if (nativeStripping) {
    active = 'node';
    return active;
  }
  throw new UsageError(
    `${relativeName(file)} is TypeScript: Node ${process.versions.node} cannot load it, and no TypeScript loader (jiti, tsx or ts-node) is installed in ${fromDir}`,
    'Install one in your project: npm install -D jiti (or tsx), or compile it to .js',
  );
}

/** A TypeScript migration of a folder, if it has any (then the loader is set up before the migrator lists them). */
export function typeScriptIn(dir: string): string | undefined {
  try {
    const name = readdirSync(dir).sort().find(isTypeScript);
    return name === undefined ? undefined : join(dir, name);
  } catch {
    return undefined;
  }
}

/**
 * A config or migration file's exports (a namespace: `default` and the named ones), TypeScript through the
 * project's loader. A file that fails to load throws LoadError, naming it.
 */
export async function importFile(file: string, fromDir = dirname(file)): Promise<Record<string, unknown>> {
  if (isTypeScript(file) && enableTypeScript(fromDir, file) !== 'node') {
    const exports = loadNaming(file, () => createRequire(file)(file)) as Record<string, unknown> | null;
    if (exports && typeof exports === 'object' && ('default' in exports || exports.__esModule)) return exports;
    return { default: exports };
  }
  try {
    return (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (err) {
    throw err instanceof LoadError ? err : new LoadError(file, err);
  }
}

/** Runs a load, and names the file when it fails. */
function loadNaming<T>(file: string, load: () => T): T {
  try {
    return load();
  } catch (err) {
    throw err instanceof LoadError || err instanceof CliError ? err : new LoadError(file, err);
  }
}

/** A config file that failed to load: a CLI error naming it. */
export function configLoadFailure(what: string, err: unknown): unknown {
  if (!(err instanceof LoadError)) return err;
  const cause = err.cause as { code?: string } | undefined;
  if (cause?.code === 'ERR_MODULE_NOT_FOUND' || cause?.code === 'MODULE_NOT_FOUND') return err.cause;
  return new CliError(`Cannot load the ${what} ${relativeName(err.file)}: ${err.name}: ${err.message}`);
}

const relativeName = (file: string) => {
  const rel = relative(process.cwd(), file);
  return rel && !rel.startsWith('..') ? rel : file;
};
