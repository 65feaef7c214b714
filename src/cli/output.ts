import { parse } from 'pg-connection-string';
import pc from 'picocolors';

type Colors = ReturnType<typeof pc.createColors>;

/** Color only where it renders: a terminal (or CI logs, as picocolors does), never with NO_COLOR or TERM=dumb. */
function colorsFor(stream: NodeJS.WriteStream): Colors {
  const { env } = process;
  const enabled =
    !env.NO_COLOR && (Boolean(env.FORCE_COLOR) || Boolean(env.CI) || (stream.isTTY === true && env.TERM !== 'dumb'));
  return pc.createColors(enabled);
}

/**
 * Passwords in URLs (`scheme://user:secret@`, up to the token's last `@`: pg reads a raw `@` in a password
 * as part of it), in `password=…` / `password: '…'` settings (query strings, libpq key=value strings,
 * config objects), and in SQL (`ALTER ROLE … PASSWORD '…'`, which a holder's current query may well be).
 * `secrets` (passwords known to this run) are erased wherever they appear.
 */
export function redact(text: string, secrets: Iterable<string> = []): string {
  let out = text
    .replace(/(\b[a-z][a-z0-9+.-]*:\/\/[^:\s/@'"]*:)[^\s'"]*@/gi, '$1***@')
    .replace(/(\bPASSWORD\s+)'(?:[^']|'')*'/gi, "$1'***'")
    .replace(/(password["']?\s*[=:]\s*)(["'])(?:(?!\2).)*\2/gi, '$1$2***$2')
    .replace(/(password\s*=\s*)(?!\*\*\*)[^\s&"',}]+/gi, '$1***');
  for (const secret of secrets) {
    if (!secret) continue;
    // Not inside a longer word, and not a URL's scheme or the user name before an already masked password:
    // with the (weak) password "postgres", `postgres://postgres:***@db` stays readable.
    const escaped = secret.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    out = out.replace(new RegExp(`(?<![A-Za-z0-9])${escaped}(?![A-Za-z0-9])(?!:\\/\\/|:\\*\\*\\*@)`, 'g'), '***');
  }
  return out;
}

/**
 * The passwords pg would send for a connection string, found by pg's own parser (pg-connection-string): the
 * URL's password however it is written (a raw `@`, `:` or `/` in it, percent-encoded), or `?password=`.
 * Never throws: input pg cannot parse yields nothing here (the patterns of {@link redact} still apply).
 */
export function connectionStringSecrets(url: string): string[] {
  try {
    // Without the TLS parameters: pg's parser would read certificate files from disk, and warn about sslmode.
    const config = parse(url.replace(/([?&])(sslcert|sslkey|sslrootcert|sslmode)=[^&#]*/gi, '$1_='));
    return typeof config.password === 'string' && config.password ? [config.password] : [];
  } catch {
    return [];
  }
}

export type LogFormat = 'text' | 'json';
export type LogLevel = 'info' | 'warn' | 'error';
/** The fields of a JSON line besides `time`, `level`, `msg` and `key`: `event`, and the event's own. */
export interface LogFields {
  event?: string;
  [field: string]: unknown;
}

/** The event of a line whose caller named none, by what it says (library messages, lines shared with text). */
const EVENTS: [RegExp, string][] = [
  [/^Waiting for migration lock /, 'lock.waiting'],
  [/^Acquired migration lock /, 'lock.acquired'],
  [/^Released migration lock /, 'lock.released'],
  [/^Lost the session holding migration lock /, 'lock.lost'],
  [/^Database: /, 'database'],
];
const eventOf = (message: string) => EVENTS.find(([pattern]) => pattern.test(message))?.[1];

/**
 * Everything the CLI prints goes through here: results on stdout, diagnostics on stderr (so
 * `status --json | jq` stays clean), colors per stream, `--quiet`, and a live line on a terminal.
 */
export class Output {
  out: Colors = colorsFor(process.stdout);
  err: Colors = colorsFor(process.stderr);
  /** --quiet: only errors, and the results that were asked for. */
  quiet = false;
  /** --log-format: `json` makes every stderr line one JSON object (see {@link setFormat}). */
  format: LogFormat = 'text';
  /** The lock this run acts on, once chosen: the `key` of every JSON line. */
  key?: bigint;
  /** The database this run talks to, password redacted: named in connection errors. */
  target?: string;
  /** Where {@link target} came from: `--database-url`, `DATABASE_URL`, a knexfile. */
  targetSource?: string;
  /** The flag that picks this run's lock in a hint (` --key 7241865325823964`), empty for the default key. */
  keyFlag = '';
  private liveText = '';
  /** Passwords known to this run: erased from error messages, which may come from third-party code. */
  private readonly secrets = new Set<string>();

  /** Whether a line can be redrawn in place: stderr is a terminal, not --quiet, not JSON. */
  get live(): boolean {
    return process.stderr.isTTY === true && !this.quiet && process.env.TERM !== 'dumb' && this.format === 'text';
  }

  /** `--log-format json`: each stderr line one JSON object, and no colors anywhere (nor a live line). */
  setFormat(format: LogFormat): void {
    this.format = format;
    if (format === 'json') this.out = this.err = pc.createColors(false);
  }

  addSecret(secret: string | undefined | null): void {
    if (!secret) return;
    this.secrets.add(secret);
    this.secrets.add(encodeURIComponent(secret));
    try {
      this.secrets.add(decodeURIComponent(secret));
    } catch {
      // not percent-encoded: the raw form is enough
    }
  }

  /** Registers the password pg would send for this connection string (see {@link connectionStringSecrets}). */
  addConnectionString(url: string): void {
    for (const secret of connectionStringSecrets(url)) this.addSecret(secret);
  }

  /** Redacts URLs and every known password: for text that did not come from this CLI. */
  scrub(text: string): string {
    return redact(text, this.secrets);
  }

  /** What was explicitly asked for (status), on stdout: printed even with --quiet. */
  data(text: string): void {
    this.write(process.stdout, `${this.scrub(text)}\n`);
  }

  /** A value as JSON on stdout (bigint as a string), every string in it redacted before it is serialised. */
  json(value: unknown): void {
    const text = JSON.stringify(
      value,
      (_name, v) => (typeof v === 'bigint' ? v.toString() : typeof v === 'string' ? this.scrub(v) : v),
      2,
    );
    this.write(process.stdout, `${text}\n`);
  }

  /** The outcome of a command (what was applied), on stdout. */
  result(text: string): void {
    if (!this.quiet) this.write(process.stdout, `${this.scrub(text)}\n`);
  }

  info(message: string, fields?: LogFields): void {
    if (this.quiet) return;
    if (this.format === 'json') this.log('info', message, 'info', fields);
    else this.write(process.stderr, `${this.err.dim('[pg-migration-lock]')} ${this.scrub(message)}\n`);
  }

  success(message: string, fields?: LogFields): void {
    if (this.quiet) return;
    if (this.format === 'json') this.log('info', message, 'success', fields);
    else this.write(process.stderr, `${this.err.green('✔')} ${this.scrub(message)}\n`);
  }

  /** Context for an error (e.g. the failing SQL), as-is on stderr, even with --quiet. */
  detail(text: string, fields?: LogFields): void {
    if (this.format === 'json') this.log('info', text, 'detail', fields);
    else this.write(process.stderr, `${this.scrub(text)}\n`);
  }

  warn(message: string, fields?: LogFields): void {
    if (this.format === 'json') this.log('warn', message, 'warning', fields);
    else this.write(process.stderr, `${this.err.yellow('warning:')} ${this.scrub(message)}\n`);
  }

  error(message: string, hint?: string, fields?: LogFields): void {
    if (this.format === 'json') {
      this.log('error', message, 'error', { ...(hint && { hint }), ...fields });
      return;
    }
    let text = `${this.err.red(this.err.bold('error:'))} ${this.scrub(message)}\n`;
    if (hint) text += `${this.err.dim(this.scrub(hint))}\n`;
    this.write(process.stderr, text);
  }

  /**
   * An event for log pipelines: with `--log-format json` one line on stderr, in text nothing (the text output
   * says it another way, e.g. on stdout). Not with --quiet, unless it is an error.
   */
  event(level: LogLevel, event: string, message: string, fields?: Omit<LogFields, 'event'>): void {
    if (this.format !== 'json' || (this.quiet && level !== 'error')) return;
    this.log(level, message, event, { ...fields, event });
  }

  /**
   * One JSON line: `time`, `level`, `msg`, `event` (the caller's, else read from the message, else `fallback`),
   * `key` (a string; null before the command chose it), then the event's fields. Every string is redacted.
   */
  private log(level: LogLevel, message: string, fallback: string, fields: LogFields = {}): void {
    const { event = eventOf(message) ?? fallback, ...rest } = fields;
    const head = { time: new Date().toISOString(), level, msg: message, event, key: this.key ?? null };
    // The head first, and not overridden by a field.
    const text = JSON.stringify({ ...head, ...rest, ...head }, (_name, v) =>
      typeof v === 'bigint' ? v.toString() : typeof v === 'string' ? this.scrub(v) : v,
    );
    process.stderr.write(`${text}\n`);
  }

  /** Shows (or replaces) the live status line; a no-op when stderr is not a terminal. */
  status(text: string): void {
    if (!this.live) return;
    const width = process.stderr.columns || 80;
    // One physical line: a wrapped line could not be redrawn in place.
    const line = this.scrub(text);
    this.liveText = line.length >= width ? `${line.slice(0, width - 2)}…` : line;
    process.stderr.write(`\r\x1b[2K${this.liveText}`);
  }

  clearStatus(): void {
    if (!this.liveText) return;
    this.liveText = '';
    process.stderr.write('\r\x1b[2K');
  }

  /** Writes a full line, keeping the live line below it. */
  private write(stream: NodeJS.WriteStream, text: string): void {
    if (!this.liveText) {
      stream.write(text);
      return;
    }
    const live = this.liveText;
    this.clearStatus();
    stream.write(text);
    this.status(live);
  }
}
