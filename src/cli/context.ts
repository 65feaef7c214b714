import { type Command, InvalidArgumentError, Option } from 'commander';
import type pg from 'pg';
import { conninfoToUrl, isConninfo, parseConninfo } from '../driver/conninfo.js';
import { DEFAULT_LOCK_KEY, defaultKeyOf, lockKey, parseKey } from '../key.js';
import { UsageError } from './errors.js';
import type { LogFormat, Output } from './output.js';

/** Options every command accepts (before or after the command name). */
export interface GlobalOptions {
  databaseUrl?: string;
  key?: bigint;
  name?: string;
  quiet?: boolean;
  logFormat?: LogFormat;
}

/** What a command needs, resolved from its flags and the environment. */
export interface Context {
  out: Output;
  key: bigint;
  /** How messages name the lock: `42`, `"billing" (key 123…)`, `7241865325823964 (node-pg-migrate's own key)`. */
  keyLabel: string;
  /** The flag that picks this key in another command (`--key 7241865325823964`, `--name billing`; none for the default). */
  keyFlag: string;
}

/** The global options on `command`; `out` takes --log-format as soon as it is parsed (errors after it are JSON). */
export function addGlobalOptions(command: Command, out?: Output): Command {
  if (out) command.on('option:log-format', (format: LogFormat) => out.setFormat(format));
  return command
    .optionsGroup('Global options:')
    .option('--database-url <url>', 'PostgreSQL connection string (default: $DATABASE_URL)')
    .addOption(
      new Option('--key <n>', 'lock key, a signed 64-bit integer (default: lockKey("pg-migration-lock"))').argParser(
        parseKeyArg,
      ),
    )
    .option('--name <name>', 'use lockKey(name) as the key, e.g. one lock per service')
    .option('-q, --quiet', 'print only errors (and what status prints)')
    .addOption(
      new Option(
        '--log-format <format>',
        'stderr as text, or as one JSON object a line (time, level, msg, event, key) (default: text)',
      ).choices(['text', 'json']),
    );
}

function parseKeyArg(value: string): bigint {
  try {
    return parseKey(value.trim());
  } catch {
    throw new InvalidArgumentError(
      'Expected an integer between -9223372036854775808 and 9223372036854775807 (or use --name NAME).',
    );
  }
}

/** `1500ms`, `30s`, `5m`, `1h`, `1.5s` → milliseconds. A bare number is refused: its unit would be a guess. */
export function parseDurationArg(value: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(value.trim());
  if (!match) throw new InvalidArgumentError('Expected a duration like 1500ms, 30s, 5m or 1h.');
  return Math.round(Number(match[1]) * UNITS[match[2]!]!);
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * The lock and output settings of a command. Without --key or --name, the key is `tool`'s own from the key
 * table (node-pg-migrate's and kysely's own keys, so the CLI, the adapter and the plain migrator exclude each
 * other), else DEFAULT_LOCK_KEY.
 */
export function createContext(command: Command, out: Output, tool?: string): Context {
  const opts = command.optsWithGlobals<GlobalOptions>();
  out.quiet = Boolean(opts.quiet);
  if (opts.logFormat) out.setFormat(opts.logFormat);
  const ctx = chooseKey(opts, tool);
  out.key = ctx.key;
  // Hints in error messages name the same lock.
  out.keyFlag = ctx.keyFlag;
  return { out, ...ctx };
}

function chooseKey(opts: GlobalOptions, tool: string | undefined): Omit<Context, 'out'> {
  if (opts.key !== undefined && opts.name !== undefined) {
    throw new UsageError('--key and --name both choose the lock: give one of them');
  }
  if (opts.key !== undefined) return { key: opts.key, keyLabel: String(opts.key), keyFlag: ` --key ${opts.key}` };
  if (opts.name !== undefined) {
    if (opts.name === '') throw new UsageError('--name must not be empty');
    const key = lockKey(opts.name);
    return { key, keyLabel: `"${opts.name}" (key ${key})`, keyFlag: ` --name ${shellWord(opts.name)}` };
  }
  const known = defaultKeyOf(tool ?? 'run');
  const keyFlag = known.key === DEFAULT_LOCK_KEY ? '' : ` --key ${known.key}`;
  return { key: known.key, keyLabel: `${known.key} (${known.label})`, keyFlag };
}

/** `text` as one shell word. */
const shellWord = (text: string) => (/^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, "'\\''")}'`);

/**
 * The connection string from --database-url or DATABASE_URL, checked before any network access.
 * Its password (as pg's own parser reads it) is registered with the output first, so no message can echo it.
 */
export function databaseUrl(command: Command, out: Output, required: true): string;
export function databaseUrl(command: Command, out: Output, required: false): string | undefined;
export function databaseUrl(command: Command, out: Output, required: boolean): string | undefined {
  const flag = command.optsWithGlobals<GlobalOptions>().databaseUrl;
  let url = flag ?? (process.env.DATABASE_URL || undefined);
  if (url === undefined) {
    if (!required) return undefined;
    throw new UsageError(
      'No database URL: pass --database-url or set DATABASE_URL',
      // No `user:password@` here: the output masks any password, so the example would read `user:***@`.
      'Example: DATABASE_URL=postgres://user@host:5432/db pg-migration-lock status (the password in PGPASSWORD, or in the URL after the user and a colon)',
    );
  }
  const source = flag === undefined ? 'DATABASE_URL' : '--database-url';
  url = asUrlOrUsage(out, url, `from ${source}`);
  const parsed = parseConnectionString(out, url);
  if (!parsed) {
    throw new UsageError(
      `Invalid database URL ${shownUrl(out, url)} (from ${source})`,
      // Not written as a URL with a password: this hint is masked like every other line.
      'Expected postgres://user@host:5432/database with the password after the user (user:password@), percent-encoding special characters in it.',
    );
  }
  if (!['postgres:', 'postgresql:', 'socket:'].includes(parsed.protocol)) {
    throw new UsageError(
      `Invalid database URL ${shownUrl(out, url)} (from ${source}): expected a postgres:// or postgresql:// URL`,
    );
  }
  out.target = out.scrub(url);
  out.targetSource = source;
  return url;
}

/**
 * A connection string as a URL: libpq's keyword/value form (host=db dbname=app user=app), as psql takes it, is
 * turned into its URL (its password registered first, so no message can echo it); a URL stays as it is.
 */
export function asUrlOrUsage(out: Output, text: string, where: string): string {
  if (!isConninfo(text)) return text;
  try {
    out.addSecret(parseConninfo(text).get('password'));
    return conninfoToUrl(text);
  } catch (err) {
    throw new UsageError(`Invalid connection string (${where}): ${(err as Error).message}`);
  }
}

/**
 * Registers every password a connection string carries (as pg reads it, the URL's own, a `password`
 * parameter) with the output, so no message can echo it; then the URL, or undefined when it does not parse.
 */
export function parseConnectionString(out: Output, url: string): URL | undefined {
  out.addConnectionString(url);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined;
  }
  out.addSecret(parsed.password);
  out.addSecret(parsed.searchParams.get('password'));
  return parsed;
}

/** A URL for an error message, redacted; not shown at all when an `@` is left that might end a password. */
function shownUrl(out: Output, url: string): string {
  const shown = out.scrub(url);
  return /@/.test(shown.replace(/:\*\*\*@/g, '')) ? '(not shown: it may contain a password)' : shown;
}

/**
 * "Database: postgres://app:***@db:5432/app (from DATABASE_URL)": which database a command acts on, once per
 * run (a migrator's set-up and the command may both call it), on stderr, not with --quiet.
 */
export function announceTarget(out: Output): void {
  if (!out.target || announced.has(out)) return;
  announced.add(out);
  out.info(`Database: ${out.target} (from ${out.targetSource ?? 'the configuration'})`);
}

const announced = new WeakSet<Output>();

/** A pg config for connections we open: a bounded connect time, so an unreachable server fails instead of hanging. */
export function clientConfig(url: string): pg.ClientConfig {
  return { connectionString: url, connectionTimeoutMillis: 30_000 };
}
