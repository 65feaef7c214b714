import { statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { UsageError } from '../errors.js';

/**
 * Imports a migrator package the way the user's own code would: resolved from their project (`fromDir`),
 * falling back to wherever pg-migration-lock itself is installed. A missing package is a setup error.
 */
export async function importFromProject<T>(specifier: string, fromDir: string): Promise<T> {
  let resolved: string | undefined;
  try {
    resolved = createRequire(join(fromDir, 'noop.js')).resolve(specifier);
  } catch {
    // not in the project: try our own resolution below
  }
  try {
    return (await import(resolved ? pathToFileURL(resolved).href : specifier)) as T;
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code !== 'ERR_MODULE_NOT_FOUND' && code !== 'MODULE_NOT_FOUND') throw err;
    const name = specifier.startsWith('@') ? specifier.split('/').slice(0, 2).join('/') : specifier.split('/')[0]!;
    throw new UsageError(`${name} is not installed in ${fromDir}`, `Install it in your project: npm install ${name}`);
  }
}

/** The absolute path of a directory that must exist (a migrations folder): a usage error otherwise. */
export function existingDir(dir: string, what: string, flag: string): string {
  const path = resolve(dir);
  let isDir = false;
  try {
    isDir = statSync(path).isDirectory();
  } catch {
    // missing: reported below
  }
  if (!isDir) throw new UsageError(`${what} not found: ${path}`, `Pass the right one with ${flag}.`);
  return path;
}
