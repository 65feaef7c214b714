import { existsSync, readdirSync } from 'node:fs';
import { isAbsolute, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MigrationLockError } from '../../errors.js';
import { errorMessage } from '../../logger.js';
import { cutStatement, describeFailure, sayFailure } from '../database-error.js';
import { CliError, EXIT, exitCodeOf, isConnectError } from '../errors.js';
import { LoadError } from './loader.js';

/**
 * The one line a failed migration ends with: `knex: migration migrations/001_x.cjs:2 failed: SyntaxError: …`.
 * Lock errors (busy, timeout, lost) and the CLI's own errors pass through unchanged, with their exit codes.
 *
 * @param file the failing migration as the migrator reported it (a name or path), if it did
 * @param statement the failing statement, when the migrator logged it rather than attaching it to the error
 * @param dirs the migrations directories: a stack frame inside one of them names the file (and line) when
 *   the migrator could not, e.g. a syntax error while loading migrations
 */
export function migrationFailure(
  migrator: string,
  err: unknown,
  file: string | undefined,
  dirs: string[],
  statement?: string,
): unknown {
  // The CLI's own errors, the lock's (busy, timeout, lost), connecting, a missing migrator: said as they are.
  if (err instanceof CliError || err instanceof MigrationLockError || isConnectError(err)) return err;
  if (exitCodeOf(err) !== EXIT.failure) return err;
  // A file that did not load (a syntax error, a missing import) is named by the loader.
  if (err instanceof LoadError) file ??= shortPath(err.file);
  const where = frameIn(err, dirs);
  const named = file ? withLine(inDirs(file, dirs), where) : where && shortPath(where.path, where.line);
  const cause = describe(err, statement);
  const message = named
    ? `${migrator}: migration ${named} failed: ${cause}`
    : `${migrator}: migrating failed: ${cause}`;
  const wrapped = new CliError(message);
  wrapped.cause = err;
  return wrapped;
}

/**
 * `SyntaxError: missing )…` for errors in the code; for the database's, its message, SQLSTATE code and the
 * statement, from all of its lines (`division by zero (SQLSTATE 22012) in: SELECT 1/0`).
 */
function describe(err: unknown, statement: string | undefined): string {
  const described = describeFailure(err);
  if (described.code) return sayFailure({ ...described, statement: described.statement ?? cutOrNone(statement) });
  const message = errorMessage(err).split('\n')[0]!.trim();
  // pg's errors are named "error"; SyntaxError, TypeError, ReferenceError… say as much as their message.
  const name = err instanceof Error ? err.name : '';
  return name && name !== 'Error' && name !== 'error' && !message.startsWith(name) ? `${name}: ${message}` : message;
}

/** The first `path:line` in the error's stack (or its causes') that lies inside one of `dirs`. */
function frameIn(err: unknown, dirs: string[]): { path: string; line: number } | undefined {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    for (const match of (e.stack ?? '').matchAll(/(file:\/\/[^\s:()]+|\/[^\s:()]+):(\d+)/g)) {
      const path = match[1]!.startsWith('file://') ? fileURLToPath(match[1]!) : match[1]!;
      if (dirs.some((dir) => isInside(path, dir))) return { path, line: Number(match[2]) };
    }
  }
  return undefined;
}

function isInside(path: string, dir: string): boolean {
  const rel = relative(dir, path);
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel);
}

/** A bare file name as a path (relative to the working directory) when it is in one of `dirs`. */
function inDirs(file: string, dirs: string[]): string {
  if (file.includes(sep)) return file;
  const path = dirs.map((dir) => join(dir, file)).find((candidate) => existsSync(candidate));
  return path ? shortPath(path) : file;
}

/** The migrator's own name for the file, with the line when a stack frame gives it for that file. */
function withLine(file: string, where: { path: string; line: number } | undefined): string {
  const base = file.split(/[\\/]/).pop()!;
  if (where && (where.path.endsWith(`${sep}${base}`) || where.path.split(sep).pop()!.startsWith(base))) {
    return shortPath(where.path, where.line);
  }
  return file;
}

function shortPath(path: string, line?: number): string {
  const rel = relative(process.cwd(), path);
  const shown = rel && !rel.startsWith('..') ? rel : path;
  return line ? `${shown}:${line}` : shown;
}

/** The file of migration `name` in `dir` (node-pg-migrate names migrations by file name without extension). */
export function migrationFile(dir: string, name: string): string {
  try {
    const file = readdirSync(dir).find((entry) => entry === name || entry.replace(/\.[^.]+$/, '') === name);
    return file ? shortPath(`${dir}${sep}${file}`) : name;
  } catch {
    return name;
  }
}

const cutOrNone = (statement: string | undefined) => (statement ? cutStatement(statement) : undefined);
